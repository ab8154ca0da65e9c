"""plan.md and the run table: what a plan says to the person who reads it before spending GPU-hours."""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunelab.data.ordering import order_text
from tunelab.forecast.deadline import RunTimeline
from tunelab.forecast.gpus import describe
from tunelab.fsutil import human_seconds
from tunelab.plan.deadline_md import deadline_lines, search_lines
from tunelab.plan.image_checks import image_lines
from tunelab.plan.storage import storage_lines
from tunelab.plan.validate import cluster_lines, nodes_text
from tunelab.rundir.estimate import RunEstimate

if TYPE_CHECKING:
    from tunelab.plan.planner import Plan
    from tunelab.rundir.config import RunConfig


def _joined(values: list[str]) -> str:
    """A value per stage, shown once when every stage has it (8×1, or 8×1→4×2)."""
    return values[0] if len(set(values)) == 1 else "→".join(values)


def plan_rows(plan: Plan) -> list[dict[str, str]]:
    """One row per run: what the table in the terminal and in plan.md show (a staged run: its stages in
    order, steps and time summed over them; a field that differs between stages shows each stage's value)."""
    swept = plan.spec.swept_factors() + (["prompt"] if "prompt" in plan.spec.factors else [])
    kinds = {"finetune": "fine-tuned", "control": "control", "eval_only": "eval-only"}
    placed = {r.run: r for r in plan.forecast.runs} if plan.forecast else {}
    rows = []
    for i, r in enumerate(plan.runs, 1):
        e = plan.estimates.get(r.name)
        time = time_text(e) if r.training else "eval only"
        where = {"where (start)": _placement_text(placed.get(r.name))} if plan.forecast is not None else {}
        rows.append({
            "#": str(i),
            "run": r.name,
            "type": kinds[r.kind],
            "model": r.model.name,
            "dataset": r.dataset.name,
            "factors": ", ".join(f"{k}={r.factors[k]}" for k in swept if k in r.factors) or "—",
            **({"stages": "→".join(s.name for s in r.stages) or "—"} if plan.spec.stages else {}),
            **_training_cells(r, e.processes if e else 1),
            "steps": str(e.steps) if e else "—",
            "peak/GPU (GiB)": (f"{e.peak_memory_gib:.1f}/{e.gpu_memory_gib:.1f}" if e and e.peak_memory_gib is not None
                               else "—"),
            "est. time (P10–P90)": time,
            **where,
        })
    return rows


def _training_cells(r: RunConfig, processes: int) -> dict[str, str]:
    """The batch, packing and attention of each training a run does (one value where its stages agree)."""
    trainings = r.trainings()
    if not trainings:
        return {"batch": "—", "packing": "—", "attention": "—"}
    shapes = [f"{t.batch_size}×{t.gradient_accumulation_steps}" + (f"×{processes}" if processes > 1 else "")
              for t in trainings]
    return {"batch": _joined(shapes), "packing": _joined(["on" if t.packing else "off" for t in trainings]),
            "attention": _joined([t.attention for t in trainings])}


def time_text(e: RunEstimate | None) -> str:
    """A run's predicted time with its interval ('4.1 min (3.0–5.6 min)'), or — without one."""
    if e is None or not e.seconds:
        return "—"
    r = e.time_range
    return human_seconds(e.seconds) + (f" ({human_seconds(r.p10_s)}–{human_seconds(r.p90_s)})" if r else "")


def _placement_text(r: RunTimeline | None) -> str:
    """Where the forecast places a run and when it starts ('GPU 2 (4.0 min)')."""
    if r is None or r.start_s is None:
        return "—"
    return f"{_devices_text(r.devices)} ({human_seconds(r.start_s)})"


def _devices_text(devices: list[str]) -> str:
    """The forecast's device ids in words: CPU, CPU share n, slot n (a scheduler's), node x (a cluster's), GPU n."""
    if not devices:
        return "after runs of unknown length"
    if devices[0] == "cpu":
        return "CPU"
    if devices[0].startswith("cpu"):
        return ", ".join(f"CPU share {int(d[3:]) + 1}" for d in devices)
    if devices[0].startswith("job"):
        return ", ".join(f"slot {int(d[3:]) + 1}" for d in devices)
    if devices[0].startswith("node:"):
        return nodes_text(devices)
    return "GPU " + ", ".join(devices)


def render_plan_md(plan: Plan) -> str:
    """plan.md. The sections that only format the plan's facts are made first; the two that read beyond them —
    the cluster (through its executor) and the run table (each run's trainings) — last, each put in its place."""
    head = _head_lines(plan)
    middle = _stage_lines(plan) + _resource_lines(plan) + _dataset_lines(plan) + _prompt_lines(plan)
    middle += _eval_lines(plan) + _resolution_lines(plan) + _truncation_lines(plan) + image_lines(plan.images)
    middle += _estimate_lines(plan) + gpu_lines(plan)
    tail = _schedule_lines(plan) + search_lines(plan.search) + deadline_lines(plan.deadline, plan.levers)
    tail += storage_lines(plan)
    if plan.warnings:
        tail += ["## Warnings", ""] + [f"- {w}" for w in plan.warnings] + [""]
    cluster = cluster_lines(plan.spec.resources)  # a cluster its executor reads (Ray): nodes, or unreachable
    rows = plan_rows(plan)
    runs = ["", "## Runs", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    return "\n".join(head + runs + ["| " + " | ".join(r.values()) + " |" for r in rows] + middle + cluster + tail)


def _head_lines(plan: Plan) -> list[str]:
    """The title, the run counts, the recipe, the naming and the factors."""
    spec = plan.spec
    lines = [f"# Plan: {spec.name}", ""]
    if spec.description:
        lines += [spec.description.strip(), ""]
    n_ft, n_ctl = len(plan.finetune_runs), len(plan.controls)
    n_ext = len(plan.runs) - n_ft - n_ctl
    lines += [
        f"**Runs:** {len(plan.runs)} ({n_ft} fine-tuned + {n_ctl} controls"
        + (f" + {n_ext} eval-only" if n_ext else "") + ")  ",
        f"**Recipe:** {plan.recipe}  ",
        f"**Naming:** `{spec.naming_pattern()}` (controls: `{{model}}_base`)",
        "",
        "## Factors",
        "",
        "| Factor | Levels |",
        "|---|---|",
        f"| model | {', '.join(spec.model_levels())} |",
        f"| dataset | {', '.join(spec.dataset_levels())} |",
    ]
    return lines + [f"| {k} | {', '.join(spec.prompt_names()) if k == 'prompt' else ', '.join(map(str, v))} |"
                    for k, v in spec.factors.items() if k not in ("model", "dataset")]


def _resource_lines(plan: Plan) -> list[str]:
    lines = ["", "## Resources verified", "", "| Model | Path | Type | Layers × hidden | Vocab | Weights | Chat template |",
             "|---|---|---|---|---|---|---|"]
    return lines + [f"| {name} | `{m.path}` | {m.model_type} | {m.layers} × {m.hidden} | {m.vocab_size} | "
                    f"{m.weights_bytes / 2**20:.1f} MiB | {'yes' if m.has_chat_template else 'no'} |"
                    for name, m in plan.models.items()]


def _estimate_lines(plan: Plan) -> list[str]:
    """The estimates table (each figure with its source) and the sweep's total."""
    lines = ["## Estimates", ""]
    target = plan.gpu.name if plan.gpu else "this machine's CPU"
    lines += [f"Target: {target}. Each figure names its source: measured history (the user-level history "
              "ledger) or a model.", ""]
    if plan.estimates:
        lines += ["Effective batch = micro-batch × accumulation × processes. Peak memory is per device; time is "
                  "the run's wall time; GPU-h = time × processes.", "",
                  "| Run | Micro-batch × accum × processes = effective batch | Strategy | Packing | "
                  "Tokens/micro-batch | Peak / GPU (GiB) | Memory source | Steps | Tokens/s (per device) | Time | "
                  "Time source | GPU-h | SLURM limit |", "|" + "---|" * 13]
        for e in plan.estimates.values():
            lines.append(
                f"| {e.run} | {e.micro_batch} × {e.gradient_accumulation_steps} × {e.processes} = {e.effective_batch} | "
                f"{e.strategy or 'single process'} | {'on' if e.packed else 'off'} | "
                f"{e.tokens_per_microbatch:,} | "
                + (f"{e.peak_memory_gib:.1f} / {e.gpu_memory_gib:.1f}" if e.peak_memory_gib is not None else "—")
                + f" | {e.memory_source} | {e.steps} | {f'{e.tokens_per_s:,.0f}' if e.tokens_per_s else '—'} | "
                f"{time_text(e)} | {e.time_source}{f'; interval: {e.time_range.basis}' if e.time_range else ''} | "
                f"{e.gpu_hours if e.gpu_hours is not None else '—'} | {e.slurm_time_limit or '—'} |")
        tot = plan.totals()
        lines += ["", f"**Total:** {human_seconds(tot['seconds']) if tot['seconds'] else '—'} of training"
                  + (f" ({tot['runs_without_time']} run(s) without a time estimate)" if tot["runs_without_time"] else "")
                  + (f", {tot['gpu_hours']} GPU-hours" if tot["gpu_hours"] is not None else ""), ""]
    return lines


def stage_rows(plan: Plan) -> list[dict[str, str]]:
    """A staged run's stages in training order, then its total: what plan.md and `plan --json` show."""
    rows = []
    for r in plan.finetune_runs:
        if not r.stages:
            continue
        e = plan.estimates.get(r.name)
        est = e.stages if e else []
        for i, s in enumerate(r.stages):
            t = s.training
            part = est[i] if i < len(est) else None
            rows.append({"run": r.name, "stage": f"{i + 1}. {s.name}", "dataset": s.dataset.name,
                         "epochs": str(t.epochs) + (f" (max {t.max_steps} steps)" if t.max_steps else ""),
                         "steps": str(part.steps) if part else "—", "order": order_text(t.order),
                         "learning rate": f"{t.learning_rate:g}", "optimizer": s.optimizer,
                         "batch": f"{t.batch_size}×{t.gradient_accumulation_steps}",
                         "est. time": human_seconds(part.seconds) if part and part.seconds else "—"})
        rows.append({"run": r.name, "stage": "total", "dataset": "", "epochs": "",
                     "steps": str(e.steps) if e else "—", "order": "", "learning rate": "", "optimizer": "",
                     "batch": "", "est. time": human_seconds(e.seconds) if e and e.seconds else "—"})
    return rows


def _stage_lines(plan: Plan) -> list[str]:
    rows = stage_rows(plan)
    if not rows:
        return []
    lines = ["", "## Stages", "", "Each run trains its stages in order in one job; a stage starts from the previous "
             "stage's adapter (optimizer: fresh, or carried from the previous stage). Steps and time are each "
             "stage's own; the run's are their sum.", "", "| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    for row in rows:
        cells = list(row.values())
        if row["stage"] == "total":
            cells = [f"**{c}**" if c else "" for c in cells]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _dataset_use(plan: Plan, name: str, eval_only: bool) -> str:
    """What a dataset is for: evaluation only, training + evaluation, or (staged) which stages train on it."""
    if eval_only:
        return "evaluation only"
    spec = plan.spec
    if not spec.stages:
        return "training + evaluation"
    runs_on = name in spec.dataset_levels()
    stages = [s.name for s in spec.stages if s.dataset == name or (s.dataset is None and runs_on)]
    parts = ([f"training (stage {', '.join(stages)})"] if stages else []) + (["evaluation"] if runs_on else [])
    return " + ".join(parts) or "evaluation (tasks)"


def _dataset_lines(plan: Plan) -> list[str]:
    lines = ["", "| Dataset | Format | train | validation | test | Used for |", "|---|---|---|---|---|---|"]
    for d in plan.datasets.values():
        n = d.counts
        lines.append(f"| {d.name} | {d.format} | {n.get('train', '—')} | {n.get('validation', '—')} | "
                     f"{n.get('test', '—')} | {_dataset_use(plan, d.name, d.eval_only)} |")
    lines += ["", "Data files (provenance):", "", "| Dataset | File | Rows | sha256 |", "|---|---|---|---|"]
    for d in plan.datasets.values():
        lines += [f"| {d.name} | `{f.path}` | {f.rows} | `{f.sha256}` |" for f in d.files]
    for d in plan.datasets.values():
        if d.split_record:
            lines.append(f"\nSplit of `{d.name}` made by tunelab, recorded once in `{d.split_record}` "
                         "(every run and evaluation reads it).")
    return lines + [""]


def _prompt_lines(plan: Plan) -> list[str]:
    names = plan.spec.prompt_names()
    if len(names) < 2:
        return []
    lines = ["Prompts swept:", "", "| Name | Template |", "|---|---|"]
    lines += [f"| {n} | `{(t or '(rows bring their own)')!r}` |" for n, t in names.items()]
    return lines + [""]


def _eval_lines(plan: Plan) -> list[str]:
    ev = plan.spec.eval
    lines = [f"Evaluation (inspect-ai; built-ins greedy, max {ev.max_tokens} tokens; task files with their own "
             f"generation settings; epochs: {ev.epochs}):", ""]
    for t in ev.resolved_tasks():
        if t.file:
            what = f"task file `{t.file}`" + (f", @task `{t.task}`" if t.task else "")
            if t.grader is not None:
                what += f", graded by `{t.grader if isinstance(t.grader, str) else t.grader.path}`"
        else:
            what = f"built-in `{t.builtin}` on `{t.dataset or 'each run’s dataset'}` / {t.split}"
        lines.append(f"- **{t.name}**: {what}" + (f", prompt `{t.prompt!r}`" if t.prompt else ""))
    if plan.spec.eval_only:
        lines.append("- eval-only models: " + ", ".join(f"{e.name} (`{e.path}`)" for e in plan.spec.eval_only))
    return lines + [""]


def _resolution_lines(plan: Plan) -> list[str]:
    if not plan.resolution:
        return []
    return (["Resolution (the smallest difference the evaluation can detect):", ""] + [f"- {n}" for n in plan.resolution]
            + [""])


def _truncation_lines(plan: Plan) -> list[str]:
    """Examples longer than max_seq_len per run and split: never silent."""
    if not plan.truncation:
        return []
    lines = ["Truncation (examples longer than max_seq_len lose the end of their answer):", "",
             "| Run | Split | Examples | Answer cut | No answer left | Longest (tokens) | max_seq_len |",
             "|---|---|---|---|---|---|---|"]
    for run in plan.finetune_runs:
        limits = {s.name: s.training.max_seq_len for s in run.stages}
        for t in plan.truncation.get(run.name, []):
            limit = limits[t.stage] if t.stage else run.training.max_seq_len if run.training else "—"
            lines.append(f"| {run.name}{f' / {t.stage}' if t.stage else ''} | {t.split} | {t.examples} | {t.cut} | "
                         f"{t.no_answer_left} | {t.longest} | {limit} |")
    return lines + [""]


def _schedule_lines(plan: Plan) -> list[str]:
    """Which run goes where and when (longest first), and the sweep's predicted makespan: the plan's forecast
    (forecast/sweeptime.py `plan_forecast`, the one run.yaml records), every run's training, evaluation and job
    start-ups included."""
    f = plan.forecast
    if f is None or not plan.estimates:
        return []  # nothing is estimated
    lines = [f"## Schedule ({plan.spec.resources.executor} executor)", ""]
    span = ("unknown (" + "; ".join(f.unknown) + ")" if f.makespan_s is None else
            f"{human_seconds(f.makespan_s)}" + (f" (P10–P90 {human_seconds(f.makespan_p10_s)}–"
                                                f"{human_seconds(f.makespan_p90_s)})"
                                                if f.makespan_p10_s is not None and f.makespan_p90_s is not None
                                                else ""))
    where = plan.cpu_sharing.line() + ". " if plan.cpu_sharing is not None else ""  # none where jobs run elsewhere
    lines += [f"{where}**Predicted makespan: {span}.** Each run's training job start, training, saves, evaluation "
              f"job start and evaluation, placed longest first on {f.devices_source}"
              + (f", at most {f.runs_per_device} run(s) per GPU where memory allows" if f.runs_per_device > 1 else "")
              + "." + (" The runs alone: the learning-rate search before them is priced below." if plan.search else ""),
              "", "| Run | Devices | Start | End |", "|---|---|---|---|"]
    for r in f.runs:
        end = human_seconds(r.end_s) if r.end_s is not None else "—"
        start = human_seconds(r.start_s) if r.start_s is not None else "—"
        lines.append(f"| {r.run} | {_devices_text(r.devices)} | {start} | {end} |")
    return lines + [""]


def gpu_notes(plan: Plan) -> list[str]:
    """One line per fact about GPUs and nodes: the node size (when it counted), runs spread over nodes, runs
    that do not fit the GPUs they ask for."""
    needs = [(name, e.gpus_needed) for name, e in plan.estimates.items() if e.gpus_needed is not None]
    if not plan.node_raises and not needs:
        return []
    notes = [f"a node has {plan.node.gpus} GPUs ({plan.node.source})"]
    notes += [r.text() for r in plan.node_raises]
    for name, need in needs:
        e = plan.estimates[name]
        notes.append(f"{name} does not fit its {e.processes} GPU(s) (peak {e.peak_memory_gib:.1f} GiB per GPU); "
                     f"{describe(need)}: set resources.gpus_per_run: {need.gpus_per_run}")
    return notes


def gpu_lines(plan: Plan) -> list[str]:
    """plan.md's "GPUs and nodes" section (nothing when every run fits the one node it asks for)."""
    notes = gpu_notes(plan)
    if not notes:
        return []
    return ["## GPUs and nodes", "",
            "A run that needs more GPUs than a node has spans nodes (resources.nodes_per_run, raised by the plan). "
            "A model that does not fit the GPUs a run asks for is planned on the fewest GPUs whose simulated "
            "FSDP-sharded peak fits: sharding divides the weights, LoRA parameters and optimizer state over the "
            "GPUs, while each GPU keeps its micro-batch's activations. Times on more GPUs assume the scaling "
            "efficiency stated beside them; measured history replaces the per-GPU speed where it exists.", ""] + \
        [f"- {n}" for n in notes] + [""]
