"""`tunelab --help` is a map of the pipeline: every command in a named panel, the panels in the order of the
work, each command one sentence on one line (the detail stays in the command's own --help)."""

from __future__ import annotations

import re

import pytest
import typer
import typer.rich_utils
from typer.testing import CliRunner

from tunelab.cli import app

runner = CliRunner()
WIDTH = 100  # a common terminal: every summary must fit one row at this width

# Written out here, not read from tunelab.cli.common: the order a newcomer meets the work in.
PIPELINE_PANELS = ["Start", "Plan", "Run", "Results", "History", "Data and models", "Assistants"]
TOUR = ["init", "plan", "scaffold", "run", "eval", "results", "report"]


@pytest.fixture(autouse=True)
def _fixed_width(monkeypatch):
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", WIDTH)


def _help(*args: str) -> str:
    res = runner.invoke(app, [*args, "--help"])
    assert res.exit_code == 0, res.output
    return res.output


def _panels(output: str) -> dict[str, list[list[str]]]:
    """Panel title → its entries, each entry the text lines it takes (first line: name and summary; more lines:
    the summary wrapped)."""
    panels: dict[str, list[list[str]]] = {}
    rows: list[list[str]] | None = None
    for line in output.splitlines():
        if title := re.match(r"^╭─ (.+?) ─", line):
            rows = panels.setdefault(title.group(1), [])
        elif line.startswith("╰"):
            rows = None
        elif rows is not None and line.startswith("│"):
            body = line.strip("│").rstrip()
            if re.match(r"^ \S", body):
                rows.append([body.strip()])
            elif rows:
                rows[-1].append(body.strip())
    return panels


def _commands(panels: dict[str, list[list[str]]], skip=("Options",)) -> list[tuple[str, str, list[str]]]:
    """(panel, command name, the lines of its entry), in the order shown."""
    return [(title, entry[0].split()[0], entry) for title, entries in panels.items() if title not in skip
            for entry in entries]


def _visible(group_args: tuple[str, ...] = ()) -> set[str]:
    group = typer.main.get_command(app)
    for name in group_args:
        group = group.commands[name]
    return {name for name, cmd in group.commands.items() if not cmd.hidden}


def test_every_command_sits_in_a_pipeline_panel_in_order():
    panels = _panels(_help())
    assert [t for t in panels if t != "Options"] == PIPELINE_PANELS  # no catch-all "Commands" panel
    listed = [name for _, name, _ in _commands(panels)]
    assert sorted(listed) == sorted(_visible())  # each command once, none missing
    assert len(listed) >= 24
    assert [c for c in listed if c in TOUR] == TOUR  # the tour reads top to bottom
    where = {name: panel for panel, name, _ in _commands(panels)}
    assert (where["init"], where["plan"], where["run"], where["report"], where["history"], where["models"],
            where["mcp"]) == ("Start", "Plan", "Run", "Results", "History", "Data and models", "Assistants")


@pytest.mark.parametrize("group", [(), ("data",), ("models",), ("skills",)])
def test_each_summary_is_one_sentence_on_one_line(group):
    commands = _commands(_panels(_help(*group)))
    assert {name for _, name, _ in commands} == _visible(group)
    for _, name, lines in commands:
        summary = lines[0].removeprefix(name).strip()
        assert len(lines) == 1, f"{name}: summary wraps at {WIDTH} columns: {' '.join(lines)!r}"
        assert summary.endswith("."), f"{name}: {summary!r}"
        assert not re.search(r"[.!?]\s", summary), f"{name}: more than one sentence: {summary!r}"


def test_the_detail_stays_in_the_commands_own_help():
    squash = lambda text: " ".join(text.replace("│", " ").split())  # noqa: E731
    summaries = {name: lines[0].removeprefix(name).strip() for _, name, lines in _commands(_panels(_help()))}
    for name in ("plan", "probe", "archive", "export", "run"):
        own = squash(_help(name))
        assert summaries[name] in own  # the summary heads it ...
        assert len(own) > len(squash(summaries[name])) + 200  # ... and the detail follows
    assert "Ctrl-C keeps the shapes done" in squash(_help("probe"))
    assert "exporting again adds only what is new" in squash(_help("export"))


def _every_command(cmd=None, path=()):
    cmd = cmd or typer.main.get_command(app)
    for name, sub in getattr(cmd, "commands", {}).items():
        if not sub.hidden:
            yield (*path, name)
            yield from _every_command(sub, (*path, name))


def test_a_commands_help_breaks_lines_only_where_the_terminal_is_full(monkeypatch):
    """The prose of every command's --help is wrapped by the terminal, not by the docstring's source lines
    (which ended printed lines mid-sentence): within a paragraph a line ends only when the next word would
    not fit on it."""
    wide = 200
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", wide)
    checked = 0
    for path in _every_command():
        lines = _help(*path).splitlines()
        start = next(i for i, line in enumerate(lines) if line.strip().startswith("Usage:")) + 1
        end = next((i for i, line in enumerate(lines) if line.startswith("╭")), len(lines))
        prose = [line.strip() for line in lines[start:end]]
        for line, after in zip(prose, prose[1:]):
            if line and after:  # two lines of one paragraph
                assert len(line) + 1 + len(after.split()[0]) > wide - 4, f"{' '.join(path)}: {line!r} / {after!r}"
                checked += 1
    assert len(list(_every_command())) >= 30 and checked >= 1  # some paragraph is long enough to wrap
