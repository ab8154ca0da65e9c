"""The report's Stages section: each staged run's stages in order (run.yaml's plan, stages.json's results) and the
headline score after each, so a reader follows a curriculum from first stage to last. No staged run: no section."""

from __future__ import annotations

from tunelab.data.ordering import order_text
from tunelab.report.data import ReportData, RunData, TaskInfo
from tunelab.report.document import Para, Section, Table
from tunelab.report.evaluation import show_ci
from tunelab.rundir.config import StageConfig
from tunelab.rundir.layout import COMPLETED, PENDING, STAGES_FILE
from tunelab.rundir.stages import StageRecord


def _epochs_text(rec: StageRecord | None, stage: StageConfig) -> str:
    if rec is None:
        t = stage.training
        return f"{t.epochs} planned" if t.max_steps is None else f"max_steps {t.max_steps}"
    if not rec.epochs:
        return "0"
    span = f"epoch_{rec.epochs[0]}" + (f"–epoch_{rec.epochs[-1]}" if len(rec.epochs) > 1 else "")
    return f"{len(rec.epochs)} ({span})"


def _not_done(run: RunData, index: int) -> str:
    """A stage stages.json does not list yet: the run's state for the stage it is in, else pending."""
    return run.state if index == len(run.stages) and run.state not in (PENDING, COMPLETED) else "pending"


def _score_after(run: RunData, rec: StageRecord | None, head: TaskInfo | None) -> str:
    """The headline task's primary score on the stage's last epoch ('—' until that checkpoint is evaluated)."""
    if rec is None or not rec.epochs or head is None:
        return "—"
    label = f"epoch_{max(rec.epochs)}"
    e = next((e for e in run.task_evals(head.name) if e.epoch == max(rec.epochs)), None)
    if e is None or e.score is None:
        return "—"
    return show_ci(e.score, run.interval(head.name, head.primary_metric, label), head.primary_metric)


def stage_rows(run: RunData, head: TaskInfo | None) -> list[list[str]]:
    """One row per stage of a staged run (run.yaml order), completed ones filled from stages.json."""
    done = {r.index: r for r in run.stages}
    rows = []
    for i, stage in enumerate(run.config.stages):
        rec = done.get(i)
        if rec is not None and rec.name != stage.name:  # stages.json no longer matches run.yaml
            rec = None
        t = stage.training
        rows.append([run.name, f"{i + 1}. {stage.name}", stage.dataset.name, stage.optimizer, order_text(t.order),
                     f"{t.learning_rate:g}", _epochs_text(rec, stage),
                     f"{rec.first_step + 1}–{rec.last_step}" if rec else _not_done(run, i),
                     "—" if rec is None or rec.final_loss is None else f"{rec.final_loss:.4g}",
                     _score_after(run, rec, head)])
    return rows


def stages_section(data: ReportData) -> Section | None:
    staged = [r for r in data.runs if r.config.stages]
    if not staged:
        return None
    head = data.headline
    after = f"{head.name} ({head.primary_metric}) after the stage" if head else "Score after the stage"
    rows = [row for r in staged for row in stage_rows(r, head)]
    intro = Para("Each staged run trains its stages in order in its own directory, each stage from the previous "
                 "stage's final adapter (optimizer `fresh`, or `carried` on with its moments); steps and epochs "
                 "count on across stages, so checkpoint `epoch_N` is also named `STAGE/epoch_K`.")
    return Section("Stages", [intro, Table(
        ["Run", "Stage", "Dataset", "Optimizer", "Order", "LR", "Epochs", "Steps", "Final loss", after], rows,
        f"Planned from `runs/<run>/run.yaml` (stages); completed stages from `runs/<run>/{STAGES_FILE}` (epochs "
        "and steps each published, steps counted from the run's first; final loss = the stage's last logged "
        "training loss); score after a stage = its last epoch's evaluation, [95 % interval] (`eval/epoch_N/`; "
        "— until evaluated).")])
