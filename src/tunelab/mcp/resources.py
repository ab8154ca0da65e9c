"""Each experiment's plan.md, report.md and results as MCP resources, so an assistant reads them without a tool
call: tunelab://experiment/{experiment}/plan.md (experiment: its directory relative to the root)."""

from __future__ import annotations

import json
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ResourceNotFoundError

from tunelab.errors import TunelabError
from tunelab.mcp.paths import Workspace

PREFIX = "tunelab://experiment/"


def report_uri(ws: Workspace, experiment_dir: Path) -> str:
    return f"{PREFIX}{ws.shown(experiment_dir)}/report.md"


def _file(ws: Workspace, experiment: str, relative: str) -> str:
    try:
        path = ws.inside(experiment, "experiment") / relative
    except TunelabError as exc:
        raise ResourceError(str(exc)) from None
    if not path.is_file():
        raise ResourceNotFoundError(f"{ws.shown(path)} does not exist yet (plan, or report, writes it)")
    return path.read_text()


def experiments(ws: Workspace) -> list[str]:
    """Experiment directories under the root: those holding experiment.yaml (a few levels down)."""
    found = [p.parent for p in ws.root.glob("**/experiment.yaml") if len(p.relative_to(ws.root).parts) <= 4
             and not any(part.startswith(".") for part in p.relative_to(ws.root).parts)]
    return sorted(ws.shown(p) or "." for p in found)


def add_resources(server: MCPServer, ws: Workspace) -> None:
    @server.resource(PREFIX + "{+experiment}/plan.md", mime_type="text/markdown",
                     description="The experiment's plan.md (written by plan and scaffold).")
    def plan_md(experiment: str) -> str:
        return _file(ws, experiment, "plan.md")

    @server.resource(PREFIX + "{+experiment}/report.md", mime_type="text/markdown",
                     description="The experiment's report/report.md (written by report).")
    def report_md(experiment: str) -> str:
        return _file(ws, experiment, "report/report.md")

    @server.resource(PREFIX + "{+experiment}/results.json", mime_type="application/json",
                     description="Every run's state, metrics and eval scores (what the results tool returns).")
    def results_json(experiment: str) -> str:
        from tunelab.ledger.results import collect_results
        from tunelab.mcp.models import ResultsOut

        try:
            return ResultsOut.of(collect_results(ws.inside(experiment, "experiment"))).model_dump_json(indent=2)
        except TunelabError as exc:
            raise ResourceError(str(exc)) from None

    @server.resource("tunelab://experiments", mime_type="application/json",
                     description="Experiment directories under the workspace root, with their resource URIs.")
    def listing() -> str:
        return json.dumps([{"experiment": e, **{k: f"{PREFIX}{e}/{k}" for k in ("plan.md", "report.md",
                                                                                 "results.json")}}
                           for e in experiments(ws)], indent=2)
