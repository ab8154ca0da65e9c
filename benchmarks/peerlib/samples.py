"""The smoke: tunelab's side for real on a few rows (`scaffold` and `train` timed as one command, in the caller's
caches), and every peer's parser on the output a real run of that peer wrote (samples/NAME/: output.log = what the
command printed, any file the parser reads at its path under the run's directory, COMMAND = how it was made). Times
in a sample are line numbers: the smoke checks parsing, never speed."""

from __future__ import annotations

import importlib
from pathlib import Path

from peerlib import registry, training
from peerlib.job import Job, prepare
from peerlib.measure import Line, Measured

SAMPLES = Path(__file__).resolve().parent / "samples"
SMOKE_WORDS = 160


def sample_measured(sample: Path) -> Measured:
    text = (sample / "output.log").read_text() if (sample / "output.log").is_file() else ""
    lines = [Line(float(i), t) for i, t in enumerate(text.splitlines())]
    return Measured(command=[(sample / "COMMAND").read_text().strip()], returncode=0, wall_s=float(len(lines)),
                    peak_pss_mib=0.0, lines=lines)


def parse_sample(name: str) -> str:
    """One line: what the parser read from the committed sample, or why it could not."""
    sample = SAMPLES / name
    if not sample.is_dir():
        return f"{name}: no committed sample"
    peer = importlib.import_module(registry.MODULES[name]).PEER
    log = peer.parse(sample_measured(sample), sample)
    if not log.step_times or len(log.losses) != len(log.step_times):
        raise SystemExit(f"{name}: its parser read {len(log.step_times)} steps and {len(log.losses)} losses "
                         f"from {sample}: the output format changed?")
    return (f"{name}: sample parsed: {len(log.step_times)} steps, loss {log.losses[0]:.3f} -> {log.losses[-1]:.3f}, "
            f"own tokens/s {log.own_tokens_per_s if log.own_tokens_per_s is None else round(log.own_tokens_per_s)}")


def parse_eval_samples() -> list[str]:
    """lm-eval's and inspect-ai's answers and accuracies, and oumi tune's trials, read from their samples."""
    from peerlib import inspect_hf, lmeval, oumi_tune

    lines = []
    for name, parser in (("lm-eval", lmeval), ("inspect-hf", inspect_hf)):
        answers, accuracy = parser.parse_answers(SAMPLES / name), parser.parse_accuracy(SAMPLES / name)
        if not answers or any(not a for a in answers.values()):
            raise SystemExit(f"{name}: its parser read no answers from {SAMPLES / name}: the output format changed?")
        lines += [f"{name}: sample parsed: {target}: {len(a)} answers, accuracy {accuracy.get(target)}"
                  for target, a in sorted(answers.items())]
    tuned = oumi_tune.parse_tune(sample_measured(SAMPLES / "oumi_tune"), SAMPLES / "oumi_tune")
    if tuned.best_learning_rate is None:
        raise SystemExit("oumi_tune: its parser found no completed trial in its sample: the output format changed?")
    lines.append(f"oumi_tune: sample parsed: {len(tuned.trials)} trials, best rate {tuned.best_learning_rate:.4g} "
                 f"at validation loss {tuned.best_value:.4f}")
    return lines


def smoke(out: Path) -> int:
    from peerlib.sweep_smoke import committed_lines

    print("\n".join(committed_lines()), flush=True)  # the whole sweep's lines lead, as in a full run
    inputs = prepare(out / "inputs", "tiny", SMOKE_WORDS)
    found = registry.find("tunelab")
    # the caller's caches, not a fresh home: a cold one would have `tunelab scaffold` time the job's shape from
    # scratch (tens of CPU seconds), which the smoke does not check; peerlib/isolation.py has its own test
    rows = training.compare([found], inputs, Job(threads=1), out / "runs", 1, out / "training_rows.jsonl",
                            scored=False, fresh_caches=False)
    if rows[0].error:
        raise SystemExit(f"tunelab's side failed: {rows[0].error}")
    for name in registry.TRAINERS[1:]:
        print(parse_sample(name), flush=True)
    print("\n".join(parse_eval_samples()), flush=True)
    return 0
