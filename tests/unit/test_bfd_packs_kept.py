"""The packs' count of TRL's BFD kept on disk (estimate/dataset.py): the plan packs a sweep's data once, and
`tunelab run`'s checks, in a process of their own, read the count instead of importing TRL's stack again."""

from __future__ import annotations

import os
import subprocess
import sys

from tunelab.estimate import dataset
from tunelab.scaffold.write import scaffold


def test_the_count_is_trls_and_kept_per_lengths_and_max_seq_len(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    lengths = [500, 400, 120, 100, 90, 12, 3]
    first = dataset.simulate_bfd_packing(lengths, 512)
    assert first.sequences == dataset._bfd_packs(lengths, 512) == 3  # TRL's own, as SFTTrainer packs them
    assert (first.examples, first.density, first.fill_fraction) == (7, round(7 / 3, 4), round(1225 / (3 * 512), 4))
    monkeypatch.setattr(dataset, "_bfd_packs", lambda *a: (_ for _ in ()).throw(AssertionError("packed again")))
    assert dataset.simulate_bfd_packing(lengths, 512) == first  # read back
    monkeypatch.setattr(dataset, "_bfd_packs", lambda lengths, max_seq_len: 99)  # a new key: computed
    assert dataset.simulate_bfd_packing(lengths, 256).sequences == 99
    assert dataset.simulate_bfd_packing(lengths[:-1], 512).sequences == 99


def test_run_checks_after_a_plan_import_no_trl(write_spec, tmp_path, quiet_planning, monkeypatch):
    """A packed sweep scaffolded; then `tunelab run`'s checks in a fresh interpreter on the same cache: no problem
    found, and TRL never imported (its imports were seconds of every run's start)."""
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    plan = scaffold(write_spec(factors={"lora_rank": [4, 8]}, controls=False,
                               training={"packing": True, "max_seq_len": 64, "epochs": 1}))
    code = ("import sys\nfrom tunelab.plan.validate import checks_before_run\n"
            f"print(checks_before_run({str(plan.experiment_dir)!r}, None, True))\nprint('trl' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ.copy(),
                         check=True).stdout.split("\n")
    assert out[:2] == ["[]", "False"]
