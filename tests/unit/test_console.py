"""Nothing tunelab prints loses text to rich markup: every value goes through tunelab.console as plain text
(paths, lists, field values, warnings, errors, reasons), and no call site prints around it."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import pytest
from rich.console import Console
from typer.testing import CliRunner

from tunelab.cli import app
from tunelab.console import data_table, error, markup, say, show, warn, working

SRC = Path(__file__).resolve().parents[2] / "src" / "tunelab"

# What rich would read as markup, or mangle: tags, closing tags, links, colours, a trailing backslash, an
# escaped-looking bracket, emoji codes, str.format braces.
HOSTILE = ["add modules_to_save: [embed_tokens, lm_head]", "[bold]not bold[/bold]", "[/]", "[link=https://x.y]z",
           "[#ff0000]red?", "[@click]x", "C:\\runs\\", "\\[x] stays", ":thumbs_up:", "{field} {0}", "a [x] b"]


def _printed(fn, *args, width: int = 30, **kwargs) -> str:
    """What fn printed on a narrow console (long lines must stay whole all the same)."""
    out = io.StringIO()
    fn(*args, console=Console(file=out, width=width, color_system=None), **kwargs)
    return out.getvalue()


@pytest.mark.parametrize("value", HOSTILE)
def test_say_warn_error_print_values_verbatim(value):
    assert _printed(say, "[yellow]{}[/yellow] then {}", value, value) == f"{value} then {value}\n"
    assert _printed(warn, value) == f"warning: {value}\n"
    assert _printed(error, value) == f"error: {value}\n"


def test_long_work_says_when_it_starts_and_its_seconds_when_it_ends_on_stderr_only(capsys, monkeypatch):
    clock = iter([10.0, 52.4, 0.0])  # the seconds it took, injected: 42.4 printed whole
    monkeypatch.setattr("tunelab.console.time.perf_counter", lambda: next(clock))
    with working("timing {} at {} thread(s)", HOSTILE[0], 2):
        assert capsys.readouterr().err == f"timing {HOSTILE[0]} at 2 thread(s) …\n"
    assert capsys.readouterr() == ("", f"timing {HOSTILE[0]} at 2 thread(s): 42 s\n")
    with pytest.raises(ValueError), working("failing"):  # no end line for work that did not end
        raise ValueError
    assert capsys.readouterr() == ("", "failing …\n")


def test_markup_styles_values_as_its_template_says_and_formats_like_str_format():
    text = markup("[bold]{}[/bold] {:.2f} {!r} {n:,}", "[x]", 3.14159, "[y]", n=12345)
    assert text.plain == f"[x] {3.14159:.2f} {'[y]'!r} {12345:,}"
    bold = [s for s in text.spans if s.style == "bold"]
    assert [(s.start, s.end) for s in bold] == [(0, 3)]  # the value took the style around its field
    # two values that together look like a tag stay apart
    assert markup("{}{}", "a[b", "c]").plain == "a[bc]"
    with pytest.raises(ValueError, match="inside a markup tag"):
        markup("[link={}]x[/link]", "https://x.y")


def test_tables_print_titles_headers_and_cells_verbatim():
    rows = [[v, f"{i}"] for i, v in enumerate(HOSTILE)]
    out = _printed(show, data_table(["col [x]", "n"], rows, title="title [x]"), width=200)
    for text in ["title [x]", "col [x]", *HOSTILE]:
        assert text in out, text


# ---- the guard: printing happens in tunelab/console.py only ---------------------------------------------

BYPASSES = {
    r"\bconsole\.(print|log|rule|out)\(": "print with say/warn/error/show/rule from tunelab.console",
    r"\.add_(row|column)\(": "build tables with tunelab.console.data_table",
    r"rich\.markup|(?<![\w.])escape\(": "no call site escapes (rich's escape): tunelab.console does it",
    r"TextColumn\(|Text\.from_markup\(|render_markup": "progress text through tunelab.console",
    r"typer\.(echo|secho)\(|click\.echo\(": "print with tunelab.console.say",
    r"from rich\.table import": "tables come from tunelab.console.data_table",
}


def test_no_call_site_prints_around_the_console_module():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name == "console.py" and path.parent == SRC:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            for pattern, fix in BYPASSES.items():
                if re.search(pattern, line.split("#")[0]):
                    found.append(f"{path.relative_to(SRC)}:{n}: {line.strip()}  → {fix}")
    assert not found, "\n".join(found)


# ---- the CLI: warnings, errors, paths and tables with brackets reach the terminal whole ----------------

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture
def bracketed_spec(tmp_path, write_spec):
    """bracketed_spec(**overrides): the conftest spec, in a directory whose name rich would read as a tag."""

    def _write(**overrides) -> Path:
        path = tmp_path / "sweeps [x]" / "exp[x]" / "experiment.yaml"
        path.parent.mkdir(parents=True)
        path.write_text(write_spec(**overrides).read_text())
        return path

    return _write


def test_plan_and_validate_print_every_warning_and_error_whole(bracketed_spec, quiet_planning):
    """The human output holds each message --json gives, brackets and all (tiny-model warning with its
    list, truncation warnings and errors, the path written)."""
    spec = bracketed_spec(training={"modules_to_save": [], "max_seq_len": 16}, prompt="[inst] Capitalize: {input}")
    warnings = json.loads(runner.invoke(app, ["plan", str(spec), "--json"]).stdout)["warnings"]
    assert any("[embed_tokens, lm_head]" in w for w in warnings) and any("are cut" in w for w in warnings)
    res = runner.invoke(app, ["plan", str(spec)])
    assert res.exit_code == 0, res.output
    for w in warnings:
        assert _flat(f"warning: {w}") in _flat(res.output)
    assert f"wrote {spec.parent / 'plan.md'}" in res.output

    checks = json.loads(runner.invoke(app, ["validate", str(spec), "--gpu", "H100-80GB", "--json"]).stdout)["checks"]
    messages = [f"error: {spec}: {e}" for c in checks for e in c["errors"]]
    messages += [f"warning: {w}" for c in checks for w in c["warnings"]]
    assert any(m.startswith("error:") for m in messages) and any(m.startswith("warning:") for m in messages)
    res = runner.invoke(app, ["validate", str(spec), "--gpu", "H100-80GB"])
    assert res.exit_code == 1
    for m in messages:
        assert _flat(m) in _flat(res.output), m


def test_scaffolded_experiment_commands_print_bracketed_paths_whole(tmp_path, bracketed_spec):
    spec = bracketed_spec()
    exp = spec.parent
    res = runner.invoke(app, ["scaffold", str(spec)])
    assert res.exit_code == 0, res.output
    assert "controls in " + str(exp) in res.output
    for args in (["status", str(exp)], ["results", str(exp)]):  # the table's title is the directory
        res = runner.invoke(app, args)
        assert res.exit_code == 0, res.output
        assert "".join(str(exp).split()) in "".join(res.output.split()), args
    res = runner.invoke(app, ["status", str(exp), "--watch"])  # nothing runs: one frame, then a hint
    assert f"`tunelab run {exp}` starts the sweep" in res.output
    archive = tmp_path / "archive [x]"
    res = runner.invoke(app, ["archive", str(exp), "--to", str(archive), "--dry-run"])
    assert res.exit_code == 0, res.output
    assert str(archive / exp.name) in res.output


def test_errors_quoting_the_input_keep_its_brackets(tmp_path, bracketed_spec, tiny_model, caps_dataset):
    spec = bracketed_spec()
    missing = tmp_path / "no [x]" / "experiment.yaml"
    cases = [
        (["plan", str(missing)], str(missing)),
        (["estimate", "--model", str(tiny_model), "--gpu", "H100", "--max-seq-len", "8", "--dtype", "[bf16]"],
         "(got '[bf16]')"),  # the spec's own check of training.dtype, naming --dtype
        (["export", str(spec.parent), "--to", "[mlflow]"], "unknown tracker '[mlflow]'"),
        (["init", "--model", str(tiny_model), "--dataset", str(caps_dataset), "--vary", "[lora_rank]", "--out",
          str(tmp_path / "init")], "'[lora_rank]': write FIELD=LEVEL"),
        (["demo", "--executor", "[x]", "--out", str(tmp_path / "demo")], "unknown executor '[x]'"),
        (["compare", str(missing.parent)], str(missing.parent)),
    ]
    for args, expected in cases:
        res = runner.invoke(app, args)
        assert res.exit_code == 1, (args, res.output)
        assert expected in res.output, (args, res.output)


def test_ingest_and_history_print_bracketed_paths_and_reasons_whole(tmp_path):
    from tunelab.ingest import ingest_logs
    from tunelab.ledger.history import history_path

    log = tmp_path / "logs [x]" / "slurm-[1].out"
    log.parent.mkdir()
    log.write_text("[rank0]: not a training log\n")
    (skipped,) = ingest_logs([log])
    assert not skipped.imported
    res = runner.invoke(app, ["ingest", str(log)])
    assert res.exit_code == 0, res.output
    assert f"skipped {log}: {skipped.reason}" in res.output
    res = runner.invoke(app, ["history", "--model", "[no such model]"])
    assert f"no history rows matching in {history_path()}" in res.output
