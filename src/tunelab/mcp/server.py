"""Build and serve the MCP server: the tools (read-only ones alone under --read-only), their annotations
saying which change files, and the resources; stdio, or streamable HTTP on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations
from pydantic import Field

from tunelab.mcp.models import AdoptOut, HistoryOut, IngestOut, PathList
from tunelab.mcp.paths import Workspace
from tunelab.mcp.resources import add_resources
from tunelab.mcp.sweeps import Sweeps
from tunelab.mcp.tools import Gpu, PipelineTools, one_line


class LabTools:
    def __init__(self, ws: Workspace):
        self.ws = ws

    @one_line
    def list_models(self) -> PathList:
        """Model directories (config.json and weights) under the root and the configured model dirs."""
        return PathList(paths=[self.ws.shown(p) for p in self.ws.models()])

    @one_line
    def list_datasets(self) -> PathList:
        """Data files (jsonl, json, csv, tsv, parquet) under the root."""
        return PathList(paths=[self.ws.shown(p) for p in self.ws.datasets()])

    @one_line
    def history(self, model: Annotated[str | None, Field(description="Only rows of this model (substring).")] = None,
                gpu: Annotated[str | None, Field(description="Only rows of this device (substring).")] = None
                ) -> HistoryOut:
        """What the planner knows: every run trained, probed or ingested, with where each figure came from."""
        from tunelab.ledger.history import load

        rows = [r for r in load(everything=True)
                if (not model or model.lower() in (r.model or "").lower())
                and (not gpu or gpu.lower() in (r.device or "").lower())]
        return HistoryOut(rows=rows)

    @one_line
    def ingest(self, paths: Annotated[list[str], Field(description="Log files or directories (torchtune / SLURM "
                                                       "logs, HF Trainer output dirs).")],
               gpu: Gpu = None) -> IngestOut:
        """Import past runs' logs into the history ledger (writes the ledger; truncated logs are skipped)."""
        from tunelab.catalog import resolve_gpu
        from tunelab.ingest import ingest_logs

        found = [self.ws.inside(p, f"paths[{i}]") for i, p in enumerate(paths)]
        return IngestOut.of(ingest_logs(found, resolve_gpu(gpu).name if gpu else None), self.ws.shown)

    @one_line
    def adopt(self, sources: Annotated[list[str], Field(description="Run directories trained elsewhere (HF "
                                                        "Trainer or torchtune output dirs); never modified.")],
              out: Annotated[str, Field(description="The experiment directory to create or add to.")],
              spec: Annotated[str, Field(description="experiment.yaml giving base model(s), data, prompt, tasks.")],
              model: Annotated[str | None, Field(description="The base model dir the adapters were trained "
                                                 "on (default: the spec's).")] = None) -> AdoptOut:
        """Make runs trained elsewhere runs of an experiment (writes it; then eval and report work on them)."""
        from tunelab.adopt.write import adopt
        from tunelab.mcp.confine import confine_spec

        found = [self.ws.inside(s, f"sources[{i}]") for i, s in enumerate(sources)]
        target, spec_path = self.ws.inside(out, "out"), self.ws.inside(spec, "spec")
        confine_spec(self.ws, spec_path)
        result = adopt(found, target, spec_path, self.ws.existing_model(model, "model") if model else None)
        return AdoptOut.of(result, self.ws.shown)


# name → (changes files, destructive options); read-only tools change nothing at all
READ_ONLY = ("validate", "estimate", "status", "results", "history", "list_models", "list_datasets")
WRITES = {"init_spec": "writes experiment.yaml (force replaces it)",
          "plan": "writes plan.md beside the spec",
          "probe": "trains a few steps; records measurements in the history ledger",
          "scaffold": "writes the experiment's run directories (force overwrites run configs)",
          "run": "starts training in the background, a tune: block's search first where it has not run (force "
                 "reruns completed runs from scratch)",
          "tune": "starts the learning-rate search in the background (trials under tune/, then scaffolds the runs)",
          "cancel": "cancels jobs (all_runs cancels every run's)",
          "eval": "writes scores and the ledger (force re-evaluates)",
          "report": "writes report/",
          "ingest": "writes the history ledger",
          "adopt": "writes the experiment directory given as out"}
INSTRUCTIONS = ("tunelab plans, runs, evaluates and reports sweeps of LoRA fine-tuning experiments. Pipeline: "
                "init_spec -> plan -> [tune (returns at once; when the spec has a tune: block)] -> scaffold -> run (returns at once) -> status (until done) -> eval -> results "
                "-> report. Paths are relative to the workspace root; nothing outside it is touched. A spec's "
                "resources.slurm setup/modules/extra_sbatch lines are refused unless the server allows them.")


def build_server(root: str | Path, read_only: bool = False, model_dirs: list[Path] | None = None,
                 allow_job_shell: bool = False) -> MCPServer:
    ws = Workspace.at(root, model_dirs, allow_job_shell)
    server: MCPServer = MCPServer("tunelab", instructions=INSTRUCTIONS, log_level="WARNING")
    pipeline, lab = PipelineTools(ws, Sweeps()), LabTools(ws)
    for name in (*READ_ONLY, *WRITES):
        if read_only and name not in READ_ONLY:
            continue
        fn = getattr(pipeline, name, None) or getattr(lab, name)
        changes = WRITES.get(name)
        doc = (fn.__doc__ or "").strip()
        description = f"{doc} Changes files: {changes}." if changes else f"{doc} Read-only: changes nothing."
        server.add_tool(fn, name=name, description=description, structured_output=True,
                        annotations=ToolAnnotations(read_only_hint=not changes,
                                                    destructive_hint=name in ("scaffold", "run", "cancel", "eval",
                                                                              "init_spec"),
                                                    open_world_hint=False))
    add_resources(server, ws)
    return server


def serve(root: str | Path, read_only: bool = False, http_port: int | None = None,
          model_dirs: list[Path] | None = None, allow_job_shell: bool = False) -> None:
    """Serve until the client goes away (stdio) or the process is stopped (HTTP, 127.0.0.1 only)."""
    server = build_server(root, read_only, model_dirs, allow_job_shell)
    if http_port is None:
        server.run("stdio")
    else:
        server.run("streamable-http", host="127.0.0.1", port=http_port)
