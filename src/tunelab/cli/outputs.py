"""The JSON each command prints with --json, as types (`tunelab schema --output COMMAND`, the MCP tools' records too): a
change here is a change of the documented output."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from tunelab.errors import TunelabError


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
