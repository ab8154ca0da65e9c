"""report: Markdown from the ledger and the run directories alone; every number traces to a file."""
