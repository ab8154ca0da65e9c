"""How many runs train side by side on a CPU (resources.cpu_runs_at_once), chosen from timing, not assumed.

A small model's step leaves cores idle: its interpreter, optimizer and data work run on one thread, and its
matrices are too small for a second thread to halve them (the demo's tiny runs: 2 threads buy far less than
2×), while each run's start-up (imports, model load) is one thread throughout. A large model's matrices scale
with threads. So the plan estimates the runs as each candidate share would train them — the same estimate a run
gets (history at that thread count, else its own micro-batches timed here at that count) — places them over that
many slots with the executor's policy (execute/schedule.forecast), and keeps the shortest predicted makespan.
Sharing has to gain at least MIN_GAIN to be chosen (about a timing's spread here), and only as many runs as host
RAM holds at their predicted peaks share it. Runs of several processes (gloo), a sweep of one run and a machine
with one core train one at a time; a number set in the spec is kept, its estimates made at its share's threads.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, replace
from importlib.metadata import version

from tunelab.diskcache import cached_json
from tunelab.execute.schedule import RunNeed, cpu_devices, forecast
from tunelab.forecast.jobstart import warm_start_s
from tunelab.forecast.planscope import priced_together
from tunelab.host.adapt import Adaptation, adapts, load_while_planning, planned_adaptation, threads_left
from tunelab.host.cgroup import host_memory_gib
from tunelab.host.cores import CPUS_ENV, cpu_list, job_shares, usable_cores
from tunelab.host.machine import machine_key
from tunelab.host.threads import ThreadPlan, decide
from tunelab.rundir.config import RunConfig
from tunelab.rundir.estimate import RunEstimate
from tunelab.spec.resources import ResourcesSpec

MIN_GAIN = 0.10  # sharing must shorten the predicted makespan by this fraction to be chosen
RAM_FRACTION = 0.9  # of host RAM the runs side by side may hold at their predicted peaks together

EstimateAt = Callable[[int], dict[str, RunEstimate]]  # the runs' estimates at a thread count per run


@dataclass(frozen=True)
class SharingOption:
    """One way to share the CPU: this many runs at once, each with this many threads, and the makespan the
    executor's policy predicts for the sweep's runs that way (None: a run without a time estimate)."""

    runs_at_once: int
    threads_each: int
    makespan_s: float | None


@dataclass(frozen=True)
class CpuSharing:
    """The choice, the options it was chosen from, and why (plan.md's line)."""

    chosen: SharingOption
    options: tuple[SharingOption, ...]
    why: str
    load: str = ""  # others held cores while planning: the threads a job starting now takes, priced at them
    capped: str = ""  # the user's OMP_NUM_THREADS above a run's share: what each run gets instead (host/threads.py)

    def line(self) -> str:
        c = self.chosen
        each = f"{c.threads_each} thread{'s' if c.threads_each != 1 else ''} each"
        head = (f"CPU: {c.runs_at_once} runs side by side, {each}" if c.runs_at_once > 1
                else f"CPU: one run at a time, {each}")
        timed = "; ".join(f"{o.runs_at_once} at once × {o.threads_each} thread(s): "
                          + (f"{o.makespan_s:.0f} s" if o.makespan_s is not None else "unknown")
                          for o in self.options)
        load = "".join(f"; {words}" for words in (self.load, self.capped) if words)
        return f"{head} ({self.why}{'; their training placed alone: ' + timed if len(self.options) > 1 else ''}{load})"


def cpu_threads(under_load_now: bool = True) -> int:
    """The threads a one-process job trains with on this machine (CPU time estimates, history lookups): the
    same rule the job applies (tunelab/host/threads.py), so the plan looks up rows timed with what the job will get;
    where others hold cores while planning, what a job starting now would take of it (host/adapt.py).
    Only torch's own default (TUNELAB_THREAD_RULE=torch, or an OMP_NUM_THREADS torch cannot read) asks torch,
    remembered per host and setting: importing torch to ask costs ~2 s of every plan."""
    rule = decide(1)
    if rule.torch is not None:
        # others hold cores now: a job starting here takes fewer (host/adapt.py); a job run elsewhere does not
        adapted = planned_adaptation(rule) if under_load_now else None
        return adapted.used if adapted is not None else rule.torch

    def ask() -> int:
        import torch

        return torch.get_num_threads()

    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
    key = [*machine_key(), affinity, os.environ.get("OMP_NUM_THREADS"), version("torch")]
    return int(cached_json("torch-threads", key, ask))


def share_rule(runs_at_once: int) -> ThreadPlan:
    """The job's own thread rule (host/threads.py) on the smallest share the executor would give when this many run
    at once (host/cores.job_shares); alone, this machine's."""
    if runs_at_once <= 1:
        return decide(1)
    share = min(job_shares(runs_at_once), key=len)
    env = {k: v for k, v in os.environ.items() if k != CPUS_ENV}  # this process's own share is not the job's
    return decide(1, {**env, CPUS_ENV: cpu_list(share)})


def share_threads(runs_at_once: int) -> int:
    """The torch threads a one-process job gets on its share when this many run at once (share_rule), less what
    others hold of it now; alone, all of them (cpu_threads)."""
    if runs_at_once <= 1:
        return cpu_threads()
    share = min(job_shares(runs_at_once), key=len)
    rule = share_rule(runs_at_once)
    threads = rule.torch or len(share)
    window = load_while_planning() if adapts(rule) else None
    if window is None or window.cores <= 0:
        return threads
    # each job reads the load on its own share: on average its part of what others held on every core
    return threads_left(threads, replace(window, others_cpu_s=window.others_cpu_s * len(share) / window.cores))


def candidates(runs: list[RunConfig], cores: int) -> list[int]:
    """Runs at once worth pricing: 1, then each doubling up to the cores and the runs (equal shares)."""
    out, k = [1], 2
    while k <= min(cores, len(runs)):
        out.append(k)
        k *= 2
    return out


def _option(k: int, estimates: dict[str, RunEstimate], threads: int, warm_s: float = 0.0) -> SharingOption:
    """k slots, the runs at these estimates placed over them: a slot's later jobs skip `warm_s` of their start-up."""
    needs = [RunNeed(e.run, 1, e.seconds, None, min(warm_s, e.startup_s or 0.0)) for e in estimates.values()]
    return SharingOption(k, threads, forecast(cpu_devices(k), needs).makespan_s)


def _fits_ram(k: int, estimates: dict[str, RunEstimate], ram_gib: float | None) -> bool:
    peaks = sorted((e.peak_memory_gib for e in estimates.values() if e.peak_memory_gib is not None), reverse=True)
    return ram_gib is None or k == 1 or sum(peaks[:k]) <= RAM_FRACTION * ram_gib


def choose(runs: list[RunConfig], resources: ResourcesSpec, estimate_at: EstimateAt, cores: int,
           ram_gib: float | None, threads_for: Callable[[int], int] = share_threads, warm_s: float = 0.0
           ) -> tuple[CpuSharing, dict[str, RunEstimate]]:
    """The sharing the runs train with and their estimates under it (`threads_for`: runs at once -> each one's
    threads, this machine's rule unless told; `warm_s`: what a slot's later jobs skip of their start-up)."""
    fixed = resources.cpu_runs_at_once
    if fixed != "auto":
        threads = threads_for(fixed)
        estimates = estimate_at(threads)
        return CpuSharing(_option(fixed, estimates, threads, warm_s), (), "set by resources.cpu_runs_at_once"), estimates
    if any(c.resources.processes_per_run(0) > 1 for c in runs) or len(runs) < 2 or cores < 2:
        threads = threads_for(1)
        estimates = estimate_at(threads)
        why = ("runs of several processes" if len(runs) > 1 and cores > 1 else
               "one run" if len(runs) < 2 else "one core")
        return CpuSharing(_option(1, estimates, threads, warm_s), (), f"auto: {why}"), estimates
    priced: list[tuple[SharingOption, dict[str, RunEstimate]]] = []
    shares = [(k, threads_for(k)) for k in candidates(runs, cores)]
    with priced_together(threads for _, threads in shares):  # a first contact measures the loop once for all
        for k, threads in shares:
            estimates = estimate_at(threads)
            if _fits_ram(k, estimates, ram_gib):
                priced.append((_option(k, estimates, threads, warm_s), estimates))
    best, best_estimates = priced[0]
    alone = best.makespan_s
    for option, estimates in priced[1:]:
        if (option.makespan_s is not None and alone is not None and best.makespan_s is not None
                and option.makespan_s <= (1 - MIN_GAIN) * alone and option.makespan_s < best.makespan_s):
            best, best_estimates = option, estimates
    why = ("auto: the shortest predicted makespan" if best.runs_at_once > 1 else
           "auto: one at a time, the runs having no time estimate to compare" if alone is None else
           f"auto: sharing gains under {MIN_GAIN:.0%}" if len(priced) > 1 else
           "auto: host RAM holds one run at a time")
    return CpuSharing(best, tuple(o for o, _ in priced), why), best_estimates


def share_cpu(finetune: list[RunConfig], runs: list[RunConfig], resources: ResourcesSpec,
              estimate_at: EstimateAt) -> CpuSharing:
    """Choose for the fine-tuned runs on this machine (its usable cores, its RAM) and write the choice where the
    executor and the forecasts read it: every run's resources (run.yaml) and the plan's spec."""
    try:
        ram: float | None = host_memory_gib()
    except OSError:
        ram = None  # validate's check says so; sharing then trusts the memory estimates alone
    cores = usable_cores().count
    sharing, _ = choose(finetune, resources, estimate_at, cores, ram,
                        warm_s=warm_start_s(resources.executor, None))  # the sweep's lanes start warm
    adapted = planned_adaptation(decide(1))
    if adapted is not None:
        sharing = replace(sharing, load=load_line(adapted, cores))
    sharing = replace(sharing, capped=capped_line(share_rule(sharing.chosen.runs_at_once), sharing.chosen.threads_each))
    for res in [resources] + [c.resources for c in runs]:
        res.cpu_runs_at_once = sharing.chosen.runs_at_once
    return sharing


def capped_line(rule: ThreadPlan, threads_each: int) -> str:
    """The plan's words where the job's rule capped the user's OMP_NUM_THREADS at its share's CPUs (host/threads.py);
    "" where it is unset or fits."""
    if rule.capped_from is None:
        return ""
    return (f"OMP_NUM_THREADS={rule.capped_from}, set before tunelab, is more than a run's share of the CPUs: each run "
            f"trains with {threads_each}, capped (more threads than CPUs wait for one another)")


def load_line(adapted: Adaptation, cores: int) -> str:
    """The plan's words for a load that fits a job's threads (plan.md, the plan's warnings)."""
    return (f"others held {adapted.others_cores:.1f} of {cores} cores while planning: a job starting now takes "
            f"{adapted.used} of its {adapted.planned} threads (host/adapt.py), and is priced at them")
