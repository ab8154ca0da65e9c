"""How the micro-batch split lever ranks splits priced from measured step costs: a split is priced from the
history rows that timed its micro-batch, one none timed is said to be extrapolated, one below all they timed never
ranks above one priced from timed rows, and predictions within TIE_FRACTION of each other are a tie the larger
micro-batch takes (the deadline benchmark saw the lever flip between 16 × 1 and 4 × 4 on noise, and price the 4 × 4
carried down from 16–32 25 % low). The rankings are checked on injected predicted times; the pricing on rows set
here, by hand."""

from __future__ import annotations

from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from tunelab.catalog import resolve_architecture
from tunelab.forecast.levers import explicit_fields
from tunelab.forecast.runs import RunTime
from tunelab.forecast.speedhistory import covers, predicted_step_s, speed_from_history, timed_micro_batches
from tunelab.forecast.split import TIE_FRACTION, Costs, choose_split
from tunelab.ledger.history import HistoryRun
from tunelab.plan.planner import make_plan, measure_lengths
from tunelab.rundir.config import RunConfig

SOURCE = "history: 1 probed run(s) of this model on cpu (fixed + per-token step cost)"


@pytest.fixture(autouse=True)
def fresh_history(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HISTORY", str(tmp_path / "history.db"))


@dataclass(frozen=True)
class Injected(Costs):
    """Costs whose predicted times and fits are set by the test: {micro-batch: (seconds, priced from timed rows)}."""

    table: dict[int, tuple[float, bool]] | None = None
    fitting: int = 10**6  # the largest micro-batch that fits

    def time(self, cfg: RunConfig) -> RunTime:
        assert cfg.training is not None and self.table is not None
        seconds, timed = self.table[cfg.training.batch_size]
        return RunTime(steps=20, tokens_per_epoch=1, train_tokens=1.0, tokens_per_microbatch=1, tokens_per_s=1.0,
                       seconds=seconds, startup_s=1.0, source=SOURCE, processes=1, below_timed=not timed)

    def peak(self, cfg: RunConfig):
        assert cfg.training is not None
        return SimpleNamespace(required_gib=float(cfg.training.batch_size))  # a peak in proportion to the micro-batch

    def fits(self, figure) -> bool:
        return figure.required_gib <= self.fitting


def _cfg(tmp_path, spec_in):
    import yaml

    path = spec_in(tmp_path / "exp")
    spec = yaml.safe_load(path.read_text())
    spec["factors"] = {}
    spec["training"] = {k: v for k, v in spec["training"].items() if k != "batch_size"} | {"effective_batch": 16}
    path.write_text(yaml.safe_dump(spec, sort_keys=False))
    plan = make_plan(path, estimates=False)
    return plan.finetune_runs[0], explicit_fields(plan.spec, plan.finetune_runs[0])


def _choose(cfg, explicit, table, fitting=10**6):
    chosen, choices = choose_split(cfg, Injected(None, [], measure_lengths, table=table, fitting=fitting), 16,
                                   explicit)
    t = chosen.training
    return (t.batch_size, t.gradient_accumulation_steps), choices[0].why


@pytest.mark.parametrize("times,expected", [
    ({16: 10.0, 8: 9.7, 4: 9.0, 2: 12.0, 1: 15.0}, 4),   # 4 × 4 more than 5 % faster than the rest: it wins
    ({16: 10.0, 8: 9.6, 4: 11.0, 2: 12.0, 1: 15.0}, 16),  # 8 × 2 faster by under 5 %: a tie, 16 × 1 takes it
    ({16: 10.0, 8: 9.4, 4: 11.0, 2: 12.0, 1: 15.0}, 8),   # by over 5 %: 8 × 2
])
def test_predictions_within_the_tie_go_to_the_larger_micro_batch(tmp_path, spec_in, times, expected):
    cfg, explicit = _cfg(tmp_path, spec_in)
    table = {m: (s, True) for m, s in times.items()}
    best = min(times, key=lambda m: times[m])
    by_rule = max(m for m, s in times.items() if s <= times[best] * (1 + TIE_FRACTION))
    assert by_rule == expected  # the table means what its comment says
    (micro, accumulation), why = _choose(cfg, explicit, table)
    assert (micro, accumulation) == (expected, 16 // expected)
    assert ("a tie the larger micro-batch takes" in why) == (expected != best)
    if expected != best:
        assert why.startswith("fastest predicted split") and f"{best} × {16 // best} predicted" in why


def test_a_split_carried_below_what_was_timed_never_ranks_above_a_timed_one(tmp_path, spec_in):
    """1 × 16 and 4 × 4 priced far below 16 × 1, but only by carrying a step cost down from larger micro-batches:
    the timed 16 × 1 wins and the lever says which micro-batches were set aside and how to time them. With
    nothing timed, the fastest is taken."""
    cfg, explicit = _cfg(tmp_path, spec_in)
    table = {16: (10.0, True), 8: (9.9, True), 4: (6.0, False), 2: (7.0, False), 1: (5.0, False)}
    (micro, _), why = _choose(cfg, explicit, table)
    assert micro == 16
    assert "micro-batch 1, 2, 4 below what any row timed" in why and "`tunelab probe`" in why
    untimed = {m: (s, False) for m, (s, _) in table.items()}
    assert _choose(cfg, explicit, untimed)[0] == (1, 16)  # the fastest, as before: nothing timed tells them apart


def test_a_faster_split_that_does_not_fit_is_not_called_a_tie(tmp_path, spec_in):
    cfg, explicit = _cfg(tmp_path, spec_in)
    table = {16: (9.0, True), 8: (9.3, True), 4: (9.25, True), 2: (12.0, True), 1: (15.0, True)}
    (micro, _), why = _choose(cfg, explicit, table, fitting=8)  # 16 × 1, the fastest, does not fit
    assert micro == 8  # the tie of 8 and 4 (both within 5 % of 9.0) goes to 8
    assert "4 × 4 predicted" in why and "16 × 1" not in why


def _row(batch: int, origin: str, fixed_s: float, per_token_s: float, tiny_model) -> HistoryRun:
    """A row of an optimizer step of 16 examples of 27 tokens, split batch × 16 / batch."""
    a = resolve_architecture(tiny_model)
    return HistoryRun(key=f"{origin}:{batch}", source=origin, model="tiny", device="cpu", cpu_threads=None,
                      packed=False, batch_size=batch, gradient_accumulation_steps=16 // batch, max_seq_len=64,
                      tokens_per_step=27.0 * 16, tokens_per_s=27.0 * 16 / (fixed_s + 27 * 16 * per_token_s),
                      per_token_s=per_token_s, step_fixed_s=fixed_s, steps=2, origin=origin, layers=a.layers,
                      hidden=a.hidden, parameters=a.parameters)


def test_the_micro_batches_a_row_timed():
    """A probe times its micro-batch and twice it; a run's calibration half and twice its own, beside its own."""
    assert timed_micro_batches(HistoryRun(key="p", source="probe", batch_size=16, origin="probed")) == (16, 32)
    assert timed_micro_batches(HistoryRun(key="m", source="run", batch_size=16, origin="measured")) == (8, 32)
    assert timed_micro_batches(HistoryRun(key="m1", source="run", batch_size=1, origin="measured")) == (1, 2)
    unknown = HistoryRun(key="u", source="run", origin="measured")
    assert timed_micro_batches(unknown) is None and covers(unknown, 3)  # unknown is not different


def test_a_split_is_priced_from_the_rows_that_timed_its_micro_batch(tiny_model):
    """Rows probed at 1 and at 16 of very different costs: each micro-batch they timed is priced from its own row
    alone (fixed + per-token × tokens, by hand), one between them from both and said to be extrapolated."""
    arch = resolve_architecture(tiny_model)
    small, large = _row(1, "probed", 0.004, 4e-4, tiny_model), _row(16, "probed", 0.001, 1e-4, tiny_model)
    tokens = 27.0 * 16  # per optimizer step, whatever the split
    for micro, row in ((1, small), (2, small), (16, large), (32, large)):
        speed = speed_from_history(arch, None, tokens, 27, [small, large], micro_batches=16 // micro or 1,
                                   micro_batch=micro)
        accumulation = max(1, 16 // micro)  # the fixed part is the row's per optimizer step, paid per micro-batch
        by_hand = row.step_fixed_s * accumulation / (16 // row.batch_size) + row.per_token_s * tokens
        assert speed.tokens_per_s == pytest.approx(tokens / by_hand, rel=1e-9), micro
        assert not speed.below_timed and "extrapolated" not in speed.source and speed.rows == [row]
    between = speed_from_history(arch, None, tokens, 27, [small, large], micro_batches=4, micro_batch=4)
    assert not between.below_timed and between.rows == [small, large]
    assert "micro-batch 4 extrapolated from the micro-batches the rows timed, 1–2, 16–32" in between.source
    each = [tokens / predicted_step_s(r, arch, tokens, 27, 4) for r in (small, large)]
    assert between.tokens_per_s == pytest.approx(sum(each) / 2, rel=1e-9)  # the median of two
    # carried up from the small row alone errs high (efficiency grows with the micro-batch): ranked as timed;
    # carried down from the large one alone errs low: said so and flagged
    up = speed_from_history(arch, None, tokens, 27, [small], micro_batches=1, micro_batch=16)
    assert not up.below_timed
    assert "micro-batch 16 extrapolated from the micro-batches the rows timed, 1–2" in up.source
    down = speed_from_history(arch, None, tokens, 27, [large], micro_batches=4, micro_batch=4)
    assert down.below_timed and "micro-batch 4 extrapolated down from the micro-batches the rows timed, 16–32" \
        in down.source
