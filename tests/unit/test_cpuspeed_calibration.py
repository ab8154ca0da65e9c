"""How much a first plan times on a CPU (forecast/cpuspeed.py): a run's micro-batch past CALIBRATION_TOKENS is timed
at rows of its length, as many as fit (or one row cut to the cap), once for every thread count the plan prices
together, on one model built once, and once for every LoRA rank; the run's own shape and rank are priced from that
timing by FLOPs per token. The timed steps' times are given (the model is still built, warmed up, run forward and
saved for real: a tiny one); the sizes, the counts and the prices are checked against hand computations."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tunelab.forecast import cpuspeed, planscope, step_rounds
from tunelab.rundir.config import RunConfig

STEP_S = 0.01  # every timed step, as given


@pytest.fixture
def timing(tmp_path, monkeypatch) -> dict[str, list]:
    """Fresh cache and history; each model build's micro-batch (rows, tokens) and each round's steps recorded, every
    round's steps STEP_S with no load read (one round a count)."""
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(cpuspeed, "CALIBRATION_TOKENS", 128)
    seen: dict[str, list] = {"builds": [], "rounds": []}
    real_build = cpuspeed._build

    def build(cfg, batch, seq):
        seen["builds"].append((batch, seq))
        return real_build(cfg, batch, seq)

    def round_of(step):
        seen["rounds"].append(step)
        return step_rounds.Round([STEP_S] * 3, None)

    monkeypatch.setattr(cpuspeed, "_build", build)
    monkeypatch.setattr(cpuspeed, "timed_round", round_of)
    return seen


def _cfg(root: Path, model: Path, rank: int, batch: int, seq: int, **training) -> RunConfig:
    return RunConfig(name=f"r{rank}", kind="finetune", experiment="x", experiment_dir=str(root),
                     model={"name": "tiny", "path": str(model)}, dataset={"name": "d", "path": str(root / "d.json")},
                     prompt="{input}", training={"batch_size": batch, "max_seq_len": seq, "lora_rank": rank, **training})


def _train_flops_per_token(vocab: int, seq: int, rank: int) -> float:
    """The tiny Llama (2 layers, hidden 128, 2 heads of 64, MLP 512, untied) by hand: N = 2 × 128 × vocab embeddings
    + 2 layers × (4 × 128² attention + 3 × 128 × 512 MLP + 256 norms) + 128; LoRA on all 7 linears of a layer,
    rank × (in + out) = rank × (4 × 256 + 3 × 640) = 2944 × rank a layer; a step 4N + attention 3 × 4 × 2 layers
    × seq × 128 / 2, + 6 per adapter parameter."""
    n = 2 * 128 * vocab + 2 * (4 * 128 * 128 + 3 * 128 * 512 + 256) + 128
    return 4 * n + 1536 * seq + 6 * 2 * 2944 * rank


def _entries(tmp_path: Path) -> list[dict]:
    return [json.loads(p.read_text())["value"] for p in sorted((tmp_path / "cache" / "cpu-step").glob("*.json"))]


def test_a_micro_batch_past_the_cap_is_timed_at_rows_that_fit_once_for_every_count_and_rank(
        timing, tmp_path, tiny_model):
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    run = _cfg(tmp_path, tiny_model, 4, 8, 64, validation_every_steps=5)  # 8 × 64: past the cap of 128; validates
    with planscope.priced_together((1, 2)):
        one = cpuspeed.timed_cpu_speed(run, 8 * 64, 1)
        two = cpuspeed.timed_cpu_speed(run, 8 * 64, 2)
    assert timing["builds"] == [(2, 64)]  # rows of its 64 tokens, 128 // 64 of them; one model for both counts
    assert len(timing["rounds"]) == 2  # one round a count, the second timed right after the first on that model
    entries = _entries(tmp_path)
    assert len(entries) == 2 and {e["lora_rank"] for e in entries} == {4}
    assert one.tokens_per_s == two.tokens_per_s == pytest.approx(2 * 64 / STEP_S)  # its own length and rank
    kept = next(e for e in entries if e["forward_s"] * 4 == pytest.approx(one.forward_s))  # the run's 512 of 128
    assert kept["steps"] == 3
    assert "2 × 64 tokens" in one.source and "this run's 8 × 64 at rank 4" in one.source

    other = cpuspeed.timed_cpu_speed(_cfg(tmp_path, tiny_model, 16, 8, 64), 8 * 64, 1)  # another rank: not timed
    assert len(timing["builds"]) == 1 and len(timing["rounds"]) == 2
    ratio = _train_flops_per_token(vocab, 64, 16) / _train_flops_per_token(vocab, 64, 4)
    assert other.tokens_per_s == pytest.approx(2 * 64 / STEP_S / ratio, rel=1e-9)
    assert "rank 16 priced from it" in other.source


def test_the_model_is_warmed_up_once_not_once_a_thread_count(timing, tmp_path, tiny_model, monkeypatch):
    """The untimed warm-up step runs before the first count's rounds only: the second count, timed right after on the
    same model, starts timing at once (its first step is as fast as its next; a SmolLM2 step at 1 thread is 3 s)."""
    steps, rounds_at = [], []
    real = cpuspeed.kept_logits_inputs
    monkeypatch.setattr(cpuspeed, "kept_logits_inputs", lambda labels: steps.append(1) or real(labels))

    def round_of(step):
        rounds_at.append(len(steps))  # the steps run before this round: the warm-ups so far
        timing["rounds"].append(step)
        return step_rounds.Round([STEP_S] * 3, None)

    monkeypatch.setattr(cpuspeed, "timed_round", round_of)
    with planscope.priced_together((2, 1)):
        cpuspeed.timed_cpu_speed(_cfg(tmp_path, tiny_model, 4, 4, 32), 4 * 32, 2)
    assert rounds_at == [1, 1]  # one warm-up, before the first count's round; none before the second's


def test_a_row_longer_than_the_cap_is_timed_cut_to_it_and_priced_up_by_its_attention(timing, tmp_path, tiny_model):
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    speed = cpuspeed.timed_cpu_speed(_cfg(tmp_path, tiny_model, 4, 1, 256), 256, 1)
    assert timing["builds"] == [(1, 128)] and len(timing["rounds"]) == 1  # no counts priced together: this one
    ratio = _train_flops_per_token(vocab, 256, 4) / _train_flops_per_token(vocab, 128, 4)
    assert speed.tokens_per_s == pytest.approx(128 / STEP_S / ratio, rel=1e-9)


def test_a_micro_batch_within_the_cap_is_timed_as_it_is(timing, tmp_path, tiny_model):
    speed = cpuspeed.timed_cpu_speed(_cfg(tmp_path, tiny_model, 4, 4, 32), 4 * 32, 1)
    assert timing["builds"] == [(4, 32)]
    assert speed.tokens_per_s == pytest.approx(4 * 32 / STEP_S) and "priced from it" not in speed.source


def test_a_contended_round_of_slow_steps_is_not_timed_again_past_the_budget(timing, tmp_path, tiny_model,
                                                                            monkeypatch):
    """Rounds are timed again while contended only within RETIME_BUDGET_S: steps of 4 s (a real model's on a loaded
    CPU) give one round of 12 s, corrected by its slowdown (others held 1 of 2 cores: ×2); steps of 10 ms, three."""
    from tunelab.host.cpuload import LoadWindow

    def contended(step_s: float):
        window = LoadWindow(wall_s=3 * step_s, cpu_s=3 * step_s, others_cpu_s=3 * step_s, cores=2, threads=2)
        return lambda step: timing["rounds"].append(step) or step_rounds.Round([step_s] * 3, window)

    monkeypatch.setattr(cpuspeed, "timed_round", contended(4.0))
    slow = cpuspeed.timed_cpu_speed(_cfg(tmp_path, tiny_model, 4, 4, 32), 4 * 32, 1)
    assert len(timing["rounds"]) == 1 and slow.tokens_per_s == pytest.approx(4 * 32 / 4.0 * 2)
    monkeypatch.setattr(cpuspeed, "timed_round", contended(STEP_S))
    cpuspeed.timed_cpu_speed(_cfg(tmp_path, tiny_model, 4, 4, 16), 4 * 16, 1)  # another shape: timed anew
    assert len(timing["rounds"]) == 1 + 1 + step_rounds.MORE_ROUNDS


def test_a_contended_timing_is_kept_by_the_plan_that_took_it_past_its_minutes(monkeypatch):
    """A plan whose own timings outlast CONTENDED_KEEP_S (a loaded machine) keeps what it timed; outside a plan, and
    for a timing taken before the plan, the minutes alone decide."""
    now = [1000.0]
    monkeypatch.setattr(cpuspeed.time, "time", lambda: now[0])
    with planscope.one_plan():  # the plan starts at 1000 s
        now[0] = 1000.0 + planscope.CONTENDED_KEEP_S + 50  # its timing at 1010 s is older than the minutes now
        assert planscope.still_fresh(1010.0) and not planscope.still_fresh(990.0)
    assert not planscope.still_fresh(1010.0)


def test_the_calibration_loss_reads_the_share_of_logits_the_job_will_and_another_share_is_priced(
        timing, tmp_path, tiny_model, monkeypatch):
    """A run whose loss keeps a quarter of the positions (answers only) is timed with a quarter of the calibration's
    positions labelled: its warm-up step really keeps those logits (models/loss_positions.py, as the job's loss). A
    run of the same shape whose loss reads every position is not timed again: priced from it by the LM head's FLOPs
    at the positions the quarter dropped (4 × hidden × vocabulary each), worked out here by hand."""
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    kept_seen = []
    real = cpuspeed.kept_logits_inputs
    monkeypatch.setattr(cpuspeed, "kept_logits_inputs",
                        lambda labels: kept_seen.append(got := real(labels)) or got)
    run = _cfg(tmp_path, tiny_model, 4, 4, 32)
    quarter = cpuspeed.timed_cpu_speed(run, 4 * 32, 1, kept=0.25)
    assert [g["logits_to_keep"].numel() for g in kept_seen] == [8]  # the warm-up step: 8 of 32 positions
    assert quarter.tokens_per_s == pytest.approx(4 * 32 / STEP_S)
    assert "the loss on 25% of the positions" in quarter.source and "priced from it" not in quarter.source
    every = cpuspeed.timed_cpu_speed(run, 4 * 32, 1)
    assert len(timing["builds"]) == 1 and len(kept_seen) == 1  # not timed again
    head = 4 * 128 * vocab  # the tiny Llama's LM head per position, forward and input gradient
    ratio = _train_flops_per_token(vocab, 32, 4) / (_train_flops_per_token(vocab, 32, 4) - head * 0.75)
    assert every.tokens_per_s == pytest.approx(4 * 32 / STEP_S / ratio, rel=1e-9)
    assert "priced from it" in every.source and [e["kept"] for e in _entries(tmp_path)] == [0.25]


def test_a_validating_runs_forward_reads_the_kept_logits_and_another_share_is_priced(
        timing, tmp_path, tiny_model, monkeypatch):
    """A run that validates has a forward timed beside its step, its loss on the same quarter of the positions (TRL's
    validation of a loss keeps only those logits, as training does: tests/e2e/test_cpu_loss.py); a run whose loss reads
    every position has that forward priced by the LM head at the rest (2 × hidden × vocabulary each), by hand."""
    vocab = json.loads((tiny_model / "config.json").read_text())["vocab_size"]
    kept_seen = []
    real = cpuspeed.kept_logits_inputs
    monkeypatch.setattr(cpuspeed, "kept_logits_inputs",
                        lambda labels: kept_seen.append(got := real(labels)) or got)
    run = _cfg(tmp_path, tiny_model, 4, 4, 32, validation_every_steps=5)
    quarter = cpuspeed.timed_cpu_speed(run, 4 * 32, 1, kept=0.25)
    assert [g["logits_to_keep"].numel() for g in kept_seen] == [8] * (1 + step_rounds.MIN_STEPS + 1)  # warm-up, forwards
    every = cpuspeed.timed_cpu_speed(run, 4 * 32, 1)
    assert len(timing["builds"]) == 1  # not timed again
    n = 2 * 128 * vocab + 2 * (4 * 128 * 128 + 3 * 128 * 512 + 256) + 128  # as _train_flops_per_token
    lora = 2 * 2944 * 4

    def forward(kept: float) -> float:
        return 2 * n + 4 * 2 * 32 * 2 * 64 / 2 + 2 * lora - 2 * 128 * vocab * (1 - kept)

    assert quarter.forward_s is not None and every.forward_s is not None
    assert every.forward_s == pytest.approx(quarter.forward_s * forward(1.0) / forward(0.25), rel=1e-9)


@pytest.mark.parametrize("kept, seq, count", [(0.25, 32, 8), (0.01, 32, 1), (0.99, 32, 32), (0.5, 9, 4)])
def test_calibration_labels_mark_that_many_positions_never_the_first(kept, seq, count):
    import torch

    from tunelab.models.loss_positions import calibration_labels

    ids = torch.arange(2 * seq).reshape(2, seq)
    labels = calibration_labels(ids, kept)
    marked = (labels != -100)
    if count >= seq - 1:
        assert torch.equal(labels, ids)
        return
    assert marked.sum(dim=1).tolist() == [count, count] and not marked[:, 0].any()
    assert torch.equal(labels[marked], ids[marked])


def test_a_forward_is_timed_only_for_a_run_that_validates_and_then_serves_both(timing, tmp_path, tiny_model):
    """A validation's unit (a forward without gradients) is a quarter of a cold plan's timing: a run without
    validations gets none timed; a run of the same shape that validates times the shape again, forward too; that
    entry serves a run that does not validate afterwards."""
    quiet = cpuspeed.timed_cpu_speed(_cfg(tmp_path, tiny_model, 4, 4, 32), 4 * 32, 1)
    (entry,) = _entries(tmp_path)
    assert "forward_s" not in entry and quiet.forward_s is None and entry["save_s"] > 0
    validating = cpuspeed.timed_cpu_speed(_cfg(tmp_path, tiny_model, 4, 4, 32, validation_every_steps=5), 4 * 32, 1)
    (entry,) = _entries(tmp_path)
    assert len(timing["builds"]) == 2 and entry["forward_s"] > 0
    assert validating.forward_s == pytest.approx(entry["forward_s"])
    cpuspeed.timed_cpu_speed(_cfg(tmp_path, tiny_model, 4, 4, 32), 4 * 32, 1)
    assert len(timing["builds"]) == 2  # kept: a forward more than this run asks for


@pytest.mark.parametrize("kernel", ["aten", "onednn"])
def test_the_timed_model_runs_the_jobs_linear_kernel_and_says_so(timing, tmp_path, tiny_model, monkeypatch, kernel):
    """The plan times the step with the linear layers the job will run (models/cpu_linear.py), installed before the
    LoRA as the job installs it; the kernel is in the kept timing and the source, and a timing kept for one kernel
    is not read for the other."""
    from tunelab.models.cpu_linear import installed

    built = []
    real_build = cpuspeed._build

    def build(cfg, batch, seq):
        built.append(real_build(cfg, batch, seq))
        return built[-1]

    monkeypatch.setattr(cpuspeed, "_build", build)
    monkeypatch.setenv("TUNELAB_CPU_MATMUL", kernel)
    speed = cpuspeed.timed_cpu_speed(_cfg(tmp_path, tiny_model, 4, 2, 32), 2 * 32, 1)
    (model, _, _), = built
    base = {n: m for n, m in model.named_modules() if n.endswith("q_proj.base_layer")}
    lora = {n: m for n, m in model.named_modules() if n.endswith("q_proj.lora_A.default")}
    assert base and lora
    assert all(installed(m) == (kernel == "onednn") for m in base.values())
    assert not any(installed(m) for m in lora.values())  # the LoRA came after, as in the job
    (entry,) = _entries(tmp_path)
    assert entry["linear"] == kernel
    assert ("linear layers by oneDNN" in speed.source) == (kernel == "onednn")
    other = "aten" if kernel == "onednn" else "onednn"
    monkeypatch.setenv("TUNELAB_CPU_MATMUL", other)
    cpuspeed.timed_cpu_speed(_cfg(tmp_path, tiny_model, 4, 2, 32), 2 * 32, 1)
    assert len(built) == 2 and sorted(e["linear"] for e in _entries(tmp_path)) == ["aten", "onednn"]


@pytest.mark.parametrize("step_s, expected", [(0.05, 20), (0.4, 3), (0.9, 3), (1.0, 2), (2.5, 2), (0.001, 64)])
def test_a_round_takes_fewer_steps_only_where_they_take_seconds(step_s, expected):
    """timed_round's rule on steps of a given length (the step function injected, no clock): MIN_STEPS and TIME_BUDGET_S
    for short steps, LONG_STEPS once they took LONG_ROUND_S together, never past 64."""
    taken: list[float] = []

    def step() -> float:
        taken.append(step_s)
        return step_s

    step_rounds.timed_round(step)
    assert len(taken) == expected


def test_rounds_whose_medians_agree_settle_the_figure_however_far_a_step_strays():
    """another_round on injected rounds: a round past SPREAD_LIMIT is timed again; a second whose median is within
    MEDIANS_AGREE of the first's ends it (both uncontended), one further off does not; a contended round never
    settles it; MORE_ROUNDS and RETIME_BUDGET_S still bound it."""
    from tunelab.host.cpuload import LoadWindow

    def rnd(median_ms: float, spread: float = 0.5, window: LoadWindow | None = None):
        m = median_ms / 1e3
        return step_rounds.Round([m, m, m * (1 + spread)], window)  # slowest/fastest − 1 = spread

    steady = rnd(100, spread=0.1)
    assert not steady.disagrees and not step_rounds.another_round([steady])
    first = rnd(100)
    assert first.disagrees and step_rounds.another_round([first])
    near = 100 * (1 + step_rounds.MEDIANS_AGREE) - 0.5
    far = 100 * (1 + step_rounds.MEDIANS_AGREE) + 0.5
    assert not step_rounds.another_round([first, rnd(near)])
    assert step_rounds.another_round([first, rnd(far)])
    busy = LoadWindow(wall_s=0.3, cpu_s=0.3, others_cpu_s=0.3, cores=2, threads=2)
    assert step_rounds.another_round([first, rnd(100, window=busy)])  # the last contended: its median says little
    assert step_rounds.another_round([rnd(100, window=busy), rnd(100)])  # nothing uncontended to agree with
    rounds = [rnd(100 * 1.5 ** i) for i in range(step_rounds.MORE_ROUNDS + 1)]  # never agreeing: the cap ends it
    assert not step_rounds.another_round(rounds) and step_rounds.another_round(rounds[:-1])
    slow = [rnd(step_rounds.RETIME_BUDGET_S / 3 * 1e3)]  # a round of seconds-long steps spends the budget
    assert not step_rounds.another_round(slow)
