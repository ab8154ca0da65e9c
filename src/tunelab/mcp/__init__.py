"""`tunelab mcp`: a Model Context Protocol server, so an assistant drives the lab with typed tools instead of scraping
terminal tables."""
