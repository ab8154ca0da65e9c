"""The lab's tools beside the pipeline: what exists (models, data), what the planner knows (history), and
bringing in runs trained elsewhere (ingest, adopt)."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from tunelab.mcp.models import AdoptOut, HistoryOut, IngestOut, PathList
from tunelab.mcp.paths import Workspace
from tunelab.mcp.tools import Gpu, one_line


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
