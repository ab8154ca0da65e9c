"""The fixed cost of a training step on this CPU, part by part: aten operators dispatched (a proxy of a GPU's kernel
launches), device-to-host syncs and host milliseconds per step, for small random-init Llamas of several depths and
two LoRA target sets, so the fixed part's growth with layers and adapted modules shows.

    python benchmarks/step_cost.py [--out DIR] [--layers 2 4 8] [--hidden 256] [--steps 3] [--smoke]

Each configuration trains two warm-up steps with the job's own trainer (train/trainer.py), then `steps` more through
the Trainer's loop under torch.profiler with tunelab's callback attached and a log at every step
(train/profile.py; the same as `python -m tunelab.train.probe_steps RUN_YAML --profile=DIR`). Its files (trace,
per-operator table, per-part summary) go to OUT/<config>/. The counts do not move with other work on the machine;
the milliseconds do (say the machine's load beside them: it is printed first and last).

--smoke: 1 and 2 layers, hidden 64, all-linear only, 2 steps (tests/e2e/test_probe_profile.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path
from typing import Any

TARGETS = {"all-linear": "all-linear", "q,v": ["q_proj", "v_proj"]}
ADAPTED_PER_LAYER = {"all-linear": 7, "q,v": 2}
TRL_HEAD = "all-linear, TRL head"  # the deepest all-linear model again, its loss from TRL's fused LM head  # a Llama layer's linear modules: q k v o gate up down
WORDS = 400


def run_config(root: Path, layers: int, hidden: int, targets: str) -> Any:
    """A tiny run of the job's shape: the tiny Llama (models/tiny.py) at this depth and width, LoRA rank 8 on
    `targets`, micro-batch 8 of the capitalization words, logging every step."""
    from tunelab.data.capitalization import make_capitalization_dataset
    from tunelab.models.tiny import build_tiny_model
    from tunelab.rundir.config import RunConfig

    model = root / "models" / f"L{layers}-h{hidden}"
    if not (model / "config.json").is_file():
        build_tiny_model(model, layers=layers, hidden=hidden, seed=0)
    data = make_capitalization_dataset(5, WORDS, root / "data", 0.8, seed=0)  # the same words each time
    training = {"batch_size": 8, "max_seq_len": 64, "lora_rank": 8, "logging_steps": 1, "max_steps": 2,
                "learning_rate": 0.002, "lora_target_modules": TARGETS[targets]}
    name = f"L{layers}-{targets.replace(',', '')}"
    return RunConfig(name=name, kind="finetune", experiment="step-cost", experiment_dir=str(root / "exp"),
                     model={"name": "tiny", "path": str(model)}, dataset={"name": "caps", "path": str(data)},
                     prompt="Capitalize: {input}", training=training)


def profile_config(root: Path, out: Path, layers: int, hidden: int, targets: str, steps: int,
                   trl_head: bool = False) -> Any:
    """Two warm-up steps, then `steps` profiled ones (train/profile.py): the StepProfile. `trl_head`: the loss from
    TRL's fused LM head, as a GPU run computes it (train/losses.py), instead of the model's own (a CPU's)."""
    from tunelab.train.profile import profile_loop
    from tunelab.train.trainer import build_trainer

    cfg = run_config(root, layers, hidden, targets)
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    trainer, _, _ = build_trainer(cfg)
    trainer.plain_loss = not trl_head
    trainer.train()
    return profile_loop(trainer, out / (cfg.name + ("-trlhead" if trl_head else "")), steps)


def summary_row(layers: int, targets: str, profile: Any) -> str:
    from tunelab.train.profile_report import Part

    adapted = layers * ADAPTED_PER_LAYER["all-linear" if targets == TRL_HEAD else targets]
    tunelab = [p for p in profile.parts if p.owner == "tunelab"]
    parts = (Part.FORWARD, Part.BACKWARD, Part.CLIP, Part.OPTIMIZER)
    return (f"{layers:>6} {targets:<21}{adapted:>8}{profile.ops:>9.0f}"
            + "".join(f"{profile.part(p).ops:>9.0f}" for p in parts)
            + f"{profile.syncs:>7.0f}{sum(p.ops for p in tunelab):>9.0f}{sum(p.syncs for p in tunelab):>10.0f}"
            + f"{sum(p.host_ms for p in tunelab):>10.2f}{profile.step_ms:>10.1f}")


HEADER = (f"{'layers':>6} {'targets':<21}{'adapted':>8}{'ops':>9}{'forward':>9}{'backward':>9}{'clip':>9}"
          f"{'AdamW':>9}{'syncs':>7}{'tl ops':>9}{'tl syncs':>10}{'tl ms':>10}{'step ms':>10}")


def growth(rows: dict[tuple[int, str], Any]) -> list[str]:
    """Operators per step added by a layer (all-linear) and by an adapted module (all-linear against q,v)."""
    lines = []
    deep = sorted(layers for layers, t in rows if t == "all-linear")
    if (deep[-1], TRL_HEAD) in rows:
        head, plain = rows[(deep[-1], TRL_HEAD)], rows[(deep[-1], "all-linear")]
        lines.append(f"TRL's fused LM head against the model's own loss ({deep[-1]} layers): "
                     f"{head.ops - plain.ops:+.0f} operators, {head.syncs - plain.syncs:+.0f} syncs per step")
    if len(deep) >= 2:
        a, b = deep[0], deep[-1]
        per_layer = (rows[(b, "all-linear")].ops - rows[(a, "all-linear")].ops) / (b - a)
        lines.append(f"operators per step per layer (all-linear, {a} to {b} layers): {per_layer:.0f}")
    for layers in deep:
        if (layers, "q,v") in rows:
            extra = (rows[(layers, "all-linear")].ops - rows[(layers, "q,v")].ops) / (5 * layers)
            lines.append(f"operators per step per adapted module ({layers} layers, all-linear against q,v): "
                         f"{extra:.1f}")
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None,
                    help="where each configuration's profile goes (default: a new temp dir, printed)")
    ap.add_argument("--layers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--hidden", type=int, default=256)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="1 and 2 layers, hidden 64, all-linear, 2 steps")
    args = ap.parse_args(argv)
    from tunelab.compat import quiet_hf_progress_bars, quiet_known_library_warnings

    quiet_hf_progress_bars()
    quiet_known_library_warnings()
    layers, hidden, steps = (([1, 2], 64, 2) if args.smoke else (args.layers, args.hidden, args.steps))
    targets = ["all-linear"] if args.smoke else list(TARGETS)
    out = args.out or Path(tempfile.mkdtemp(prefix="step-cost-profiles-"))
    print(f"load before: {Path('/proc/loadavg').read_text().strip()}; profiles in {out}")
    with tempfile.TemporaryDirectory(prefix="step-cost-") as scratch:  # the models and runs profiled: not kept
        root = Path(scratch)
        rows = {(n, t): profile_config(root, out, n, hidden, t, steps) for n in layers for t in targets}
        if not args.smoke:
            rows[(max(layers), TRL_HEAD)] = profile_config(root, out, max(layers), hidden, "all-linear", steps, True)
    for n, t in rows:
        name = f"L{n}-all-linear-trlhead" if t == TRL_HEAD else f"L{n}-{t.replace(',', '')}"
        print(f"\n## {n} layers, hidden {hidden}, LoRA r8 on {t}")
        print((out / name / "parts.txt").read_text(), end="")
    print(f"\nper step ({steps} profiled steps each; tl: tunelab's own parts, counting and callbacks):")
    print(HEADER)
    for (n, t), profile in rows.items():
        print(summary_row(n, t, profile))
    for line in growth(rows):
        print(line)
    print(f"load after: {Path('/proc/loadavg').read_text().strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
