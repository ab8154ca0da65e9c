"""The micro-batch × accumulation split and gradient checkpointing of one run, chosen together (levers: auto).

The effective batch is the experiment's: micro × accumulation × processes equals it exactly, or the split is refused.
The fastest predicted split whose simulated peak fits wins; checkpointing stays on only where no split fits without it.
Without a measured fixed + per-token cost nothing tells micro-batches apart, so the largest that fits wins (it amortizes
per-step overhead), and the source says so."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from tunelab.catalog import GPU
from tunelab.errors import TunelabError
from tunelab.estimate.batch import SAFETY_FRACTION
from tunelab.estimate.peak import MemoryFigure, fits
from tunelab.forecast.runs import RunLengths, RunTime, device_peak, run_step, run_time
from tunelab.forecast.speedhistory import RECOMPUTE_FACTOR
from tunelab.fsutil import human_seconds
from tunelab.ledger.history import HistoryRun
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import LeverChoice, LeverSource
from tunelab.spec import TrainingConfig

SPLIT_FIELDS = ("batch_size", "gradient_accumulation_steps")
# Splits predicted closer than this are a tie, which the larger micro-batch takes: step-cost timings move by that
# much from minute to minute on a shared machine (docs/benchmarks.md), and fewer micro-batches pay the per-step
# part fewer times, which a linear step cost measured far from a small micro-batch underprices.
TIE_FRACTION = 0.05
MEASURED_SPLIT = "fixed + per-token"  # forecast/runs.py's words for a time with a measured per-step part
FIELD = "training.effective_batch"

Lengths = Callable[[RunConfig], RunLengths]  # a run's token lengths as trained (forecast/runs.py)


@dataclass(frozen=True)
class Costs:
    """What the levers price a run with: the target GPU (None: CPU), the history, token lengths, CPU threads."""

    gpu: GPU | None
    history: list[HistoryRun]
    lengths: Lengths
    cpu_threads: int | None = None

    def time(self, cfg: RunConfig) -> RunTime:
        got = self.lengths(cfg)
        return run_time(cfg, self.gpu, got.train, got.validation, self.history, self.cpu_threads, kept=got.kept)

    def peak(self, cfg: RunConfig) -> MemoryFigure | None:
        """Simulated peak per device; None on CPU (host memory is not modelled)."""
        if self.gpu is None:
            return None
        inputs, shape = run_step(cfg, self.gpu, max(self.lengths(cfg)[0], default=None))
        nproc = cfg.resources.processes_per_run(1)
        return device_peak(cfg, self.gpu, inputs, shape, nproc)[0]

    def fits(self, figure: MemoryFigure | None) -> bool:
        """batch.py's rule for a batch chosen by the plan: within SAFETY_FRACTION of the GPU (CPU: assumed)."""
        return self.gpu is None or figure is None or fits(figure, self.gpu.memory_gib, SAFETY_FRACTION)


def processes_of(cfg: RunConfig, gpu: GPU | None) -> int:
    return cfg.resources.processes_per_run(1 if gpu is not None else 0)


def target_effective_batch(t: TrainingConfig, processes: int, explicit: frozenset[str], where: Path, run: str) -> int:
    """training.effective_batch, else micro-batch × accumulation × processes; errors name the file and field."""
    if t.effective_batch is None:
        return t.effective_batch_size(processes)
    e = t.effective_batch
    if e % processes:
        raise TunelabError(f"{run}: effective batch {e} does not split over {processes} processes (give a "
                           "multiple of the processes)", file=where, field=FIELD)
    if set(SPLIT_FIELDS) <= explicit and t.effective_batch_size(processes) != e:
        raise TunelabError(f"{run}: effective batch {e} ≠ batch_size {t.batch_size} × gradient_accumulation_steps "
                           f"{t.gradient_accumulation_steps} × {processes} processes; give two of the three",
                           file=where, field=FIELD)
    return e


def fixed_split(t: TrainingConfig, target: int, processes: int, explicit: frozenset[str], where: Path,
                run: str) -> tuple[int, int]:
    """(micro, accumulation) holding `target` without a lever: the micro-batch given (or, with only the
    accumulation given, derived from it), the accumulation derived; refused when it does not divide."""
    per = target // processes
    if "gradient_accumulation_steps" in explicit and "batch_size" not in explicit:
        a = t.gradient_accumulation_steps
        if per % a:
            raise TunelabError(f"{run}: effective batch {target} is not gradient_accumulation_steps {a} × a "
                               f"micro-batch × {processes} processes", file=where, field=FIELD)
        return per // a, a
    if per % t.batch_size and "batch_size" not in explicit:  # the default micro-batch: the largest that divides
        micro = max(d for d in divisors(per) if d <= t.batch_size)
        return micro, per // micro
    if per % t.batch_size:
        raise TunelabError(f"{run}: effective batch {target} is not batch_size {t.batch_size} × an accumulation "
                           f"× {processes} processes (set batch_size to a divisor of {per}, or levers: auto)",
                           file=where, field=FIELD)
    return t.batch_size, per // t.batch_size


def divisors(n: int) -> list[int]:
    """Every micro-batch that splits n examples per process exactly, largest first."""
    return sorted((d for d in range(1, n + 1) if n % d == 0), reverse=True)


@dataclass(frozen=True)
class Candidate:
    micro: int
    accumulation: int
    checkpointing: bool
    time: RunTime

    @property
    def seconds(self) -> float:
        """Its predicted time (0 where none: ranked by time only where every candidate has one)."""
        return self.time.seconds or 0.0

    def config(self, cfg: RunConfig) -> RunConfig:
        return with_training(cfg, batch_size=self.micro, gradient_accumulation_steps=self.accumulation,
                             gradient_checkpointing=self.checkpointing)


def with_training(cfg: RunConfig, **update: object) -> RunConfig:
    """The run with these training fields (validated as a whole, as expand_runs builds runs)."""
    assert cfg.training is not None
    training = TrainingConfig.model_validate({**cfg.training.model_dump(), **update})
    return cfg.model_copy(update={"training": training})


def _priced_across_checkpointing(cands: list[Candidate]) -> list[Candidate]:
    """A candidate no row times, priced from the split with checkpointing the other way (RECOMPUTE_FACTOR)."""
    timed = {(c.micro, c.checkpointing): c.time for c in cands if c.time.seconds is not None}
    out = []
    for c in cands:
        other = timed.get((c.micro, not c.checkpointing))
        if c.time.seconds is None and other is not None and other.seconds is not None:
            start = other.startup_s or 0.0
            factor = RECOMPUTE_FACTOR if c.checkpointing else 1 / RECOMPUTE_FACTOR
            source = (f"{other.source}; checkpointing {'on' if c.checkpointing else 'off'}: training × "
                      f"{factor:.2f} (assumed: a recomputed forward, 6N vs 4N FLOPs per token)")
            c = replace(c, time=replace(other, seconds=round(start + (other.seconds - start) * factor, 1),
                                        source=source))
        out.append(c)
    return out


def _in_tie(c: Candidate, cands: list[Candidate]) -> bool:
    """Whether c is within TIE_FRACTION of the fastest (so close is the timings' noise, not the splits')."""
    return c.seconds <= min(x.seconds for x in cands) * (1 + TIE_FRACTION)


def _by_time(cands: list[Candidate]) -> list[Candidate]:
    """Fastest predicted first, except the splits in the tie come first of all, the largest micro-batch first."""
    tied = [c for c in cands if _in_tie(c, cands)]
    rest = [c for c in cands if not _in_tie(c, cands)]
    return sorted(tied, key=lambda c: -c.micro) + sorted(rest, key=lambda c: (c.seconds, -c.micro))


def _ranked(cands: list[Candidate]) -> tuple[list[Candidate], bool]:
    """No checkpointing first (never faster: a time from either setting's rows must not rank it first); then, where
    every time rests on a measured split, those priced from timed sizes before those carried down below them (priced
    low), each by time; else the largest micro-batch first. Returns (order, ranked by measured time)."""
    timed = all(c.time.seconds is not None and MEASURED_SPLIT in c.time.source for c in cands)
    if timed:
        groups = [[c for c in cands if (c.checkpointing, c.time.below_timed) == key]
                  for key in ((False, False), (False, True), (True, False), (True, True))]
        return [c for group in groups for c in _by_time(group)], True
    return sorted(cands, key=lambda c: (c.checkpointing, -c.micro)), False


def _ranking_note(chosen: Candidate, cands: list[Candidate]) -> str:
    """What the ranking set aside for the chosen split: a faster prediction of a smaller micro-batch inside the
    tie (never one that did not fit: that one ranked before it), splits only carried down to ('' where neither)."""
    alike = [c for c in cands if c.checkpointing == chosen.checkpointing and c.time.seconds is not None]
    notes = []
    group = [c for c in alike if c.time.below_timed == chosen.time.below_timed]
    aside = min((c for c in group if c.micro < chosen.micro and c.seconds < chosen.seconds),
                key=lambda c: c.seconds, default=None)  # in the tie with it, ranked after it: never tried
    if aside is not None and _in_tie(chosen, group):
        notes.append(f"{aside.micro} × {aside.accumulation} predicted {human_seconds(aside.seconds)} "
                     f"against {human_seconds(chosen.seconds)}: within {TIE_FRACTION:.0%}, a tie the larger "
                     "micro-batch takes")
    below = sorted({c.micro for c in alike if c.time.below_timed and c.micro != chosen.micro})
    if below and not chosen.time.below_timed:
        notes.append(f"micro-batch {', '.join(map(str, below))} below what any row timed: its linear price is "
                     "optimistic (a step's efficiency falls at smaller micro-batches), so it never ranks above a "
                     "split priced from timed ones (`tunelab probe` at that micro-batch times it)")
    return "; ".join(notes)


def choose_split(cfg: RunConfig, costs: Costs, target: int, explicit: frozenset[str]
                 ) -> tuple[RunConfig, list[LeverChoice]]:
    """The run with the fastest split and checkpointing that fit, and both lever choices priced against the spec's."""
    t = cfg.training
    assert t is not None
    nproc = processes_of(cfg, costs.gpu)
    per = target // nproc
    micros = [t.batch_size] if "batch_size" in explicit else divisors(per)
    if "gradient_accumulation_steps" in explicit and "batch_size" not in explicit:
        micros = [per // t.gradient_accumulation_steps]
    checks = [t.gradient_checkpointing] if "gradient_checkpointing" in explicit else [False, True]
    cands = [Candidate(m, per // m, g, costs.time(with_training(
        cfg, batch_size=m, gradient_accumulation_steps=per // m, gradient_checkpointing=g)))
             for g in checks for m in micros]
    cands = _priced_across_checkpointing(cands)
    order, measured = _ranked(cands)
    chosen, figure = order[-1], None  # type: tuple[Candidate, MemoryFigure | None]
    for c in order:
        figure = costs.peak(c.config(cfg))
        if costs.fits(figure):
            chosen = c
            break
    else:  # nothing fits: the least memory (checkpointing, the smallest micro-batch); the OOM warning follows
        chosen = min(cands, key=lambda c: (not c.checkpointing, c.micro))
        figure = costs.peak(chosen.config(cfg))
    peak = round(figure.required_gib, 2) if figure is not None else None
    base = costs.time(cfg)
    why = _ranking_note(chosen, cands) if measured else ""
    choices = [_split_choice(chosen, nproc, base, peak, costs, measured, explicit, why),
               _checkpoint_choice(chosen, t.gradient_checkpointing, peak, costs, explicit, costs.fits(figure))]
    return chosen.config(cfg), choices


def _time_source(time: RunTime) -> LeverSource:
    """Probed or history rows priced it; else the FLOPs model at its assumed MFU."""
    if "probed" in time.source:
        return LeverSource.PROBED
    return LeverSource.HISTORY if time.source.startswith("history") else LeverSource.ASSUMED


def _delta(chosen: RunTime, base: RunTime) -> float | None:
    if chosen.seconds is None or base.seconds is None:
        return None
    return round(chosen.seconds - base.seconds, 1)


def signed_seconds(delta: float | None) -> str:
    """−1.2 min, +3 s, ±0 s: a predicted change of time."""
    if delta is None:
        return "time not predicted"
    return "±0 s" if abs(delta) < 0.5 else f"{'−' if delta < 0 else '+'}{human_seconds(abs(delta))}"


def _effect(delta: float | None, peak: float | None, costs: Costs) -> str:
    when = ("time not predicted (no speed for this configuration)" if delta is None else
            f"{signed_seconds(delta)} training")
    mem = (f"peak {peak:.1f} of {costs.gpu.memory_gib:.1f} GiB" if costs.gpu is not None and peak is not None
           else "memory not modelled on CPU")
    return f"{when}; {mem}"


def _split_choice(c: Candidate, nproc: int, base: RunTime, peak: float | None, costs: Costs, measured: bool,
                  explicit: frozenset[str], ranking: str = "") -> LeverChoice:
    value = f"{c.micro} × {c.accumulation} × {nproc}"
    given = [f for f in SPLIT_FIELDS if f in explicit]
    if len(given) == 2:
        return LeverChoice(lever="micro_batch_split", value=value, applied=True, source=LeverSource.SPEC,
                           effect=_effect(0.0, peak, costs), seconds_delta=0.0, peak_memory_gib=peak,
                           why="batch_size and gradient_accumulation_steps are set in the spec: they win")
    why = (f"fastest predicted split of the effective batch {c.micro * c.accumulation * nproc} that fits "
           f"({c.time.source})" if measured else
           f"largest micro-batch that fits, effective batch {c.micro * c.accumulation * nproc} held: no measured "
           "fixed per-step cost tells the splits' times apart (`tunelab probe` measures it)")
    if ranking:
        why += f"; {ranking}"
    if given:
        why += f"; {given[0]} set in the spec is kept"
    src = _time_source(c.time) if measured else (
        LeverSource.SIMULATED if costs.gpu is not None else LeverSource.ASSUMED)
    return LeverChoice(lever="micro_batch_split", value=value, applied=True, seconds_delta=_delta(c.time, base),
                       peak_memory_gib=peak, effect=_effect(_delta(c.time, base), peak, costs), source=src,
                       why=why)


def _checkpoint_choice(c: Candidate, spec_value: bool, peak: float | None, costs: Costs,
                       explicit: frozenset[str], fit: bool) -> LeverChoice:
    value = "on" if c.checkpointing else "off"
    if "gradient_checkpointing" in explicit:
        return LeverChoice(lever="gradient_checkpointing", value=value, applied=True, source=LeverSource.SPEC,
                           peak_memory_gib=peak, effect="as the spec says",
                           why="gradient_checkpointing is set in the spec: it wins")
    if costs.gpu is None:
        why, src = ("off: host memory is not modelled on CPU; checkpointing only recomputes the forward "
                    "(the same gradients)", LeverSource.ASSUMED)
    elif not fit:
        why, src = ("on: no split fits the GPU even with it (simulated); see the plan's memory warning",
                    LeverSource.SIMULATED)
    elif c.checkpointing:
        why, src = "on: no split of the effective batch fits the GPU without it (simulated)", LeverSource.SIMULATED
    else:
        why, src = "off: the simulated peak without it fits", LeverSource.SIMULATED
    changed = "" if c.checkpointing == spec_value else f" (spec default: {'on' if spec_value else 'off'})"
    return LeverChoice(lever="gradient_checkpointing", value=value + changed, applied=True, source=src,
                       peak_memory_gib=peak, effect=_effect(None, peak, costs).split("; ")[1], why=why)
