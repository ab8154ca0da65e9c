"""`tunelab mcp` (the server an assistant drives the lab with) and `tunelab skills install` (the Agent Skills
that tell it how). Imported lazily: the mcp SDK loads only when these commands run."""

from __future__ import annotations

import shutil
from pathlib import Path

import typer

from tunelab.cli.common import add_commands, emit, json_option
from tunelab.console import say
from tunelab.errors import TunelabError

SKILL_FILE = "SKILL.md"


def skills_source() -> Path:
    """tunelab/skills in an installed package (a link to the repository's skills/ in a checkout)."""
    here = Path(__file__).resolve().parents[1] / "skills"
    if here.is_dir():
        return here
    checkout = Path(__file__).resolve().parents[3] / "skills"
    if checkout.is_dir():
        return checkout
    raise TunelabError("the skills are missing from this installation", file=here)


def skill_dirs() -> list[Path]:
    return sorted(p.parent for p in skills_source().glob(f"*/{SKILL_FILE}"))


def install_skills(target: Path, force: bool = False) -> list[Path]:
    """Copy each skill folder into target; an existing one is kept unless force (it may have been edited)."""
    sources = skill_dirs()
    existing = [target / s.name for s in sources if (target / s.name).exists()]
    if existing and not force:
        raise TunelabError(f"already installed: {', '.join(p.name for p in existing)}; pass --force to replace",
                           file=target, field="--dir")
    target.mkdir(parents=True, exist_ok=True)
    out = []
    for src in sources:
        dest = target / src.name
        if dest.exists():
            shutil.rmtree(dest)
        shutil.copytree(src, dest)
        out.append(dest / SKILL_FILE)
    return out


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
    from tunelab.cli.assistant import install_skills

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
