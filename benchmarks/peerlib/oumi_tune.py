"""Oumi 0.9's learning-rate search, beside tunelab's (peerlib/search.py): `oumi tune -c tune.yaml` in its own env
(scripts/peer-env oumi, with the `tune` extra's optuna).

What `oumi tune` does (oumi/tune.py, core/tuners/optuna_tuner.py): one Optuna study, `study.optimize(n_trials)` in
one process, the trials one after another; each trial is a whole `oumi.train.train()` of the same config at the
rate the sampler asks, forced to TRL_SFT, into `tuning.output_dir/trial_N/`; its value is `eval_loss` from a fresh
`trainer.evaluate()` on the validation split once the trial has trained (hf_trainer.get_last_eval_metrics), so
no validation during a trial is needed for the objective (eval_every None: none). No pruner: every trial trains
its whole budget. The sampler is `TPESampler()` built without a seed (no option sets one) and with Optuna's default
10 random start-up trials, so with up to 10 trials the rates are unseeded log-uniform draws. Results:
`trials_results.csv` (study.trials_dataframe()), a "Trial N finished with value …" line per trial on stdout.

The job per trial is peerlib/oumi.py's (same model, template, answer-only labels, LoRA, batch, cosine, seed 0,
fp32, CPU), trained `max_steps` = the budget (cosine over those steps, as tunelab's trials), validated on the
validation split with the same collator (answer-only loss), batch 8."""

from __future__ import annotations

import csv
import math
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peerlib.isolation import home_env
from peerlib.job import Inputs, Job
from peerlib.measure import Launch, Measured, own_thread_rule, run_all, span, thread_env
from peerlib.oumi import (
    chat_markers,
    dataset_split,
    model_params,
    peft_params,
    training_params,
    write_yaml,
)

OUTPUT = "oumi_tune"  # tuning.output_dir: trial_N/ per trial, trials_results.csv, logs/
CONFIG = "tune.yaml"
RESULTS = "trials_results.csv"
# optuna's own line per trial (its logger, INFO, on stderr)
TRIAL_LINE = re.compile(r"Trial (\d+) finished with values?: \[?([-+0-9.eE]+|nan|inf)\]? and parameters: "
                        r"\{'learning_rate': ([-+0-9.eE]+)\}")


@dataclass(frozen=True)
class OumiSearch:
    """One `oumi tune` study: n_trials rates log-uniform in [low, high], each trial at most budget_steps steps
    (None: `budget` × the one-epoch job's steps), objective the validation loss after the trial (eval_loss)."""

    n_trials: int = 8
    low: float = 1e-4
    high: float = 1e-2
    budget: float = 0.5  # of the one-epoch job's steps (tunelab's tune.budget)
    budget_steps: int | None = None  # overrides budget
    eval_every: int | None = None  # validations during a trial: Oumi has no pruner, so None (none) by default
    rank: int | None = None  # the LoRA rank of this study (a level); None: the job's
    seed: int = 0  # every trial's training seed; Oumi's sampler takes none
    objective: str = "eval_loss"


@dataclass
class OumiTrial:
    number: int
    learning_rate: float
    value: float | None  # eval_loss; None: the trial did not complete
    state: str
    seconds: float | None = None


@dataclass
class OumiTuneResult:
    best_learning_rate: float | None = None
    best_value: float | None = None
    trials: list[OumiTrial] = field(default_factory=list)


def trial_steps(inputs: Inputs, job: Job, search: OumiSearch) -> int:
    """A trial's max_steps: budget_steps, else ⌊budget × the epoch's optimizer steps⌋ (tunelab's trial_steps)."""
    if search.budget_steps is not None:
        return search.budget_steps
    epoch = math.ceil(inputs.splits["train"] / job.micro_batch) * job.epochs
    return max(1, math.floor(search.budget * epoch))


def tune_config(inputs: Inputs, job: Job, search: OumiSearch) -> dict[str, Any]:
    """The TuningConfig: model/data as `oumi train`'s, the job as fixed params, the rate as the one tunable."""
    if search.objective != "eval_loss":
        raise ValueError(f"oumi_tune: objective {search.objective!r}: only the validation loss is compared")
    steps = trial_steps(inputs, job, search)
    fixed = training_params(job, "unused")  # output_dir: oumi tune sets trial_N's
    for key in ("trainer_type", "mixed_precision_dtype", "output_dir", "learning_rate"):
        fixed.pop(key)  # enums are not converted on this path (TrainingParams(**dict)); trainer forced to TRL_SFT
    fixed.update({"max_steps": steps, "seed": search.seed, "data_seed": search.seed})
    if search.eval_every:
        if steps % search.eval_every:
            raise ValueError(f"oumi_tune: {steps} steps is not a multiple of eval_every {search.eval_every}")
        fixed.update({"eval_strategy": "steps", "eval_steps": search.eval_every})
    peft = peft_params(job)
    if search.rank is not None:
        peft["lora_r"] = search.rank
    markers = chat_markers(inputs.model_dir)
    return {
        "model": model_params(inputs, job),
        "data": {"train": dataset_split(inputs.jsonl("train"), markers),
                 "validation": dataset_split(inputs.jsonl("validation"), markers)},
        "tuning": {
            "n_trials": search.n_trials, "tuner_type": "OPTUNA", "tuner_sampler": "TPESampler",
            "tuning_study_name": "tunelab-peer", "output_dir": OUTPUT,
            "evaluation_metrics": [search.objective], "evaluation_direction": ["minimize"],
            "tunable_training_params": {"learning_rate": {"type": "loguniform", "low": search.low,
                                                          "high": search.high}},
            "fixed_training_params": fixed, "fixed_peft_params": peft,
        },
    }


def tune_command(inputs: Inputs, job: Job, search: OumiSearch, out: Path, python: Path) -> list[str]:
    """Write tune.yaml into `out` (the command's cwd) and return `oumi tune -c tune.yaml`."""
    out.mkdir(parents=True, exist_ok=True)
    write_yaml(out / CONFIG, tune_config(inputs, job, search))
    return [str(Path(python).parent / "oumi"), "tune", "-c", CONFIG]


def parse_tune(measured: Measured, out: Path) -> OumiTuneResult:
    """Per-trial rates and losses from trials_results.csv (Optuna's dataframe), else from optuna's trial lines;
    the best: the completed trial with the lowest eval_loss (Optuna's best_trial)."""
    trials = _csv_trials(out / OUTPUT / RESULTS) or _line_trials(measured)
    done = [t for t in trials if t.value is not None and t.state == "COMPLETE" and math.isfinite(t.value)]
    result = OumiTuneResult(trials=trials)
    if done:
        best = min(done, key=lambda t: (t.value, t.number))
        result.best_learning_rate, result.best_value = best.learning_rate, best.value
    return result


def _csv_trials(path: Path) -> list[OumiTrial]:
    if not path.is_file():
        return []
    trials = []
    with path.open(newline="") as f:
        for row in csv.DictReader(f):
            value = row.get("value") or ""
            seconds = row.get("duration") or ""
            trials.append(OumiTrial(int(row["number"]), float(row["params_learning_rate"]),
                                    float(value) if value else None, row.get("state", ""),
                                    _seconds(seconds) if seconds else None))
    return trials


def _seconds(duration: str) -> float | None:
    """pandas' Timedelta as the CSV writes it: '0 days 00:01:02.345678'."""
    m = re.match(r"(\d+) days? (\d+):(\d+):([0-9.]+)", duration)
    if not m:
        return None
    d, h, mi, s = m.groups()
    return int(d) * 86400 + int(h) * 3600 + int(mi) * 60 + float(s)


def _line_trials(measured: Measured) -> list[OumiTrial]:
    trials = []
    for line in measured.lines:
        m = TRIAL_LINE.search(line.text)
        if m:
            trials.append(OumiTrial(int(m.group(1)), float(m.group(3)), float(m.group(2)), "COMPLETE"))
    return trials


def studies(search: Any, job: Job) -> dict[str, OumiSearch]:
    """peerlib/search.py's Search as Oumi studies: one per level (LoRA rank), its `trials` trials each, the same
    range, budget and seed (tunelab: a study per rank too); Oumi has no pruner, so no validations in between."""
    return {str(rank): OumiSearch(n_trials=search.trials, low=search.low, high=search.high, budget=search.budget,
                                  rank=rank, seed=search.seed) for rank in search.ranks}


def level_launches(commands: dict[str, tuple[list[str], Path]], threads: int, at_once: bool,
                   home: Path, warm: bool = False) -> list[Launch]:
    """How the studies' `oumi tune` commands ({level: (command, cwd)}) run: one after the other with all `threads`
    each (Oumi's own way: one study, one process), or at once, each with its share of the cores (threads ÷ studies,
    at least 1) on the same cores (taskset, as tunelab's side): the way tunelab runs its two studies. All share
    one fresh home (peerlib/isolation.py), as tunelab's studies share theirs (`warm`: one an untimed run filled)."""
    share = max(1, threads // len(commands)) if at_once else threads
    prefix = own_thread_rule(threads, {})[0] if at_once else []
    env = thread_env(share, home_env(home, warm))
    return [Launch([*prefix, *command], env, cwd, cwd / "output.log", memory=False)  # walls compared, not memory
            for command, cwd in commands.values()]


def run_oumi(inputs: Inputs, job: Job, search: Any, out: Path, python: Path, repeat: int,
             at_once: bool = False, home: Path | None = None) -> Any:
    """The whole search as peerlib/search.py's SearchResult: one `oumi tune` per level, in sequence (the wall: their
    sum, each process's own start-up included, as each tunelab trial pays its own) or at once (`at_once`, tool
    "oumi at once": the wall from the first start to the last exit). `home`: warm caches kept there (None: a fresh
    home in `out`)."""
    from peerlib.search import SearchResult

    shutil.rmtree(out, ignore_errors=True)
    row = SearchResult("oumi at once" if at_once else "oumi", repeat, wall_s=0.0)
    commands = {level: (tune_command(inputs, job, study, out / f"lora_rank-{level}", python),
                        out / f"lora_rank-{level}") for level, study in studies(search, job).items()}
    measured = run_all(level_launches(commands, job.threads, at_once, home or out / "home", home is not None),
                       at_once)
    row.load_before, row.load_after = measured[0].load_before, measured[-1].load_after
    row.sampler_cpu_s = round(sum(m.sampler_cpu_s for m in measured), 2)
    for level, m in zip(commands, measured):
        if m.returncode:
            row.error = f"rank {level}: exit {m.returncode}: {m.tail(3)}"
            return row
        parsed = parse_tune(m, commands[level][1])
        row.trials += len(parsed.trials)
        if parsed.best_learning_rate is not None and parsed.best_value is not None:
            row.best[level] = (parsed.best_learning_rate, parsed.best_value)
    row.wall_s = span(measured) if at_once else sum(m.wall_s for m in measured)
    return row
