"""The report's data section: every data file a run read, with its rows and sha256 (from scaffold's
data/provenance.json), so a result can be traced to the exact bytes it was computed from."""

from __future__ import annotations

from pathlib import Path

from tunelab.data.splits import DATA_DIR, PROVENANCE_FILE
from tunelab.fsutil import read_json
from tunelab.report.document import Block, Para, Section, Table


def data_section(experiment_dir: Path) -> Section | None:
    """None for experiments scaffolded before provenance was recorded."""
    record = read_json(experiment_dir / DATA_DIR / PROVENANCE_FILE)
    if not isinstance(record, dict) or not record:
        return None
    rows, splits = [], []
    for name, info in record.items():
        counts = info.get("counts", {})
        splits.append([name, str(info.get("format", "?")), *(str(counts.get(s, "—")) for s in
                                                              ("train", "validation", "test")),
                       "evaluation only" if info.get("eval_only") else "training + evaluation"])
        rows += [[name, f"`{f['path']}`", str(f["rows"]), f"`{f['sha256']}`"] for f in info.get("files", [])]
    blocks: list[Block] = [Table(["Dataset", "Format", "train", "validation", "test", "Used for"], splits),
              Table(["Dataset", "File", "Rows", "sha256"], rows, caption="Data files as they were when planned.")]
    made = [f"`{n}`: `{i['split_record']}`" for n, i in record.items() if i.get("split_record")]
    if made:
        blocks.append(Para("Splits made by tunelab, recorded once and read by every run and evaluation: "
                           + "; ".join(made) + "."))
    return Section("Data", blocks)
