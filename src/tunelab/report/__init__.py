"""report: report.md + self-contained report.html + figures, from the ledger and the run directories alone; every number
traces to a file. Entry point: build.build_report."""
