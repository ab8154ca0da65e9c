"""The report's content, composed once into a Document that Markdown and HTML both render, so they never disagree; each
table's caption names the files its numbers come from."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

from tunelab.fsutil import human_bytes
from tunelab.report.checked import checked_section
from tunelab.report.data import ReportData, RunData, weights_size
from tunelab.report.document import Bullets, Code, Document, Headline, Para, Section, Table
from tunelab.report.effects import FactorEffect
from tunelab.report.evaluation import diff_text, evaluation, prompt_table, show_ci
from tunelab.report.figures import FigureFile
from tunelab.report.findings import Findings, error_class, retries
from tunelab.report.gpu_use import gpu_section
from tunelab.report.images import image_answers
from tunelab.report.key_findings import key_findings
from tunelab.report.progress import evaluated_cell, no_issues_line, status_line
from tunelab.report.provenance import data_section
from tunelab.report.replicates import replicates
from tunelab.report.stages import stages_section
from tunelab.report.storage import predicted_blocks
from tunelab.report.tuning import tuning_section
from tunelab.rundir.archive import read_manifest
from tunelab.rundir.layout import COMPLETED, FAILED, INTERRUPTED, PENDING, RUNNING
from tunelab.rundir.memory import memory_labels


# ---------------------------------------------------------------- formatting
def fnum(v: Any, fmt: str = "{:.4g}") -> str:
    if v is None:
        return "—"
    return fmt.format(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else str(v)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.1f} %"


size = human_bytes


def duration(s: float | None) -> str:
    if s is None:
        return "—"
    s = float(s)
    if s < 120:
        return f"{s:.1f} s"
    m, sec = divmod(int(round(s)), 60)
    h, m = divmod(m, 60)
    return f"{h}:{m:02d}:{sec:02d}" if h else f"{m}:{sec:02d}"


def factors_text(run: RunData) -> str:
    return ", ".join(f"{k}={v}" for k, v in run.factors.items()) or "—"


def _when(iso: str | None) -> str:
    return iso.replace("T", " ").replace("+00:00", " UTC") if iso else "—"


# ---------------------------------------------------------------- sections
def headline(data: ReportData, f: Findings) -> Headline:
    if not f.best:
        return Headline("No evaluated run yet", ["Scores appear here after `tunelab eval`."], ok=False)
    names = ", ".join(r.name for r in f.best)
    best, head = f.best[0], data.headline
    metric = head.primary_metric if head else None
    rec = best.task_eval(data.eval_task or "")
    score = show_ci(f.best_score, best.interval(data.eval_task or ""), metric)
    title = f"{'Best run' if len(f.best) == 1 else 'Best runs (tied within noise)'}: {names} — {score}"
    where = f"on the {rec.split} split, " if rec and rec.split else ""
    ckpt = best.checkpoint_name(rec.epoch, rec.label) if rec else best.checkpoint_name(None, str(best.last_label))
    lines = [f"{data.eval_task or 'score'} ({metric}) {where}checkpoint {ckpt}"
             f" ({_samples_text(best, rec)}, [95 % interval]); {factors_text(best)}, model {best.model}."]
    if rec is not None and rec.epoch is not None and rec.epoch not in {c.epoch for c in best.checkpoints if c.ok}:
        lines.append(f"⚠ Checkpoint {ckpt} of {best.name} is no longer whole in `{best.rel_dir}/checkpoints/` "
                     "(Checkpoint verification): its score stands, its adapter is not there to use.")
    unscored = [r.name for r in data.runs if r.score is None]
    if unscored:  # the best of the runs that have a score, not of the sweep
        lines.append(f"Best of the {len(data.runs) - len(unscored)} of {len(data.runs)} fine-tuned runs with a score; "
                     f"no score yet: {', '.join(unscored)}.")
    ctl = data.control_for(best)
    word = "over" if head is None or head.greater_is_better else "vs"
    if ctl is not None and ctl.score is not None:
        d = f.control_vs.get(best.name)
        lines.append(f"**{diff_text(d, metric, _minus(f.best_score, ctl.score))}** {word} the base-model control "
                     f"{ctl.name} ({show_ci(ctl.score, ctl.interval(data.eval_task or ''), metric)}).")
    if f.runner_up is not None:
        d = f.best_vs.get(f.runner_up.name)
        other = f" at {f.runner_up.last_label}" if f.runner_up.last_label != best.last_label else ""  # not like with like
        lines.append(f"**{diff_text(d, metric, _minus(f.best_score, f.runner_up.score))}** {word} the runner-up "
                     f"{f.runner_up.name}{other} ({show_ci(f.runner_up.score, f.runner_up.interval(data.eval_task or ''), metric)}).")
    lines += _headline_effects(data, f, metric)
    return Headline(title, lines, ok=True)


def _samples_text(run: RunData, rec: Any) -> str:
    """'40 samples', or '20 of 40 samples' where the evaluation holds fewer than the task's split (coverage.py)."""
    if rec is None:
        return "— samples"
    planned = run.planned_samples(rec.task, rec.label)
    short = planned is not None and rec.samples is not None and rec.samples < planned
    return f"{rec.samples} of {planned} samples" if short else f"{rec.samples} samples"


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def _headline_effects(data: ReportData, f: Findings, metric: str | None) -> list[str]:
    """Factor effects measured across seed replicates; the others are observations, named but not stated."""
    lines = [line for eff in f.effects if eff.metric == "score" and eff.task == data.eval_task and eff.replicated
             and (line := _effect_line(eff, metric)) is not None]
    if f.replication is not None:
        lines.append(f"Effects of {', '.join(f.replication.factors)}: observations only — one training run per "
                     "configuration, no seed replicates (Key findings; Next steps price the replicates).")
    return lines


def _effect_line(eff: FactorEffect, metric: str | None) -> str | None:
    """A replicated factor's effect on the headline score in one line (None without two levels or an interval)."""
    best, worst = eff.best, eff.worst
    if best is None or worst is None:
        return None
    if eff.diff is not None and eff.diff.known:
        return (f"{eff.factor}: {best.level} − {worst.level} on mean {metric}: **{diff_text(eff.diff, metric)}** "
                "(across seed replicates: training noise included).")
    if best.mean == worst.mean:
        return f"{eff.factor}: no difference in mean {metric} between its levels."
    return None


def overview(data: ReportData) -> Section:
    blocks: list = []
    rows = [["model", ", ".join(data.models)], ["dataset", ", ".join(data.datasets)]]
    rows += [[k, ", ".join(map(str, v))] for k, v in data.factors.items() if k not in ("model", "dataset")]
    blocks.append(Table(["Factor", "Levels"], rows,
                        f"{len(data.runs)} fine-tuned run(s) (full factorial) + {len(data.controls)} base-model "
                        f"control(s) + {len(data.eval_only)} eval-only checkpoint(s); from `experiment.yaml` and "
                        "`*/<run>/run.yaml`."))
    if (table := prompt_table(data)) is not None:
        blocks.append(table)
    counts = Counter(r.state for r in data.runs)
    states = [COMPLETED, FAILED, INTERRUPTED, RUNNING, PENDING]
    blocks.append(Table(
        ["", *states, "retried", "evaluated"],
        [["fine-tuned runs", *[str(counts.get(s, 0)) for s in states], str(sum(1 for r in data.runs if retries(r))),
          evaluated_cell(data.runs)],
         *[[what, "—", "—", "—", "—", str(sum(1 for c in group if not c.evals)), "—", evaluated_cell(group)]
           for what, group in (("controls", data.controls), ("eval-only", data.eval_only)) if group]],
        "States from each run's `status.json` + `summary.json`; retries from the ledger's attempts table "
        "(`tunelab.db`) and `status.json` restarts; evaluated: every checkpoint `eval.epochs` names × every task, on "
        "all of the task split's samples (`eval/*/*/scores.json`; partly: some of it)."))
    if data.absent:
        blocks.append(Para("⚠ Designed by `experiment.yaml` but not in this directory: " + ", ".join(
            f"{a.name} (`{a.rel_dir}/`)" for a in data.absent) + "."))
    return Section("Overview", blocks)


def checkpoints(data: ReportData) -> Section:
    blocks: list = []
    epochs = sorted({c.epoch for r in data.runs for c in r.checkpoints}
                    | {e for r in data.runs if r.state == COMPLETED and r.planned_epochs
                       for e in range(r.planned_epochs)})
    rows = []
    shared = {e: data.shared_stage(e) for e in epochs}  # a staged sweep's stage labels, in the header when shared
    for r in data.runs:
        by_epoch = {c.epoch: c for c in r.checkpoints}
        cells = []
        for e in epochs:
            c = by_epoch.get(e)
            if c is None:
                expected = r.state == COMPLETED and r.planned_epochs and e < r.planned_epochs
                cells.append("✗ missing" if expected or r.state != RUNNING else "…")
            else:
                cell = "✓ " + size(c.adapter_bytes) if c.ok else "✗ " + "; ".join(c.problems)
                cells.append(cell if shared[e] or e not in r.epoch_stage else f"{cell} ({r.epoch_stage[e]})")
        bad = [c for c in r.checkpoints if not c.ok]
        missing = r.state == COMPLETED and r.planned_epochs and len(by_epoch) < r.planned_epochs
        if not r.checkpoints:
            note = "no checkpoints" + ("" if r.state == PENDING else f" ({r.state})")
        elif bad or missing:
            note = "problems"
        elif r.state == COMPLETED:
            note = "complete"
        else:
            note = f"{r.state}, {len(by_epoch)} so far"
        rows.append([r.name, *cells, note])
    if epochs:
        saved = sorted({c.epoch for r in data.runs for c in r.checkpoints})
        blocks.append(Para(f"Epoch checkpoints found: **{', '.join(map(str, saved)) or 'none'}**."))
        blocks.append(Table(["Run", *[f"Epoch {e}" + (f" ({shared[e]})" if shared[e] else "") for e in epochs],
                             "Notes"], rows,
                            "Sizes are of `adapter_model.safetensors` in `runs/<run>/checkpoints/epoch_N/`; each "
                            "must also hold a non-empty `adapter_config.json` and a tokenizer. ✗ marks missing or "
                            "zero-byte files and epochs a completed run should have saved."))
    else:
        blocks.append(Para("No checkpoints yet."))
    return Section("Checkpoint verification", blocks)


def training(data: ReportData, figs: dict[str, FigureFile]) -> Section:
    packed = any(r.summary.packing and r.summary.packing.packed for r in data.runs)
    header = ["Run", "Model", "Factors", "State", "Steps", "Final loss", "Best loss", "Final val loss",
              "Duration", "Tokens/s", "Peak mem (GiB)", "Attention"]
    if packed:
        header += ["Packing density", "Non-pad %"]
    rows = []
    for r in data.runs:
        s = r.summary
        row = [r.name, r.model, factors_text(r), r.state, fnum(s.steps or r.status.step, "{}"),
               fnum(s.final_loss), fnum(s.best_loss), fnum(s.final_val_loss), duration(s.duration_s),
               fnum(s.tokens_per_s, "{:,.0f}"), fnum(s.peak_memory_gib, "{:.2f}"), s.attention or "—"]
        if packed:
            p = s.packing
            row += [fnum(p.density, "{:.2f}") if p and p.packed else "—", pct(s.nonpad_fraction)]
        rows.append(row)
    kinds = sorted({k for r in data.runs if (k := r.summary.memory_kind) is not None})
    caption = ("From `runs/<run>/summary.json` (steps, losses, duration, tokens/s: steady-state mean after the "
               "first logging interval, training time only; peak memory: " + (memory_labels(kinds, ", ")
                                                                               or "—") + ")")
    caption += "; attention = the kernel the run trained with (`summary.json` attention, run.yaml's resolved "\
               "`training.attention`)"
    caption += "; packing density = examples per packed sequence (`summary.json` packing)." if packed else "."
    blocks: list = [Table(header, rows, caption)]
    running = [r for r in data.runs if r.state == RUNNING]
    if running:
        blocks.append(Para("Still running: " + ", ".join(
            f"{r.name} (step {_or_unknown(r.status.step)} of {_or_unknown(r.status.total_steps)})" for r in running)
            + " — losses so far are in the figure."))
    for key in ("loss_curves", "throughput_memory"):
        if key in figs:
            blocks.append(figs[key].block())
    return Section("Training results", blocks)


def _or_unknown(v: int | None) -> str:
    return "?" if v is None else str(v)


def storage(data: ReportData) -> Section:
    blocks: list = []
    base = {m: weights_size(p) for m, p in data.model_paths.items()}
    ranks = sorted({r.config.training.lora_rank for r in data.runs if r.config.training})
    header = ["Component", *data.models]
    rows = [["Base model (weights)", *[size(base.get(m)) for m in data.models]]]
    for rank in ranks:
        cells = []
        for m in data.models:
            sizes = [r.checkpoints[-1].adapter_bytes for r in data.runs if r.model == m and r.checkpoints
                     and r.config.training and r.config.training.lora_rank == rank]
            cells.append(size(max(sizes)) if sizes else "—")
        rows.append([f"Adapter (rank {rank})", *cells])
    blocks.append(Table(header, rows, "Base: weight files (`*.safetensors`, `*.bin`) of each model directory; "
                        "adapter: `adapter_model.safetensors` of a run's last checkpoint (includes any "
                        "`modules_to_save` trained in full)."))
    rows = []
    for r in data.runs:
        n = len(r.checkpoints)
        adapters = sum(c.adapter_bytes for c in r.checkpoints)
        ckpt_total = sum(c.total_bytes for c in r.checkpoints)
        merged = base.get(r.model, 0) * n
        rows.append([r.name, str(n), size(adapters), size(ckpt_total), size(merged) if n else "—",
                     size(r.dir_bytes)])
    blocks.append(Table(["Run", "Epochs saved", "Adapter only", "Checkpoints (adapter + tokenizer)",
                         "If merged (≈ base × epochs)", "Run dir total"], rows,
                        "Run dir total is every file under `runs/<run>/` (incl. `trainer_state/` optimizer state "
                        "for resuming, which can be deleted once a run is final)."))
    blocks += predicted_blocks(data)  # plan's storage estimate beside what the run directories hold
    total_ad = sum(sum(c.adapter_bytes for c in r.checkpoints) for r in data.runs)
    total_merged = sum(base.get(r.model, 0) * len(r.checkpoints) for r in data.runs)
    if total_ad:
        blocks.append(Para(f"Adapter-only checkpoints take **{size(total_ad)}** for the whole sweep; merged models "
                           f"would take ≈ **{size(total_merged)}**. Keep adapters and share the base model."))
    archived = read_manifest(data.experiment_dir)
    if archived:
        blocks.append(Para(f"**Archived** {_when(archived.archived_at)} to `{archived.archive_dir}` (keep: "
                           f"{archived.keep}): {len(archived.files)} files, {size(archived.bytes_archived)}, each "
                           f"verified by sha256; {size(archived.bytes_removed)} of trainer state and checkpoints not "
                           f"kept removed from this directory ({len(archived.removed)} directories, listed in "
                           f"`archive.json`)."))
    return Section("Storage", blocks)


def issues(data: ReportData, f: Findings) -> Section:
    blocks: list = []
    if f.issues:
        blocks.append(Table(["Run", "Issue", "Detail"], [[i.run, i.kind, i.detail] for i in f.issues],
                            "From `status.json` (error), the ledger's attempts, `metrics.jsonl` and the checkpoint "
                            "files."))
    else:
        blocks.append(Para(no_issues_line(data)))
    if data.attempts:
        rows = [[a.run, fnum(a.attempt, "{}"), a.executor or "—", _when(a.started_at), _when(a.finished_at),
                 fnum(a.exit_code, "{}"), a.state or "—", (error_class(a.reason) + ": " + a.reason) if a.reason else "—"]
                for a in data.attempts]
        blocks.append(Table(["Run", "Attempt", "Executor", "Started", "Finished", "Exit", "State", "Reason"], rows,
                            "Every job the executor started (ledger table `attempts` in `tunelab.db`)."))
    return Section("Issues", blocks)


def next_steps(f: Findings) -> Section:
    return Section("Next steps", [Bullets(f.next_steps)])


def appendix(data: ReportData) -> Section:
    exp = data.experiment_dir
    train = "\n".join(f"tunelab train {r.rel_dir}/run.yaml" for r in data.runs)
    ev = "\n".join(f"tunelab eval {exp} --run {r.name} --force" for r in data.all)
    return Section("Appendix: reproduce", [
        Para("Retrain one run (from its resolved config; the job script does the same):"),
        Code(f"cd {exp}\n{train}" if train else f"cd {exp}"),
        Para("Re-evaluate a run's checkpoints (add `--epochs all` for every epoch) and rebuild this report:"),
        Code(f"{ev}\ntunelab report {exp}"),
    ])


def compose(data: ReportData, f: Findings, figs: dict[str, FigureFile]) -> Document:
    meta = [("Generated", data.generated_at), ("Directory", f"`{data.experiment_dir}`")]
    if data.first_start:
        meta.append(("Dates", f"{_when(data.first_start)} – {_when(data.last_finish) if data.last_finish else 'now'}"))
    if data.description:
        meta.append(("Question", data.description))
    meta.append(("Models", ", ".join(data.models)))
    meta.append(("Datasets", ", ".join(data.datasets)))
    for k, v in data.factors.items():
        if k not in ("model", "dataset"):
            meta.append((k, ", ".join(map(str, v))))
    meta.append(("Status", status_line(data)))
    at_a_glance = Section("At a glance", [headline(data, f)])
    key = next((k for k in figs if k.startswith("score_by_")), None) if f.replication is None else None
    if key:
        at_a_glance.blocks.append(figs[key].block())
    rest = {k: v for k, v in figs.items() if k != key}

    maybe = [at_a_glance, overview(data), data_section(data.experiment_dir), checkpoints(data),
             training(data, figs), stages_section(data), gpu_section(data), evaluation(data, f, rest),
             image_answers(data, f.best, report_dir(data) / "figures"),
             replicates(data, f), key_findings(data, f), tuning_section(data, report_dir(data) / "figures"),
             storage(data), checked_section(data), issues(data, f),
             next_steps(f), appendix(data)]
    sections = [s for s in maybe if s is not None]
    return Document(f"Experiment report: {data.name}", meta, sections, partial=data.partial,
                    highlight=[r.name for r in f.best])


def report_dir(data: ReportData) -> Path:
    return data.experiment_dir / "report"
