"""The JSON each command prints with --json, as types: `tunelab schema --output COMMAND` prints their JSON
Schema, and the MCP tools return the same records (tunelab.mcp.models). Keys are stable: a change here is a
change of the documented output."""

from __future__ import annotations

from typing import Any

from pydantic import TypeAdapter

from tunelab.errors import TunelabError


def output_adapters() -> dict[str, TypeAdapter[Any]]:
    """Command → the type of its --json output."""
    from tunelab.execute.status import StatusRow
    from tunelab.mcp.models import PlanOut, ResultRow
    from tunelab.plan.validate import RunCheck

    return {"plan": TypeAdapter(PlanOut), "validate": TypeAdapter(list[RunCheck]),
            "status": TypeAdapter(list[StatusRow]), "results": TypeAdapter(list[ResultRow]),
            "history": TypeAdapter(list[dict[str, Any]])}


def output_schema(command: str) -> dict[str, Any]:
    """The JSON Schema of `tunelab COMMAND --json`."""
    adapters = output_adapters()
    if command not in adapters:
        raise TunelabError(f"no JSON output schema for {command!r}; known: {', '.join(sorted(adapters))}",
                           field="--output")
    return adapters[command].json_schema()
