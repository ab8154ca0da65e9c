"""Build and serve the MCP server: the tools (read-only ones alone under --read-only), their annotations
saying which change files, and the resources; stdio, or streamable HTTP on 127.0.0.1."""

from __future__ import annotations

from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

from tunelab.mcp.lab import LabTools
from tunelab.mcp.paths import Workspace
from tunelab.mcp.resources import add_resources
from tunelab.mcp.sweeps import Sweeps
from tunelab.mcp.tools import PipelineTools

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
