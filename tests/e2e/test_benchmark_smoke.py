"""Every benchmark script in its smoke form (`--smoke`: tiny sizes, the real code paths), run as a user runs it
(`python benchmarks/X.py --smoke`: as __main__, its own sys.argv, cwd, environment, stdout and stderr, a process
of its own), so that a refactor that breaks a benchmark breaks the build. Each test checks what the output must
contain: its rows, and that the printed figures parse and agree with one another and with what they were
computed from (a ratio with the two figures it divides, an error with its predicted and measured values, a step
count with the dataset's rows) — never what the figures are: where a measured time falls against a prediction, an
interval or another measurement is the benchmark's result, which a busy machine moves. The GPU kit and the fault
benchmark have smoke tests of their own (COVERED_ELSEWHERE). Each smoke's process is forked from this one after
torch, transformers, PEFT and TRL are imported here once (benchmarks/forking.py run_python): a fresh interpreter
spends ~10 s CPU on those imports alone, more than most smokes' own work. Marked slow: every smoke but the fuzzer's
trains or builds a model. The three that start fresh interpreters by the dozen (tuning, threads, distributed)
and eval_pass_ab's (SmolLM2 evaluated in two fresh processes) are marked rehearsal: `make test-rehearsals` runs
them, outside `make test` and its 15 minutes."""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "benchmarks"
sys.path.insert(0, str(BENCH))
import forking  # noqa: E402

SMOKED = {  # script -> its test, longest first (the order the smokes start in; CPU s each in its fork, measured alone)
    "tuning.py": "test_tuning_smoke_tables_agree_with_the_trials_and_runs",  # ~60 (4 trials: fresh interpreters)
    "threads.py": "test_threads_smoke_two_ddp_runs_each_way_and_the_ratio_adds_up",  # ~55 (8 fresh ranks)
    "distributed.py": "test_distributed_smoke_fsdp_holds_half_of_what_ddp_holds",  # ~35 (5 fresh processes)
    "deadline.py": "test_deadline_smoke_predicted_and_measured_add_up",  # ~16 (4 probes, 4 jobs, 4 evaluations)
    "eval_sweep.py": "test_eval_sweep_smoke_both_ways_agree_and_the_table_adds_up",  # ~20 (11 evaluations one by one)
    "peers.py": "test_peers_smoke_counts_tunelab_tokens_one_way_and_parses_every_peer_sample",  # ~12 (1 job)
    "eval_pass_ab.py": "test_eval_pass_ab_smoke_one_tree_answers_alike_and_the_ratio_is_its_medians",  # ~20 (2 evals)
    "estimate_accuracy.py": "test_estimate_accuracy_smoke_error_is_predicted_against_measured",  # 4.6 (2 jobs; 3 now)
    "packing.py": "test_packing_smoke_simulations_and_measured_ratio",  # 4.4
    "overhead.py": "test_overhead_smoke_plans_scaffolds_and_reads_status",  # 3.8
    "memory_references.py": "test_memory_references_smoke_errors_agree_with_their_figures",  # 3.5
    "dataloader.py": "test_dataloader_smoke_table_is_its_runs_summary",  # 2.3
    "fuzz.py": "test_fuzz_smoke_counts_add_up",  # 2.0
    "packing_attention.py": "test_packing_attention_smoke_measures_both_variants",  # 1.3
    "linear_kernels.py": "test_linear_kernels_smoke_ratios_are_their_speeds_and_both_stay_float32",  # ~1
    "gpu_speed_fit.py": "test_gpu_speed_fit_smoke_summary_is_its_rows",  # ~1 (reads the committed rows)
}
# processes another benchmark starts (the script that launches each: its own smoke or test covers it)
WORKERS = {"gpu_truth_worker.py": "gpu_truth_shape.py"}
WITH_OUT = ("overhead.py", "dataloader.py", "packing.py", "estimate_accuracy.py", "distributed.py",
            "deadline.py", "threads.py", "tuning.py", "peers.py", "eval_sweep.py")  # they take --out DIR
COVERED_ELSEWHERE = {"gpu_truth.py": ("--cpu-smoke", "tests/e2e/test_gpu_lease.py"),
                     "faults.py": ("--short", "tests/e2e/test_faults_benchmark.py"),
                     "ray_demo.py": ("--smoke", "tests/e2e/ray/test_ray_demo_smoke.py"),
                     "plan_ab.py": ("--smoke", "tests/e2e/test_plan_ab.py"),
                     "eval_engines.py": ("--smoke", "tests/e2e/test_eval_engines_smoke.py"),
                     "demo_wall.py": ("--check", "tests/e2e/test_report_audit.py"),
                     "first_contact.py": ("--check", "tests/e2e/test_report_audit.py"),
                     "step_cost.py": ("--smoke", "tests/e2e/test_probe_profile.py"),
                     "sweep_peers.py": ("--smoke", "tests/e2e/test_sweep_peers_smoke.py")}
NUM = r"([+-]?[\d,]+(?:\.\d+)?)"  # a printed number: sign, thousands commas, decimals


# imported before the smokes are forked, beside the training job's imports (forking.preload_training): what the
# scripts and their jobs import lazily (inspect-ai through tunelab.evaluate, statsmodels through tunelab.stats)
PRELOADED = ("transformers.models.llama.modeling_llama", "tunelab.models.attention", "tunelab.models.lora",
             "tunelab.models.tiny", "tunelab.data.capitalization", "tunelab.plan.planner", "tunelab.scaffold.write",
             "tunelab.execute.status", "tunelab.estimate.simulator", "tunelab.forecast.runs", "tunelab.evaluate.tasks",
             "tunelab.evaluate.hf", "tunelab.stats.power", "tunelab.train.step_cost", "tunelab.train.loop_hooks")
SMOKE_TIMEOUT_S = 900


@pytest.fixture(scope="module")
def smokes(request, tmp_path_factory) -> Iterator[tuple[forking.Forks, dict[str, tuple[Path, Path]]]]:
    """The smokes of the tests selected in this module, forked from this process once the training stack is
    imported, two running at a time (each mostly single-threaded: two keep 2 cores busy), longest first; each
    test waits for its own. Per script: its --out dir and the dir of its stdout and stderr."""
    selected = {item.originalname for item in request.session.items if item.module is request.module}
    wanted = [script for script, test in SMOKED.items() if test in selected]
    if any(script != "fuzz.py" for script in wanted):
        forking.preload_training()
        for module in PRELOADED:
            importlib.import_module(module)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    forks, dirs = forking.Forks(parallel=2), {}
    for script in wanted:
        name = script.removesuffix(".py")
        out, logs = dirs[script] = tmp_path_factory.mktemp(name), tmp_path_factory.mktemp(f"{name}-output")
        argv = [str(BENCH / script), "--smoke", *(["--out", str(out)] if script in WITH_OUT else [])]
        forks.add(script, forking.run_python, argv, ROOT, env, out=logs / "stdout", err=logs / "stderr",
                  timeout=SMOKE_TIMEOUT_S)
    yield forks, dirs
    forks.close()


def smoke(smokes: tuple[forking.Forks, dict[str, tuple[Path, Path]]], script: str) -> tuple[str, Path]:
    """(stdout, --out dir) of `python benchmarks/<script> --smoke`, which must exit 0."""
    forks, dirs = smokes
    child, (out, logs) = forks.result(script), dirs[script]
    stdout, stderr = ((logs / name).read_text(encoding="utf-8", errors="replace") for name in ("stdout", "stderr"))
    ended = f"timed out after {SMOKE_TIMEOUT_S} s" if child.timed_out else f"exited {child.code}"
    assert child.code == 0, f"{script} --smoke {ended}:\n{stdout}\n{stderr[-4000:]}"
    return stdout, out


def line(text: str, pattern: str) -> tuple[float, ...]:
    """The numbers of the one line matching pattern (groups: NUM)."""
    found = re.findall(pattern, text, re.MULTILINE)
    assert len(found) == 1, f"{len(found)} lines match {pattern!r} in:\n{text}"
    groups = found[0] if isinstance(found[0], tuple) else (found[0],)
    return tuple(float(g.replace(",", "")) for g in groups)


def ratio_bound(a: float, b: float, step_a: float, step_b: float) -> float:
    """How far a / b can move when a and b are printed rounded to step_a and step_b: the exact interval, since
    the first-order bound misses by 5 % when b is 0.9 printed to 0.1 (CI stop 62)."""
    low_b = b - step_b / 2
    assert low_b > 0, f"{b} printed to {step_b} may be zero: no ratio bound"
    return (a + step_a / 2) / low_b - a / b


def test_every_benchmark_script_has_a_smoke_run_by_a_test():
    scripts = {p.name for p in BENCH.glob("*.py") if 'if __name__ == "__main__":' in p.read_text()}
    assert scripts == set(SMOKED) | set(COVERED_ELSEWHERE) | set(WORKERS), "a new benchmark needs a smoke test here"
    for worker, launcher in WORKERS.items():
        assert worker in (BENCH / launcher).read_text(), (worker, launcher)
    for name, test in SMOKED.items():
        assert '"--smoke"' in (BENCH / name).read_text() and f"def {test}(" in Path(__file__).read_text(), name
    for name, (flag, test) in COVERED_ELSEWHERE.items():
        assert f'"{flag}"' in (BENCH / name).read_text() and flag in (ROOT / test).read_text(), (name, test)


@pytest.mark.slow  # a tiny model built, 8 runs planned and scaffolded, a CLI process
def test_overhead_smoke_plans_scaffolds_and_reads_status(smokes):
    out, out_dir = smoke(smokes, "overhead.py")
    # 2 ranks × 2 learning rates × 2 seeds, and the one model's base-model control
    assert line(out, r"^(\d+) fine-tuned runs \+ (\d+) controls \((\d+) status rows\)$") == (8, 1, 9)
    t_plan, t_both, t_status = line(out, rf"^in-process: +plan {NUM} s, plan \+ scaffold {NUM} s .*, status {NUM} s")
    assert 0 < t_plan <= t_both and t_status >= 0  # plan + scaffold is the plan's time plus the scaffold's
    assert line(out, rf"^CLI process, 9 runs: status {NUM} s$")
    assert len(list((out_dir / "exp" / "runs").glob("*/run.yaml"))) == 8


@pytest.mark.slow  # two memory simulations
def test_memory_references_smoke_errors_agree_with_their_figures(smokes):
    out, _ = smoke(smokes, "memory_references.py")
    rows = {}
    for row in (17, 33):
        published, simulated, err = line(out, rf"^ +{row} \w+ +\w+ +{NUM} +{NUM} +{NUM}%")
        assert err == pytest.approx(100 * (simulated - published) / published, abs=0.051)  # printed to 0.1 %
        rows[row] = (published, simulated, err)
        assert f"| {row} | " in out  # the markdown table has the row
    step, step_err = line(out, rf"^ +17 hf .*% +{NUM} +{NUM}%")  # row 17's training-step figure
    assert step_err == pytest.approx(100 * (rows[17][1] - step) / step, abs=0.051)
    # the medians of one row each: tunelab's stack on the training-step figure, the published one beside it
    assert line(out, rf"^median \|error\|, same stack .*: {NUM} % over 1 rows \(.*alone: {NUM} %\)$") == (
        abs(step_err), abs(rows[17][2]))
    assert line(out, rf"^median \|error\|, other stacks .*: {NUM} % over 1 rows$") == (abs(rows[33][2]),)


def test_fuzz_smoke_counts_add_up(smokes):
    out, _ = smoke(smokes, "fuzz.py")
    rejected = 0
    for target in ("spec", "run.yaml", "data", "ingest"):
        tried, rej, accepted, bad = line(out, rf"^{re.escape(target)} +(\d+) inputs, +(\d+) rejected .*, +(\d+) "
                                              r"accepted, (\d+) bad outcome")
        assert tried == 5 and rej + accepted == tried and bad == 0
        rejected += rej
    assert line(out, r"^bad inputs tried: (\d+), tracebacks: (\d+), half-written dirs: (\d+)$") == (rejected, 0, 0)


@pytest.mark.slow
def test_packing_attention_smoke_measures_both_variants(smokes):
    out, _ = smoke(smokes, "packing_attention.py")
    (examples,) = line(out, r"^CPU, 2 × 128 packed \((\d+) examples, 256 tokens\)")
    assert examples >= 2  # each row holds examples of 32 tokens or more, the last cut to fit
    dense = line(out, rf"^\| dense mask \(sdpa\) \| {NUM} \| {NUM} \| {NUM} \|$")
    auto = line(out, rf"^\| auto \(varlen\) \| {NUM} \| {NUM} \| {NUM} \|$")
    assert dense[2] == auto[2]  # same weights, same batch: each example attended alone either way, same loss
    s_ratio, rss_ratio = line(out, rf"^\| ratio auto / dense \| {NUM} \| {NUM} \| \|$")
    assert s_ratio == pytest.approx(auto[0] / dense[0], abs=0.005 + ratio_bound(auto[0], dense[0], 0.001, 0.001))
    assert rss_ratio == pytest.approx(auto[1] / dense[1], abs=0.005 + ratio_bound(auto[1], dense[1], 1, 1))


def test_linear_kernels_smoke_ratios_are_their_speeds_and_both_stay_float32(smokes):
    out, _ = smoke(smokes, "linear_kernels.py")
    rows = re.findall(rf"^\| (\d+) × (\d+) × (\d+) \| (forward|backward) \| {NUM} \| {NUM} \| {NUM} \| (\S+) \| (\S+) \|$",
                      out, re.MULTILINE)
    assert [(int(k), int(n), d) for _, k, n, d, *_ in rows] == [(k, n, d) for k, n in ((128, 128), (128, 512), (512, 128))
                                                                for d in ("forward", "backward")]
    for *_, aten, onednn, ratio, aten_error, onednn_error in rows:
        assert float(ratio) == pytest.approx(float(onednn) / float(aten),
                                             abs=0.005 + ratio_bound(float(onednn), float(aten), 0.1, 0.1))
        assert float(aten_error) < 1e-5 and float(onednn_error) < 1e-5  # float32 rounding, not a bf16 product's 1e-3
    aten_s, onednn_s, ratio, aten_loss, onednn_loss = line(
        out, rf"^\| 1 × 128 packed, LoRA r8 \| {NUM} \| {NUM} \| {NUM} \| {NUM} \| {NUM} \|$")
    assert ratio == pytest.approx(aten_s / onednn_s, abs=0.005 + ratio_bound(aten_s, onednn_s, 0.001, 0.001))
    assert onednn_loss == pytest.approx(aten_loss, rel=1e-5)  # the same weights and batch: one float32 loss


def train_rows(data_dir: Path) -> int:
    (path,) = data_dir.glob("words_*.json")
    return len(json.loads(path.read_text())["train"])


@pytest.mark.slow
def test_dataloader_smoke_table_is_its_runs_summary(smokes):
    out, out_dir = smoke(smokes, "dataloader.py")
    n = train_rows(out_dir / "data")
    (steps,) = line(out, r"batch 8, (\d+) steps, 1 epoch$")
    assert steps == math.ceil(n / 8)
    step_ms, wait_ms, share, wait_s, train_s, tps = line(
        out, rf"^ +1 +{NUM} +{NUM} +{NUM}% +{NUM} +{NUM} +{NUM}$")
    summary = json.loads((out_dir / "experiment" / "runs" / "workers_1" / "summary.json").read_text())
    assert summary["steps"] == steps and summary["dataloader_workers"] == 1 and summary["train_examples"] == n
    assert step_ms == pytest.approx(1000 * summary["tokens"] / steps / summary["tokens_per_s"], abs=0.051)
    assert wait_ms == pytest.approx(1000 * summary["data_wait_s"] / steps, abs=0.006)
    assert wait_s == pytest.approx(summary["data_wait_s"], abs=0.0006)
    assert share == pytest.approx(100 * summary["data_wait_fraction"], abs=0.006)
    assert train_s == pytest.approx(summary["train_time_s"], abs=0.051) and tps == pytest.approx(summary["tokens_per_s"], abs=0.5)


@pytest.mark.slow
def test_packing_smoke_simulations_and_measured_ratio(smokes):
    out, out_dir = smoke(smokes, "packing.py")
    n = train_rows(out_dir / "data")
    sections = [s.strip() for s in out.split("\n\n")]
    bfd_rows = {}
    for title, count in (("capitalization", n), ("long-tailed", 500)):
        (text,) = [s for s in sections if s.startswith(title)]
        examples, mean = line(text, rf"^{title}.*: (\d+) examples, mean {NUM} tokens")
        assert examples == count
        rows, fill, share = line(text, rf"^  tunelab BFD packing \(padding-free\) +(\d+) +{NUM} +{NUM}$")
        assert share == 1.0 and rows >= math.ceil(examples * mean / 256)
        # every real token is in some row: rows × fill × max_seq_len is the examples' total
        assert rows * fill * 256 == pytest.approx(examples * mean, abs=rows * 256 * 0.0005 + examples * 0.05)
        g_rows, g_fill, g_share = line(text, rf"^  greedy sequential packing \(padded packs\) +(\d+) +{NUM} +{NUM}$")
        assert g_rows * g_fill * 256 == pytest.approx(examples * mean, abs=g_rows * 256 * 0.0005 + examples * 0.05)
        assert g_share == g_fill  # padded packs process their padding
        (batches,) = line(text, r"^  no packing, dynamic padding, micro-batch 8 +(\d+) ")
        assert batches == math.ceil(examples / 8)
        bfd_rows[title] = rows
    unpacked = line(out, rf"^  unpacked  steps +(\d+)  tokens/s +{NUM}  non-pad tokens/s +{NUM}")
    packed = line(out, rf"^  packed    steps +(\d+)  tokens/s +{NUM}  non-pad tokens/s +{NUM}")
    assert unpacked[0] == math.ceil(n / 8) and packed[0] == math.ceil(bfd_rows["capitalization"] / 8)
    tps_ratio, nonpad_ratio, p_steps, u_steps = line(
        out, rf"packed ÷ unpacked tokens/s: {NUM}; non-pad tokens/s: {NUM}; optimizer steps: (\d+) vs (\d+)$")
    assert (p_steps, u_steps) == (packed[0], unpacked[0])
    assert tps_ratio == pytest.approx(packed[1] / unpacked[1], abs=0.005 + ratio_bound(packed[1], unpacked[1], 1, 1))
    assert nonpad_ratio == pytest.approx(packed[2] / unpacked[2],
                                         abs=0.005 + ratio_bound(packed[2], unpacked[2], 1, 1))


@pytest.mark.slow
def test_estimate_accuracy_smoke_error_is_predicted_against_measured(smokes):
    out, out_dir = smoke(smokes, "estimate_accuracy.py")
    (calibration_s,) = line(out, rf"^calibration 1/1: tiny-2x128_r8_bs8_pfalse \.\.\. {NUM} s; load: "
                                 r"(?:idle|contended ×[\d.]+) \(others held [\d.]+ of \d+ cores\)$")
    # the median of the smoke's 2 measurements beside the prediction, their min–max, and their load
    predicted, measured, err, low, high, p10, p90, inside = line(
        out, rf"^tiny-2x128_r16_bs16_pfalse +{NUM} +{NUM} +{NUM} % +{NUM}–{NUM} +{NUM}–{NUM} +(\d)/2 "
        rf"+(?:idle|[12]/2 contended, ×[\d.]+)"
             r" +history: 1 measured")
    # every figure printed and positive; the measured column is the median of the two measurements, their mean
    # (each of the three printed to 0.1 s). Where the figures fall against one another is the benchmark's result,
    # not checked here.
    assert min(calibration_s, predicted, measured, low, high, p10, p90) > 0 and low <= high
    assert measured == pytest.approx((low + high) / 2, abs=0.1 + 1e-9)
    covered, pct, width = line(out, r"^interval coverage: (\d) of 2 measurements inside their predicted P10–P90 "
                                    rf"\((\d+) %; a calibrated .*\), median width P90/P10 ×{NUM} over 1 interval\(s\)$")
    assert covered == inside <= 2 and pct == round(100 * inside / 2)  # one row: its own count, as a share
    assert width == pytest.approx(p90 / p10, abs=0.0051 + ratio_bound(p90, p10, 0.1, 0.1))  # the row's, as printed
    (contended,) = line(out, r"^measurements: 1 calibration run\(s\), 2 per held-out run, (\d) of 2 contended; "
                             r"0 hog\(s\)$")
    row_load = re.search(r" (idle|([12])/2 contended, ×[\d.]+) +history: 1 measured", out)
    assert row_load is not None and contended == (int(row_load[2]) if row_load[2] else 0)  # the row's own count
    held_out = out_dir / "held-out" / "runs" / "tiny-2x128_r16_bs16_pfalse"
    load = json.loads((held_out / "summary.json").read_text())["load"]
    assert load["wall_s"] > 0 and load["contended"] == (load["slowdown"] > 1.15)  # what the row's load read
    bound = 100 * ratio_bound(abs(predicted - measured), measured, 0.2, 0.1)  # both printed to 0.1 s
    assert err == pytest.approx(100 * abs(predicted - measured) / measured, abs=0.051 + bound)
    assert line(out, rf"^median time error: {NUM} %$") == (err,)  # the median of one row


@pytest.mark.slow
@pytest.mark.rehearsal  # fresh interpreters by the dozen: `make test-rehearsals`, outside make test
def test_distributed_smoke_fsdp_holds_half_of_what_ddp_holds(smokes):
    """The table is each run's summary.json, and the shards are what FSDP promises: every byte column of a
    FSDP rank half of the one-process figure (up to the padding of odd first dimensions), DDP's equal to it."""
    out, out_dir = smoke(smokes, "distributed.py")
    runs = {name: json.loads(next((out_dir / name.replace(" ", "_")).glob("runs/*/summary.json")).read_text())
            for name in ("one process", "DDP x2", "FSDP x2")}
    assert [len(s["processes"]) for s in runs.values()] == [1, 2, 2]
    assert len({s["effective_batch_size"] for s in runs.values()}) == 1 and len({s["steps"] for s in runs.values()}) == 1
    assert runs["FSDP x2"]["distributed"] == "fsdp" and runs["DDP x2"]["distributed"] == "ddp"
    for name, s in runs.items():
        for p in s["processes"]:
            frozen, trainable, optim, rss, step = line(
                out, rf"^  {re.escape(name)} +{p['rank']} +{NUM} +{NUM} +{NUM} +{NUM} +{NUM}$")
            assert frozen == pytest.approx(p["frozen_param_bytes"] / 2**20, abs=0.0006)
            assert optim == pytest.approx(p["optimizer_bytes"] / 2**20, abs=0.0006)
            assert rss == pytest.approx(p["peak_rss_bytes"] / 2**20, abs=0.06)
            assert step == pytest.approx(s["tokens"] / s["steps"] / s["tokens_per_s"], abs=0.0006)
    one = runs["one process"]["processes"][0]
    for name, share in (("DDP x2", 1.0), ("FSDP x2", 0.5)):
        for p in runs[name]["processes"]:
            for key in ("frozen_param_bytes", "trainable_param_bytes", "optimizer_bytes"):
                assert p[key] / one[key] == pytest.approx(share, abs=0.01), (name, key)
    (fsdp_frozen,) = line(out, rf"^  FSDP x2 +{NUM} +[\d.]+ +[\d.]+ +[\d.]+ +[\d.]+$")
    assert fsdp_frozen == pytest.approx(runs["FSDP x2"]["processes"][0]["frozen_param_bytes"] / one["frozen_param_bytes"],
                                        abs=0.0006)


@pytest.mark.slow  # two 2-process DDP runs side by side, twice
@pytest.mark.rehearsal  # fresh interpreters by the dozen: `make test-rehearsals`, outside make test
def test_threads_smoke_two_ddp_runs_each_way_and_the_ratio_adds_up(smokes):
    """Two jobs each way, each row its run's summary.json (the last pass, after, is left in --out): after, the
    jobs' shares of the cores are disjoint and add up to this machine's, each rank running its share's threads;
    before, torch's default (torchrun's one thread per rank). The ratio row divides the medians above it."""
    from tunelab.host.cores import physical_cores, usable_cpus
    from tunelab.host.threads import thread_budget

    out, out_dir = smoke(smokes, "threads.py")
    rows = re.findall(rf"^  (before|after) +(tiny_s[12]) +{NUM} +{NUM} +{NUM}  (\S+) x (\d+) on (\d+) cores", out,
                      re.MULTILINE)
    assert sorted((mode, run) for mode, run, *_ in rows) == [("after", "tiny_s1"), ("after", "tiny_s2"),
                                                             ("before", "tiny_s1"), ("before", "tiny_s2")]
    summaries = {p.parent.name: json.loads(p.read_text()) for p in (out_dir / "ddp").glob("runs/*/summary.json")}
    cores = physical_cores(usable_cpus())
    after = [r for r in rows if r[0] == "after"]
    assert sum(int(r[7]) for r in after) == cores and all(r[6] == "2" for r in rows)
    for _mode, run, wall, _cpu, tps, torch, _, given in after:
        t = summaries[run]["threads"]
        assert (t["torch"], t["cores_given"], t["processes"]) == (int(torch), int(given), 2)
        assert t["torch"] == thread_budget(int(given), 2) and "TUNELAB_CPUS" in t["source"]
        assert float(tps) == pytest.approx(summaries[run]["tokens_per_s"], abs=0.06) and float(wall) > 0
    assert all(r[5] == "1" for r in rows if r[0] == "before")  # torchrun's OMP_NUM_THREADS=1 for each rank
    medians = {mode: line(out, rf"^  2 x 2-process DDP +{mode} +{NUM} +{NUM} +{NUM}$") for mode in ("before", "after")}
    ratio = line(out, rf"^  2 x 2-process DDP +ratio +{NUM} +{NUM} +{NUM}$")
    for i, step in enumerate((0.01, 0.01, 0.1)):
        assert ratio[i] == pytest.approx(medians["before"][i] / medians["after"][i],
                                         abs=0.006 + ratio_bound(medians["before"][i], medians["after"][i], step, step))
    assert len(re.findall(r"\d+\.\d+ \d+\.\d+ \d+\.\d+ \d+/\d+", out)) >= 9  # /proc/loadavg with every pass


@pytest.mark.slow  # tiny models built, two sweeps of random adapters evaluated both ways with inspect-ai
def test_eval_sweep_smoke_both_ways_agree_and_the_table_adds_up(smokes):
    """Every sweep: both ways gave each sample the same answer and score; one at a time loads the base once per
    target, the pass once per base model (the demo has two), the adapters once each either way; the ratio row
    divides the figures above it; samples/s is samples over wall seconds."""
    out, _ = smoke(smokes, "eval_sweep.py")
    for name, targets, samples, bases, adapters in (("demo", 6, 36, 2, 4), ("larger", 5, 30, 1, 4)):
        section = out.split(f"\n{name}: {targets} targets, {samples} samples, 1 thread\n", 1)[1].split("\n\n")[0]
        rows = {}
        for way, pass_bases in (("one target at a time", targets), ("one pass", bases)):
            wall, cpu, rate, rss, base_loads, adapter_loads = line(
                section, rf"^\| {way} \| {NUM} \| {NUM} \| {NUM} \| {NUM} \| (\d+) \| (\d+) \|$")
            assert (base_loads, adapter_loads) == (pass_bases, adapters)
            assert rate == pytest.approx(samples / wall, abs=0.005 + ratio_bound(samples, wall, 0, 0.1))
            assert wall > 0 and cpu > 0 and rss > 0
            rows[way] = (wall, cpu, rss)
        (apart, together) = rows.values()
        wall_ratio, cpu_ratio, rss_ratio = line(section, rf"^\| one at a time ÷ one pass \| {NUM} \| {NUM} \| \| {NUM} \| \| \|$")
        assert wall_ratio == pytest.approx(apart[0] / together[0], abs=0.005 + ratio_bound(apart[0], together[0], 0.1, 0.1))
        assert cpu_ratio == pytest.approx(apart[1] / together[1], abs=0.005 + ratio_bound(apart[1], together[1], 0.1, 0.1))
        assert rss_ratio == pytest.approx(apart[2] / together[2], abs=0.005 + ratio_bound(apart[2], together[2], 1, 1))
        assert line(section, rf"^{re.escape(name)}: same answers and scores on (\d+) of (\d+) target × tasks "
                             rf"\((\d+) samples\), every way") == (targets, targets, samples)
        theirs = line(section, rf"^\| one pass, inspect-ai's loop \| {NUM} \| {NUM} \| {NUM} \| {NUM} \| (\d+) \| (\d+) \|$")
        assert theirs[4:] == (bases, adapters)  # the same pass, the built-ins through inspect-ai's loop
        loops = line(section, rf"^\| inspect-ai's loop ÷ tunelab's \| {NUM} \| {NUM} \| \| {NUM} \| \| \|$")
        assert loops[0] == pytest.approx(theirs[0] / together[0], abs=0.005 + ratio_bound(theirs[0], together[0], 0.1, 0.1))
        assert len(re.findall(rf"^{re.escape(name)}: pass  \d+ batches", section, re.MULTILINE)) == bases  # a pass each
    phases = out.split("\ndemo, phase by phase: one pass over 6 targets, ", 1)[1].split("\n\n")[0]
    rows = [tuple(float(v) for v in row) for row in re.findall(rf"^\| (?!total )[a-z][^|]* \| {NUM} \| {NUM} % \| {NUM} \|$", phases,
                                                                re.MULTILINE)]
    wall, cpu = line(phases, rf"^\| total \| {NUM} \| 100 % \| {NUM} \|$")
    # each phase's share is its wall seconds over the total's (printed to 0.01 s and 0.1 %); the sampler's looks
    # end before the total is read, so the phases add up to the total at most (how much of it they cover, and how
    # the time splits, is the benchmark's result)
    assert len(rows) == 14 and wall > 0 and cpu > 0
    for seconds, share, _ in rows:
        assert share == pytest.approx(100 * seconds / wall, abs=0.051 + 100 * ratio_bound(seconds, wall, 0.01, 0.01))
    assert sum(r[0] for r in rows) <= wall + 0.005 * 15 and sum(r[1] for r in rows) <= 100 + 0.05 * 14
    pure, = line(phases, rf"^\| pure generation: HF generate, the same batches \| {NUM} \| \| {NUM} \|$")[:1]
    ratio, _ = line(phases, rf"^\| evaluate_experiment \(from its call\) ÷ pure generation \| {NUM} \| \| {NUM} \|$")
    evaluation, _ = line(phases, rf"^demo phases: evaluation {NUM} s wall, {NUM} CPU s")
    assert ratio == pytest.approx(evaluation / pure, abs=0.005 + ratio_bound(evaluation, pure, 0.01, 0.01))
    assert line(phases, r"; (\d+) batches, ([\d,]+) tokens generated$")[1] > 0
    ours, theirs, loops = line(out, rf"^demo: evaluation with tunelab's loop {NUM} s, with inspect-ai's loop {NUM} s: "
                                    rf"inspect-ai's ÷ tunelab's {NUM}$")
    assert loops == pytest.approx(theirs / ours, abs=0.005 + ratio_bound(theirs, ours, 0.01, 0.01))
    assert ours == evaluation  # the first table is tunelab's loop


# predicted, measured, error ×3, then the total's P10–P90 and whether the measured total is inside it
THREE_FIGURES = r" \| ".join([rf"{NUM} \| {NUM} \| {NUM} %"] * 3) + rf" \| {NUM}–{NUM} \| (?:yes|\*\*no\*\*) \|$"


def _pct(predicted: float, measured: float) -> float:
    return 100 * (predicted - measured) / measured


@pytest.mark.slow  # a tiny model built, 4 shapes probed, 2 × 2 runs trained and evaluated (forked)
def test_deadline_smoke_predicted_and_measured_add_up(smokes):
    """Each row's errors are (predicted − measured) / measured of its printed figures and its totals the sum of
    its parts; a sweep's figures are its runs' sums (the predicted makespan: the forecast on one CPU slot, the
    runs in turn); before ÷ auto divides the printed sweep figures; the effective batch is 16 both ways."""
    out, out_dir = smoke(smokes, "deadline.py")
    sweeps = {}
    for way in ("before", "auto"):
        rows = []
        for run in ("r4", "r16"):
            f = line(out, rf"^\| {way} \| {run} \| [^|]+ \| {THREE_FIGURES}")
            for i in (0, 3, 6):
                assert f[i + 2] == pytest.approx(_pct(f[i], f[i + 1]), abs=0.051), (way, run, i)
            assert f[7] == pytest.approx(f[1] + f[4], abs=0.051)  # measured total: training + evaluation
            assert f[6] == pytest.approx(f[0] + f[3], abs=0.151)  # predicted total: its parts (each rounded)
            assert 0 < f[9] and 0 < f[10]  # the total's P10–P90 printed (where the figures fall: the result)
            rows.append(f)
        s = line(out, rf"^\| {way} \| sweep \(makespan\) \| \| {THREE_FIGURES}")
        for i in (0, 1, 3, 4, 7):
            assert s[i] == pytest.approx(sum(r[i] for r in rows), abs=0.051 * len(rows)), (way, i)
        assert s[6] == pytest.approx(sum(r[6] for r in rows), abs=0.051 * len(rows))  # one slot: runs in turn
        for i in (0, 3, 6):
            assert s[i + 2] == pytest.approx(_pct(s[i], s[i + 1]), abs=0.051), (way, i)
        sweeps[way] = (s[1], s[4], s[7])
        # the makespan against its runs in turn, as this benchmark starts them (one command each: none warm)
        warm, cold, measured, err = line(out, rf"^{way}: the plan's makespan prices {NUM} s of warm job starts .* its "
                                              rf"runs in turn {NUM} s against {NUM} measured, {NUM} %$")
        assert cold == pytest.approx(sum(r[6] for r in rows), abs=0.051 * len(rows)) and measured == s[7]
        assert warm == pytest.approx(cold - s[6], abs=0.051) and err == pytest.approx(_pct(cold, measured), abs=0.051)
    # the coverage line's width: the median P90 / P10 of the 6 intervals printed (4 runs' totals, 2 makespans)
    bands = [tuple(map(float, b))
             for b in re.findall(r"\| ([\d.]+)–([\d.]+) \| (?:yes|\*\*no\*\*) \|$", out, re.MULTILINE)]
    (width,) = line(out, rf"^interval coverage: \d of 6 measured totals .*, median width P90/P10 ×{NUM} over 6 interval")
    assert len(bands) == 6
    ratios_printed = sorted(high / low for low, high in bands)
    assert width == pytest.approx((ratios_printed[2] + ratios_printed[3]) / 2,
                                  abs=0.0051 + max(ratio_bound(h, lo, 0.1, 0.1) for lo, h in bands))
    ratios = line(out, rf"^measured before ÷ auto: training {NUM}, evaluation {NUM}, makespan {NUM}$")
    for ratio, b, a in zip(ratios, sweeps["before"], sweeps["auto"]):
        assert ratio == pytest.approx(b / a, abs=0.0051)
    split = r": micro-batch × accumulation = effective batch (\d+) × (\d+) = (\d+) \(checkpointing "
    before, auto = line(out, rf"^before{split}on"), line(out, rf"^auto{split}off")
    assert before == (1, 16, 16) and auto[2] == 16 and auto[0] * auto[1] == 16
    for way in ("before", "auto"):  # what the jobs trained with, from their summary.json
        assert line(out, rf"^{way}: micro-batch .*; summary.json effective_batch_size \[(\d+)\]$") == (16,)
    for run in ("r4", "r16"):
        lb, la, diff = line(out, rf"^  {run}: before {NUM}, auto {NUM}, auto − before {NUM}$")
        assert diff == pytest.approx(la - lb, abs=0.00011)
    assert len(list((out_dir / "auto" / "runs").glob("*/eval/*/*/scores.json"))) == 2


def _last_val_loss(run_dir: Path) -> float:
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    return [r["val_loss"] for r in rows if r.get("val_loss") is not None][-1]


@pytest.mark.slow  # 6 tiny runs forked, 4 trials through the local executor (each a fresh interpreter)
@pytest.mark.rehearsal  # fresh interpreters by the dozen: `make test-rehearsals`, outside make test
def test_tuning_smoke_tables_agree_with_the_trials_and_runs(smokes):
    """The rate sweep's losses are its runs' own last validation losses and the default is the rate where the
    ranks' regrets differ most; the tuned rates are tune/best.json's and their losses the tuned runs'; the search
    row counts the trial directories (pruned.json, status.json steps, run.yaml budgets) and the journal agrees."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    out, out_dir = smoke(smokes, "tuning.py")
    sweep = {rate: line(out, rf"^\| {rate} \| {NUM} \| {NUM} \|$") for rate in ("0.001", "0.03")}
    for rate, losses in sweep.items():
        for rank, loss in zip((4, 64), losses):
            assert loss == pytest.approx(_last_val_loss(out_dir / "sweep" / "runs" / f"r{rank}-lr{rate}"), abs=5e-5)
    best = [min(v[i] for v in sweep.values()) for i in (0, 1)]
    gap = {rate: abs((v[0] - best[0]) - (v[1] - best[1])) for rate, v in sweep.items()}
    (default,) = line(out, rf"^Default learning rate chosen: {NUM} — ")
    assert gap[f"{default:g}"] == pytest.approx(max(gap.values()), abs=2e-4)
    row = line(out, rf"^\| default lr \| {NUM}, {NUM} \| {NUM}, {NUM} \| rank (\d+) \|$")
    assert row[0] == row[2] == default and (row[1], row[3]) == sweep[f"{default:g}"]
    rates = json.loads((out_dir / "tuned" / "tune" / "best.json").read_text())
    tuned = line(out, rf"^\| tuned lr \| {NUM}, {NUM} \| {NUM}, {NUM} \| rank (\d+) \|$")
    for i, rank in enumerate((4, 64)):
        assert tuned[2 * i] == pytest.approx(rates[f"lora_rank-{rank}"]["learning_rate"], rel=5e-3)
        assert tuned[2 * i + 1] == pytest.approx(_last_val_loss(out_dir / "tuned" / "whole" / f"tuned-r{rank}"),
                                                 abs=5e-5)
    assert row[4] == (4 if row[1] < row[3] else 64) and tuned[4] == (4 if tuned[1] < tuned[3] else 64)
    assert f"Ranking changed: {'no' if row[4] == tuned[4] else 'yes'}" in out
    trials = sorted((out_dir / "tuned" / "tune").glob("*/trial-*"))
    steps = sum(json.loads((t / "status.json").read_text())["step"] for t in trials)
    budget = sum(yaml.safe_load((t / "run.yaml").read_text())["training"]["max_steps"] for t in trials)
    pruned = sum((t / "pruned.json").is_file() for t in trials)
    n, p, trained, of, wall, price, low, high = line(
        out, rf"^\| successive halving \| (\d+) \| (\d+) \| (\d+) / (\d+) \| {NUM} \| {NUM} \({NUM}–{NUM}\) \|$")
    assert (n, p, trained, of) == (len(trials), pruned, steps, budget) and n == 4 and wall > 0
    assert min(price, low, high) > 0  # the search's priced time and its interval, printed
    storage = JournalStorage(JournalFileBackend(str(out_dir / "tuned" / "tune" / "journal.log")))
    states = [t.state for s in optuna.get_all_study_summaries(storage) for t in
              optuna.load_study(study_name=s.study_name, storage=storage).get_trials()]
    assert len(states) == n and sum(s == optuna.trial.TrialState.PRUNED for s in states) == pruned
    left, pace, saved = line(out, rf"^Pruner saved \(estimate: steps not trained × measured step time\): (\d+) "
                                  rf"steps × {NUM} s = {NUM} s;")
    assert left == budget - steps and saved == pytest.approx(left * pace, abs=0.051 + left * 0.0005)


PEER_SAMPLES = BENCH / "peerlib" / "samples"
# each peer's loss log as a plain reader sees it: (file in its sample, a line's loss pattern)
PEER_LOSSES = {"torchtune": ("logs/metrics.txt", r"^Step \d+ \| loss:([0-9.]+)"),
               "llamafactory": ("lf_out/trainer_log.jsonl", r'"loss": ([0-9.]+)'),
               "axolotl": ("output.log", r"^\{'loss': '([0-9.]+)'"),
               "oumi": ("output.log", r"^\{'loss': '([0-9.]+)'")}


def test_peers_smoke_counts_tunelab_tokens_one_way_and_parses_every_peer_sample(smokes):
    stdout, out = smoke(smokes, "peers.py")
    # tunelab's side trained for real: 160 words, 128 training rows, micro-batch 8: 16 steps, each line timed
    (steps_file,) = (out / "runs").rglob("tunelab/0/steps.json")
    times = json.loads(steps_file.read_text())["step_times"]
    assert len(times) == 16 and times == sorted(times)
    # the one tokens/s count, by hand: the tiny tokenizer is one token per byte plus one per special token; a row
    # is <|bos|><|system|>You capitalize words.<|eot|><|user|>Capitalize the word: WORD<|eot|><|assistant|>Word<|eot|>
    per_row = 7 + len("You capitalize words.") + len("Capitalize the word: ") + 5 + 5
    assert per_row == 59 <= 64  # under max_seq_len: nothing cut
    expected = 128 * per_row * (16 - 2) / 16 / (times[-1] - times[1])  # the first two steps are warm-up
    (printed,) = line(stdout, rf"tunelab: wall {NUM} s, first step [\d.]+ s, {NUM} tok/s")[1:]
    assert abs(printed - expected) <= 0.5 + 1e-6 * expected
    # `scaffold` runs inside the timed command, before the first step's line (issue 66: the clock from the first
    # command a user types); memory as the tree's PSS, which never exceeds the summed RSS printed beside it
    (log_file,) = (out / "runs").rglob("tunelab/0/output.log")
    lines = log_file.read_text().splitlines()  # a cold first plan's progress lines may come first (stderr)
    scaffolded = next(i for i, x in enumerate(lines) if x.startswith("scaffolded 1 runs"))
    assert not any(x.startswith("[tunelab train]") for x in lines[:scaffolded])
    pss, training_pss, rss = line(stdout, rf"tunelab: .* peak PSS {NUM} MiB \(training {NUM}; summed RSS {NUM}\)")
    assert 0 < training_pss <= pss <= rss
    # every peer's parser against its committed real output, read here with a plain pattern
    for peer, (name, pattern) in PEER_LOSSES.items():
        losses = [float(v) for v in re.findall(pattern, (PEER_SAMPLES / peer / name).read_text(), re.MULTILINE)]
        count, first, last = line(stdout, rf"^{peer}: sample parsed: {NUM} steps, loss {NUM} -> {NUM}")
        assert count == len(losses) > 0, peer
        assert abs(first - losses[0]) <= 5e-4 and abs(last - losses[-1]) <= 5e-4, peer
    # the evaluation peers' answers, and oumi tune's trials against its CSV
    for peer in ("lm-eval", "inspect-hf"):
        targets = sorted(p.name for p in (PEER_SAMPLES / peer).iterdir() if p.is_dir())
        assert len(re.findall(rf"^{peer}: sample parsed: (\S+): \d+ answers", stdout, re.MULTILINE)) == len(targets)
    trials = (PEER_SAMPLES / "oumi_tune" / "oumi_tune" / "trials_results.csv").read_text().strip().splitlines()[1:]
    assert line(stdout, rf"^oumi_tune: sample parsed: {NUM} trials")[0] == len(trials)
    # the whole sweep's lines lead (issue 66): the committed run's own closing lines, before any component's line
    committed = json.loads((BENCH / "results" / "sweep-peers-2026-11-27" / "sweep.json").read_text())["lines"]
    ratios = [f"committed: {x}" for x in committed if x.startswith("sweep: tunelab ÷")]
    printed = stdout.splitlines()
    assert ratios and all(x in printed for x in ratios)
    assert max(printed.index(x) for x in ratios) < min(i for i, x in enumerate(printed) if "sample parsed" in x)


def test_gpu_speed_fit_smoke_summary_is_its_rows(smokes):
    """The leave-one-out table of the committed H100 rows: nine rows per form, and each form's summary line (median
    and largest |error|, rows within 25 %, rows inside their interval) recomputed from its own printed rows."""
    out, _ = smoke(smokes, "gpu_speed_fit.py")
    assert re.search(r"^H100-80GB: 9 rows measured 2026-11-26", out, re.MULTILINE)
    forms = out.split("fitted on all 9")[1:]
    assert len(forms) == 2  # √(F² + G²) and F + G
    for form in forms:
        rows = re.findall(r"^\| [\w-]+ \| [\d,]+ \| [\d,]+ \| [\d,]+ \| ([+-][\d.]+) % \| (yes|no) \|", form,
                          re.MULTILINE)
        assert len(rows) == 9
        errors = sorted(abs(float(e)) for e, _ in rows)
        median, largest = line(form, rf"median \|error\| {NUM} %, largest [+-]?{NUM} %")
        assert median == pytest.approx(errors[4], abs=0.051) and largest == pytest.approx(errors[-1], abs=0.051)
        within, inside = line(form, rf"^tokens/s error .* {NUM} of 9 within 25 %.*; {NUM} of 9 inside")
        assert within == sum(e <= 25 for e in errors) and inside == sum(i == "yes" for _, i in rows)


@pytest.mark.rehearsal  # SmolLM2 built, evaluated in two fresh processes (~25 s): outside make test
def test_eval_pass_ab_smoke_one_tree_answers_alike_and_the_ratio_is_its_medians(smokes):
    """This tree against itself (2 processes: the base and 2 adapters × 4 long-tailed prompts, SmolLM2): every answer
    equal to the first process's, each median the middle of its printed seconds, and the ratio theirs."""
    out, _ = smoke(smokes, "eval_pass_ab.py")
    rows = re.findall(rf"^\S+/src: \[(.+)\] s \(median {NUM}\), (\d+) batches, answers equal to the first tree's: "
                      r"(\d+)/(\d+)", out, re.MULTILINE)
    assert len(rows) == 2, out
    medians = []
    for seconds, median, batches, same, total in rows:
        values = sorted(float(x) for x in seconds.split(","))
        assert len(values) == 1 and float(median) == pytest.approx(values[0], abs=0.006)
        assert int(total) == 12 and int(same) == 12 and int(batches) >= 3  # 3 targets' rows, no batch mixes them
        medians.append(float(median))
    (ratio,) = line(out, rf"^first ÷ last: {NUM}x \(medians\)")
    assert ratio == pytest.approx(medians[0] / medians[1], abs=ratio_bound(*medians, 0.01, 0.01) + 0.005)
