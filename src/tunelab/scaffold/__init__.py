"""scaffold: see docs/architecture.md."""
