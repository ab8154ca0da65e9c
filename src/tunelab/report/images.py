"""The report's "Image answers" section: a few test pictures of an image task with the expected answer, the best
fine-tuned run's and the control's, so a reader sees what the scores mean (scores.json's per-sample records; one PNG of
thumbnails under report/figures/)."""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw

from tunelab.report.data import ReportData, RunData
from tunelab.report.document import Figure, Section, Table
from tunelab.stats.records import SampleValue

SHOWN = 6
THUMB = 96
FIGURE_NAME = "image_answers.png"


def _final(run: RunData, task: str) -> list[SampleValue]:
    """The run's per-sample records of the task at its last evaluated label (base for a control)."""
    labels = [label for (label, t) in run.samples if t == task]
    if not labels:
        return []
    last = max(labels, key=lambda lb: (lb.startswith("epoch_"), int(lb.split("_")[1]) if lb.startswith("epoch_")
                                       and lb.split("_")[1].isdigit() else -1))
    return run.samples[(last, task)]


def _draw(rows: list[list[str]], images: list[str], path: Path) -> None:
    """Thumbnails in a row, each with the expected, the fine-tuned and the control answers under it."""
    line = 12
    sheet = Image.new("RGB", (len(rows) * (THUMB + 8) + 8, THUMB + 4 * line + 16), (255, 255, 255))
    draw = ImageDraw.Draw(sheet)
    for i, (row, image) in enumerate(zip(rows, images)):
        x = 8 + i * (THUMB + 8)
        with Image.open(image) as im:
            sheet.paste(im.convert("RGB").resize((THUMB, THUMB)), (x, 8))
        for k, (who, text) in enumerate(zip(("want", "tuned", "base"), row[1:])):
            draw.text((x, THUMB + 12 + k * line), f"{who} {text}"[:16], fill=(0, 0, 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path, format="PNG")


def image_answers(data: ReportData, best: list[RunData], figures_dir: Path) -> Section | None:
    """The section, or None when the headline task has no image samples (or no best run and control)."""
    task = data.eval_task
    if task is None or not best or not data.controls:
        return None
    tuned = {s.id: s for s in _final(best[0], task)}
    control = {s.id: s for s in _final(data.controls[0], task)}
    shown = [s for i, s in sorted(tuned.items(), key=lambda kv: (isinstance(kv[0], str), kv[0])) if s.images and i in control][:SHOWN]
    if not shown:
        return None
    images = [(s.images or [""])[0] for s in shown]
    rows = [[f"`{Path(p).name}`", s.expected or "?", s.answer or "∅", control[s.id].answer or "∅"]
            for p, s in zip(images, shown)]
    blocks: list = []
    try:
        _draw(rows, images, figures_dir / FIGURE_NAME)
        blocks.append(Figure(f"figures/{FIGURE_NAME}", f"The first {len(rows)} test pictures of `{task}`: the "
                             f"expected answer, {best[0].name}'s (tuned) and {data.controls[0].name}'s (base).",
                             alt="image answers"))
    except OSError:  # a picture moved since the evaluation: the table still says what was answered
        pass
    table = Table(["Image", "Expected", best[0].name, data.controls[0].name], rows,
                  caption="answers from each run's scores.json (per sample)")
    return Section("Image answers", [*blocks, table])
