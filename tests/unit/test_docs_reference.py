"""The docs a newcomer reads cannot drift: the generated references equal what the code generates now, they name
every field pydantic's own JSON Schema names, every relative link in README.md and docs/ resolves (file and
heading), and the README's two commands for a fresh machine are targets of the Makefile."""

from __future__ import annotations

import difflib
import re
from pathlib import Path

import pytest

from tunelab.cli.reference import REGENERATE, references

ROOT = Path(__file__).resolve().parents[2]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]


@pytest.fixture(scope="module")
def generated() -> dict[str, str]:
    return references()


def test_committed_references_are_what_the_code_generates(generated):
    for name, text in generated.items():
        committed = (ROOT / "docs" / name).read_text()
        diff = "".join(list(difflib.unified_diff(committed.splitlines(True), text.splitlines(True),
                                                 f"docs/{name} (committed)", f"docs/{name} (from the code)"))[:40])
        assert committed == text, f"docs/{name} is out of date: run `{REGENERATE}` and commit it\n{diff}"


def test_spec_reference_names_every_field_of_the_json_schema(generated):
    """pydantic's JSON Schema (what `tunelab schema` prints) is the independent list of sections and fields."""
    from tunelab.spec import json_schema

    schema = json_schema()
    sections = {"ExperimentSpec": schema, **{k: d for k, d in schema["$defs"].items() if "properties" in d}}
    text = generated["spec-reference.md"]
    for title, definition in sections.items():
        body = text.split(f"\n## {title}\n", 1)[1].split("\n## ", 1)[0]
        rows = set(re.findall(r"^\| `(\w+)` \|", body, flags=re.MULTILINE))
        assert rows == set(definition["properties"]), title


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
    return {_slug(h) for h in re.findall(r"^#+ (.+)$", text, flags=re.MULTILINE)}


def test_every_relative_link_resolves():
    checked = 0
    for page in PAGES:
        text = re.sub(r"```.*?```", "", page.read_text(), flags=re.DOTALL)
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+:", target):
                continue
            path, _, anchor = target.partition("#")
            dest = (page.parent / path).resolve() if path else page
            assert dest.exists(), f"{page.relative_to(ROOT)}: link to {target}: no such file"
            if anchor:
                assert anchor in _anchors(dest), f"{page.relative_to(ROOT)}: link to {target}: no such heading"
            checked += 1
    assert checked > 50


def test_readme_quick_start_commands_are_makefile_targets():
    readme = (ROOT / "README.md").read_text()
    quick = readme.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", quick, flags=re.DOTALL)
    assert block is not None
    commands = [line.split("#")[0].strip() for line in block.group(1).splitlines() if line.strip()]
    assert commands == ["make demo", "make test"]
    targets = set(re.findall(r"^([\w-]+):", (ROOT / "Makefile").read_text(), flags=re.MULTILINE))
    assert {"demo", "test"} <= targets
    for heading in ("## Assistants", "## Benchmarks", "### Measured on a GPU"):
        assert f"\n{heading}\n" in readme  # kept in README: issue 30 and the GPU kit point here
    assert '"mcpServers"' in readme.split("## Assistants", 1)[1].split("\n## ", 1)[0]


def test_readme_tour_commands_parse():
    """Each line of the README's tour names a real command with options it accepts (parsed as the CLI parses
    them, not run; the tour was run end to end by hand)."""
    import shlex

    import typer

    from tunelab.cli import app

    tour = (ROOT / "README.md").read_text().split("## A ten-line tour", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```bash\n(.*?)```", tour, flags=re.DOTALL)
    assert block is not None
    lines = [shlex.split(line.split("  #")[0]) for line in block.group(1).splitlines() if line.strip()]
    assert len(lines) == 10 and all(words[0] == "tunelab" for words in lines)
    assert [words[1] for words in lines[2:]] == ["init", "plan", "scaffold", "run", "status", "eval", "results",
                                                 "report"]
    root = typer.main.get_command(app)
    for words in lines:
        command, ctx, args = root, root.context_class(root, info_name="tunelab"), words[1:]
        while hasattr(command, "list_commands"):
            name, args = args[0], args[1:]
            command = command.get_command(ctx, name)
            assert command is not None, words
            ctx = command.context_class(command, info_name=name, parent=ctx)
        command.make_context(name, list(args), parent=ctx.parent)  # a wrong option or argument raises
