"""`tunelab mcp` (the server an assistant drives the lab with) and `tunelab skills install` (the Agent Skills
that tell it how). Imported lazily: the mcp SDK loads only when these commands run."""

from __future__ import annotations

from pathlib import Path

import typer

from tunelab.cli.common import add_commands
from tunelab.cli.jsonout import emit, json_option
from tunelab.console import say


def mcp_cmd(
    root: Path = typer.Option(Path("."), "--root", help="Workspace root: every path argument must resolve inside "
                              "it (symlinks included)."),
    http: int | None = typer.Option(None, "--http", help="Serve streamable HTTP on 127.0.0.1:PORT (path /mcp) "
                                       "instead of stdio."),
    read_only: bool = typer.Option(False, "--read-only", help="Expose only the tools that change nothing."),
    models_dir: list[Path] | None = typer.Option(None, "--models-dir", help="Model stores list_models and "
                                                    "init_spec may read outside the root (also $TUNELAB_MODELS)."),
    allow_job_shell: bool = typer.Option(False, "--allow-job-shell", help="Accept specs whose resources.slurm "
                                         "setup, modules or extra_sbatch put lines into job scripts."),
) -> None:
    """Serve tunelab to an AI assistant over the Model Context Protocol.

    Typed tools for the whole pipeline (init_spec, plan, scaffold, run, status, eval, results, report, ...)
    and each experiment's plan.md, report.md and results as resources."""
    from tunelab.mcp.server import serve

    serve(root, read_only=read_only, http_port=http, model_dirs=models_dir, allow_job_shell=allow_job_shell)


skills_app = typer.Typer(help="The Agent Skills for assistants (plan, run, summarize, adopt).", no_args_is_help=True)


def skills_install_cmd(
    dir: Path = typer.Option(Path(".claude/skills"), "--dir", help="Where the assistant looks for skills "
                             "(one folder per skill, each with SKILL.md)."),
    force: bool = typer.Option(False, "--force", help="Replace skills already installed there."),
    json_out: bool = json_option("the skill folders installed"),
) -> None:
    """Copy tunelab's four Agent Skills into DIR.

    plan-experiment, run-experiment, summarize-experiment and adopt-runs, one folder each with its SKILL.md."""
    from tunelab.mcp.skills import install_skills

    paths = install_skills(dir, force=force)
    if json_out:
        from tunelab.mcp.models import BuiltOut

        emit(BuiltOut(paths=[str(p) for p in paths]))
        return
    for path in paths:
        say("installed {}", path)


def register(app: typer.Typer) -> None:
    add_commands(app, {"mcp": mcp_cmd})
    add_commands(skills_app, {"install": skills_install_cmd})
    app.add_typer(skills_app, name="skills")
