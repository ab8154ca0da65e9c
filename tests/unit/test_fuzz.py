"""Fuzzing in CI (short, derandomized): random and damaged experiment.yaml, run.yaml, dataset files and
training logs end accepted or in one clear TunelabError (a log: skipped with its reason), never another
exception, and leave nothing half-written. benchmarks/fuzz.py runs the same targets at length. Below,
each input the fuzzer once broke a loader with, kept as a regression example."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import fuzz_targets as ft  # noqa: E402

from tunelab.errors import TunelabError  # noqa: E402

EXAMPLES = 25


@pytest.fixture(autouse=True)
def _datasets_cache(tmp_path, monkeypatch):
    import datasets

    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))


@pytest.mark.parametrize("target", list(ft.TARGETS))
def test_fuzzed_inputs_end_in_a_clear_error_and_leave_nothing_half_written(target):
    tally = ft.Tally()
    ft.fuzz(target, EXAMPLES, tally, strict=True)  # raises (shrunk) at a traceback or a half-written file
    assert tally.tried[target] >= EXAMPLES // 2
    assert tally.rejected[target] > 0  # the inputs were bad enough to be rejected


@pytest.mark.parametrize("target", list(ft.TARGETS))
def test_the_fuzzers_valid_base_inputs_are_accepted(target, tmp_path):
    """Mutations start from valid inputs: were those rejected, the fuzzer would test nothing deep."""
    base = {"spec": ft.as_yaml(ft.valid_spec()), "run.yaml": ft.as_yaml(ft.valid_run_config()),
            "data": ("jsonl", ft.encode_rows(ft.good_rows(), "jsonl"), {"split": {"validation": 0.5}}, "{input}"),
            "ingest": (ft.FIXTURE_LOGS / "torchtune_ok.out").read_bytes()}[target]
    _, prepare, call = ft.TARGETS[target]
    assert call(prepare(tmp_path, base)) is not False


# ---------------------------------------------------------------- regression examples found by fuzzing


@pytest.mark.parametrize("name", ["experiment.yaml", "run.yaml"])
def test_yaml_that_is_not_utf8_is_one_clear_error(tmp_path, name):
    from tunelab.rundir.config import load_run_config
    from tunelab.spec import load_spec

    path = tmp_path / name
    path.write_bytes(b"name: t\nprompt: 'Caf\xe9 {input}'\n")  # Latin-1, as an old editor saves it
    with pytest.raises(TunelabError, match=r"line 2: not UTF-8 text \(byte 0xe9") as err:
        (load_spec if name == "experiment.yaml" else load_run_config)(path)
    assert err.value.file == str(path)


@pytest.mark.parametrize("damage", [b"Loss: 1.2.3:", b"Loss: +:", b"Loss: e:"])
def test_a_log_with_a_damaged_number_is_skipped_with_its_reason(tmp_path, monkeypatch, damage):
    from tunelab.ingest import ingest_logs
    from tunelab.ledger import history

    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    log = tmp_path / "slurm-1.out"
    log.write_bytes((ft.FIXTURE_LOGS / "torchtune_ok.out").read_bytes().replace(b"Loss: 0.1000:", damage))
    [result] = ingest_logs([log])
    assert not result.imported and "damaged log" in result.reason and "not a number" in result.reason
    # the same log undamaged is imported: one row in the history, so the damaged one added none
    good = tmp_path / "slurm-2.out"
    good.write_bytes((ft.FIXTURE_LOGS / "torchtune_ok.out").read_bytes())
    [ok] = ingest_logs([good])
    assert ok.imported, ok.reason
    assert [r.origin_where for r in history.load(tmp_path / "history.db", everything=True)] == [str(good)]


def test_damaged_memory_and_summary_numbers_are_skipped_not_crashes(tmp_path):
    from tunelab.ingest.torchtune import LogParseError, parse_torchtune_log

    text = (ft.FIXTURE_LOGS / "torchtune_ok.out").read_text()
    for bad in (text.replace("allocation: 2.41 GiB", "allocation: 2.4.1 GiB"),
                text.replace("global_step 218", "global_step inf"),
                text.replace("epochs: 2", "epochs: two")):
        with pytest.raises(LogParseError, match="damaged log"):
            parse_torchtune_log(bad)


def test_json_rows_with_damaged_bytes_in_the_first_line_are_one_clear_error(tmp_path):
    from tunelab.data.splits import load_data
    from tunelab.spec import DatasetSpec

    path = tmp_path / "rows.json"
    path.write_bytes(b'{"input": "caf\xe9", "output": "x"}\n')  # was a UnicodeDecodeError traceback
    with pytest.raises(TunelabError, match=r"rows.json\): train row 0: not UTF-8 text"):
        data = load_data(DatasetSpec(name="d", path=str(path)), None)
        data.examples("train", data.reader("{input}", None))


def test_a_parquet_value_that_is_not_utf8_names_the_row(tmp_path):
    """Arrow checks a string column's bytes only when a row is read."""
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    from tunelab.data.splits import load_data
    from tunelab.spec import DatasetSpec

    buf = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ft.good_rows(5)), buf, compression="none", use_dictionary=False)
    path = tmp_path / "rows.parquet"
    path.write_bytes(buf.getvalue().replace(b"word3", b"w\xa5rd3", 1))
    data = load_data(DatasetSpec(name="d", path=str(path)), None)
    with pytest.raises(TunelabError, match=r"rows.parquet\): train row 3: not UTF-8 text"):
        data.examples("train", data.reader("{input}", None))
