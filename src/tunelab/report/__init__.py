"""report: report.md + self-contained report.html + figures, from the ledger and the run directories
alone; every number traces to a file. data (gather) → findings (pure rules) → figures → sections
(one Document) → markdown / html. Entry point: build.build_report."""
