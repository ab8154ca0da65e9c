"""`tunelab mcp`: a Model Context Protocol server, so an assistant drives the lab with typed tools instead of
scraping terminal tables. server.py builds it, tools.py holds the tools, paths.py keeps every path inside the
workspace root, sweeps.py starts sweeps in the background, models.py the tools' typed outputs."""
