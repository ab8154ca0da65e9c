"""One MCP tool call through the SDK's in-memory client, against a server rooted at a directory (what an
assistant's call returns: is_error, content, structured_content)."""

from __future__ import annotations

from pathlib import Path

import anyio
from mcp import Client

from tunelab.mcp.server import build_server


def tool(root: Path, name: str, args: dict, read_only: bool = False):
    async def go():
        async with Client(build_server(root, read_only=read_only)) as client:
            return await client.call_tool(name, args)

    return anyio.run(go)
