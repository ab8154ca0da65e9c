"""`tunelab probe` (a few real steps of each run shape, into the history) and `tunelab history` (what the
planner knows, and where each row came from)."""

from __future__ import annotations

import os
from pathlib import Path

import typer

from tunelab.cli.common import EXECUTOR_METAVAR, add_commands, emit, executor_option, json_option, stdout_to_stderr
from tunelab.console import data_table, say, show
from tunelab.errors import TunelabError
from tunelab.spec.resources import ExecutorKind


def run_probe(spec: Path, quiet: bool = False, find_max_batch: bool = False,
              executor: ExecutorKind = ExecutorKind.LOCAL, results: Path | None = None) -> list:
    """Probe every distinct run shape of the spec on this machine; one progress line per shape."""
    from tunelab.estimate.probe import caveat, probe_runs
    from tunelab.plan.planner import make_plan

    plan = make_plan(spec, estimates=False)

    def progress(i: int, n: int, shape, result) -> None:
        if quiet:
            return
        if result is None:
            say("probe {}/{}: {} ({} run(s)) …", i, n, shape.label(), len(shape.runs))
        else:
            mem = f", peak {result.peak_memory_gib:.2f} GiB ({result.memory_kind})" if result.peak_memory_gib else ""
            split = (f", step = {result.fixed_s * 1000:.1f} ms + {result.per_token_s * 1e6:.2f} µs/token"
                     if result.fixed_s is not None and result.per_token_s is not None else "")
            largest = f", largest micro-batch that ran: {result.max_micro_batch}" if find_max_batch else ""
            say("  {:,.0f} tokens/s on {}{}{}{}", result.tokens_per_s, result.device, split, mem, largest)
            if result.generation is not None:
                g, batch = result.generation, max(p.batch for p in result.generation.points)
                say("  generation: prefill {:,.0f} tokens/s, decode {:,.0f} tokens/s at batch {}",
                    g.prefill_tokens_per_s, g.decode_tokens_per_s(batch), batch)
            if (line := caveat(shape, result)) is not None:
                say("{}", line)

    if find_max_batch:
        _check_find_max_batch()
    if results is not None:  # inside a probe job: measure and write the results, record nothing
        from tunelab.estimate.probe import measure_shapes
        from tunelab.rundir.probe import write_probe_results

        pairs = list(measure_shapes(plan.finetune_runs, progress, find_max_batch))
        write_probe_results(results, [(shape.key, result) for shape, result in pairs])
        return []
    from tunelab.execute.executors import executor_class, executor_named

    if executor_class(executor).detached:  # a scheduler's: one short job where the runs' jobs will run
        from tunelab.estimate.probe_slurm import probe_on_slurm

        return probe_on_slurm(plan.finetune_runs, plan.spec_path, plan.experiment_dir, executor_named(executor),
                              say=lambda text: say("{}", text))
    return probe_runs(plan.finetune_runs, plan.spec_path, progress, find_max_batch)


def _check_find_max_batch() -> None:
    """--find-max-batch asks how much fits in GPU memory: refused without a GPU (the test knob aside)."""
    from tunelab.catalog import nvidia_driver_present
    from tunelab.faults import FAULT_OOM_ENV

    if not nvidia_driver_present() and not os.environ.get(FAULT_OOM_ENV):
        raise TunelabError("--find-max-batch finds the largest micro-batch that fits in GPU memory: it needs a "
                           "GPU (on a CPU memory is not the limit); run it on the GPU the jobs use, or use "
                           "`tunelab estimate` for the simulated figure", field="--find-max-batch")


def probe_cmd(
    spec: Path = typer.Argument(..., help="experiment.yaml"),
    json_out: bool = json_option("one history row per shape probed"),
    find_max_batch: bool = typer.Option(False, "--find-max-batch", help="On a GPU: also find the largest "
                                        "micro-batch that really fits, by bisection with real steps (stored "
                                        "beside the simulator's figure)."),
    executor: ExecutorKind = typer.Option(ExecutorKind.LOCAL, "--executor", parser=executor_option,
                                          metavar=EXECUTOR_METAVAR, help="local: here; slurm: one short job on "
                                          "the partition the runs use (resources.slurm), recorded when it ends."),
    results: Path | None = typer.Option(None, "--results", hidden=True, help="Inside a probe job: write the "
                                           "measurements here instead of recording them."),
) -> None:
    """Time a few real training steps of each run shape and record them in the history.

    Run a few real optimizer steps of each distinct run shape (model, data, micro-batch, max_seq_len,
    packing, LoRA shape, checkpointing, dtype) on this machine, at the planned micro-batch and twice it, and
    record tokens/s, the fixed and per-token step cost and peak memory in the history: plans then have a
    measured time on a fresh machine. Each model's batched generation is timed too (prefill tokens/s, a
    decode step's cost): evaluation's predicted time uses it. Seconds per shape on the demo's CPU; Ctrl-C keeps
    the shapes done."""
    with stdout_to_stderr(json_out):
        rows = run_probe(spec, find_max_batch=find_max_batch, executor=executor, results=results)
    if results is not None:
        say("wrote {}", results)
    elif json_out:
        from tunelab.mcp.models import ProbeOut

        emit(ProbeOut(shapes=rows))
    else:
        say("{} shape(s) probed; `tunelab plan {}` now uses them", len(rows), spec)


def history_cmd(
    json_out: bool = json_option("every row with every field"),
    model: str | None = typer.Option(None, "--model", help="Only rows of this model (substring, any case)."),
    gpu: str | None = typer.Option(None, "--gpu", help="Only rows of this device (substring, e.g. H100 or cpu)."),
) -> None:
    """List what the planner knows from past runs, and where each row came from.

    What the planner knows: every run tunelab trained (measured), probed or ingested, with where it came
    from (file, line or key), its speed, peak memory, final loss and the fields its source lacked; then the
    generation rows evaluation's predicted time rests on (probed generations, finished evaluations)."""
    from tunelab.ledger.history import history_path, load

    rows = [r for r in load(everything=True)
            if (not model or model.lower() in (r.model or "").lower())
            and (not gpu or gpu.lower() in (r.device or "").lower())]
    if json_out:
        from tunelab.mcp.models import HistoryOut

        emit(HistoryOut(rows=rows))
        return
    if not rows:
        say("no history rows{} in {}", " matching" if model or gpu else "", history_path())
    else:
        _history_table(rows)
    _generation_table(model, gpu)


def _history_table(rows: list) -> None:
    from tunelab.ledger.history import load_label

    show(data_table(("kind", "model", "device", "tokens/s", "load", "peak GiB", "final loss", "steps", "from"),
                    [(r.kind, r.model or "?", r.device or "?", f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "—",
                      load_label(r), f"{r.peak_memory_gib:.2f}" if r.peak_memory_gib else "—",
                      f"{r.final_loss:.4f}" if r.final_loss is not None else "—", str(r.steps or "—"),
                      r.origin_where or r.key) for r in rows[-50:]]))
    if len(rows) > 50:
        say("(last 50 of {} rows; --json for all)", len(rows))


def _generation_table(model: str | None, gpu: str | None) -> None:
    """The history's generation rows (ledger/generation.py): what evaluation's predicted time rests on."""
    from tunelab.ledger.generation import load

    rows = [r for r in load() if (not model or model.lower() in r.model_path.lower())
            and (not gpu or gpu.lower() in (r.device or "").lower())]
    if not rows:
        return
    say("generation (evaluation's predicted time rests on these):")

    def speed(r) -> str:
        g = r.speed()
        if g is not None:
            return (f"prefill {g.prefill_tokens_per_s:,.0f} tok/s, step {g.decode_fixed_s * 1e3:.2f} ms + "
                    f"{g.decode_row_s * 1e3:.3f} ms/row")
        return f"{r.samples} samples, {r.generated_tokens} tokens in {r.wall_share_s() or 0:.1f} s" + (
            f" ({r.task})" if r.task else "")

    show(data_table(("kind", "model", "device", "measured", "from"),
                    [(str(r.origin), r.model_path, r.device or "?", speed(r), r.origin_where or r.key)
                     for r in rows[-50:]]))


def adopt_cmd(
    sources: list[Path] = typer.Argument(..., help="Run directories trained elsewhere: HF Trainer output dirs "
                                         "(TRL, axolotl, LLaMA-Factory) or torchtune output dirs (epoch_N/ + slurm-*.out)."),
    out: Path = typer.Option(..., "--out", help="The experiment directory to create or add to."),
    spec: Path = typer.Option(..., "--spec", help="experiment.yaml giving the base model(s), data, prompt and "
                              "evaluation tasks (its factors are not expanded: the adopted runs are the design)."),
    model: Path | None = typer.Option(None, "--model", help="The base model dir the adapters were trained on "
                                         "(default: the spec's model)."),
    json_out: bool = json_option("the runs adopted and the sources skipped"),
) -> None:
    """Make runs trained elsewhere runs of a tunelab experiment.

    Make runs trained elsewhere runs of a tunelab experiment: metrics, checkpoints (verified adapters, copied),
    factors read from what differs between their configs, base-model controls. Then `tunelab eval OUT` and
    `tunelab report OUT` work on them. Source directories are never modified."""
    from tunelab.adopt.write import adopt

    with stdout_to_stderr(json_out):
        result = adopt(sources, out, spec, model)
    if json_out:
        from tunelab.mcp.models import AdoptOut

        emit(AdoptOut.of(result, str))
        return
    for problem in result.problems:
        say("[yellow]skipped:[/yellow] {}", problem)
    say("adopted {} run(s) into {}: {}; next: tunelab eval {}", len(result.adopted), result.experiment_dir,
        ", ".join(result.adopted), out)


def register(app: typer.Typer) -> None:
    add_commands(app, {"probe": probe_cmd, "history": history_cmd, "adopt": adopt_cmd})


__all__ = ["register", "run_probe", "TunelabError"]
