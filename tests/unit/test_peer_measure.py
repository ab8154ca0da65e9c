"""The peers benchmark's measuring and fairness mechanics (benchmarks/peerlib, issue 66), on real processes without
any peer installed: memory as PSS (a forked child's shared pages counted once), several commands run at once
(their overlap on one clock), Oumi's studies given a thread each when they run at once, tunelab's `scaffold`
inside the timed command, and a fresh home for every run that tunelab's own cache and history follow."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from peerlib import oumi_tune  # noqa: E402
from peerlib.isolation import fresh_home, kept_home  # noqa: E402
from peerlib.job import Inputs, Job  # noqa: E402
from peerlib.measure import Launch, run_all, run_measured, span, thread_env  # noqa: E402
from peerlib.tunelab_side import TunelabSide  # noqa: E402

MIB = 2**20
SHARED_MIB = 200
# a parent that touches SHARED_MIB of anonymous memory page by page, forks, and both hold it for 1.5 s (~7 samples
# at 0.2 s); `-S`: no site import, so each interpreter is small
FORK_SHARING = f"""
import os, time
buf = bytearray({SHARED_MIB} * {MIB})
buf[::4096] = b"\\x01" * (len(buf) // 4096)
pid = os.fork()
time.sleep(1.5)
if pid == 0:
    os._exit(0)
os.waitpid(pid, 0)
"""
# what one `python -S` interpreter may hold beside the buffer (it holds ~8 MiB RSS, a few MiB of it private): a
# bound on what either sum adds to the buffer's pages, generous for another libc or build
INTERPRETER_MIB = 40


def test_a_forked_childs_shared_pages_count_once_in_pss_and_twice_in_summed_rss(tmp_path):
    measured = run_measured([sys.executable, "-S", "-c", FORK_SHARING], thread_env(1), tmp_path)
    assert measured.returncode == 0, measured.output
    # by hand: the buffer's pages are shared by parent and child after the fork; RSS counts them in each process
    # (2 × 200 MiB), PSS half in each (200 MiB in the sum); each interpreter adds at most INTERPRETER_MIB
    assert measured.peak_rss_mib >= 2 * SHARED_MIB
    assert SHARED_MIB <= measured.peak_pss_mib <= SHARED_MIB + 2 * INTERPRETER_MIB
    assert measured.peak_pss_until(measured.wall_s) == pytest.approx(measured.peak_pss_mib)
    assert measured.sampler_cpu_s > 0  # the reads' own CPU, said
    walls_only = run_measured([sys.executable, "-S", "-c", FORK_SHARING], thread_env(1), tmp_path, memory=False)
    assert walls_only.returncode == 0 and walls_only.pss == [] and walls_only.peak_pss_mib == 0
    assert walls_only.sampler_cpu_s == 0  # nothing read beside a comparison of walls


RENDEZVOUS = """
import pathlib, sys, time
here, me, other = pathlib.Path(sys.argv[1]), sys.argv[2], sys.argv[3]
(here / me).touch()
deadline = time.monotonic() + 20
while not (here / other).exists():
    if time.monotonic() > deadline:
        sys.exit(3)  # the other never ran while this one did
    time.sleep(0.01)
"""


def test_run_all_at_once_runs_the_commands_together_and_one_after_the_other_apart(tmp_path):
    env = thread_env(1)

    def launches(where: Path, a: str, b: str) -> list[Launch]:
        where.mkdir()
        return [Launch([sys.executable, "-S", "-c", RENDEZVOUS, str(where), a, b], env, where, where / f"{a}.log"),
                Launch([sys.executable, "-S", "-c", RENDEZVOUS, str(where), b, a], env, where, where / f"{b}.log")]

    # each waits for the other's mark: both exit 0 only if they were alive at the same time
    together = run_all(launches(tmp_path / "at-once", "a", "b"), at_once=True)
    assert [m.returncode for m in together] == [0, 0]
    assert max(m.started for m in together) < min(m.ended for m in together)  # their intervals overlap
    assert span(together) == pytest.approx(max(m.ended for m in together) - min(m.started for m in together))
    # one after the other: the second starts after the first ended (the first finds its partner's mark made
    # beforehand, so it need not wait)
    (tmp_path / "apart").mkdir()
    (tmp_path / "apart" / "b").touch()
    (tmp_path / "apart" / "c").touch()
    first, second = run_all([
        Launch([sys.executable, "-S", "-c", RENDEZVOUS, str(tmp_path / "apart"), "a", "b"], env, tmp_path),
        Launch([sys.executable, "-S", "-c", RENDEZVOUS, str(tmp_path / "apart"), "d", "c"], env, tmp_path)],
        at_once=False)
    assert (first.returncode, second.returncode) == (0, 0)
    assert first.ended <= second.started
    assert (tmp_path / "at-once" / "a.log").is_file() and (tmp_path / "at-once" / "b.log").is_file()


def test_oumis_studies_at_once_get_a_thread_each_on_the_same_cores_and_one_after_the_other_all_of_them(tmp_path):
    commands = {"8": (["oumi", "tune", "-c", "tune.yaml"], tmp_path / "lora_rank-8"),
                "16": (["oumi", "tune", "-c", "tune.yaml"], tmp_path / "lora_rank-16")}
    cpus = sorted(os.sched_getaffinity(0))
    pinned = ["taskset", "-c", ",".join(map(str, cpus[:2]))] if len(cpus) > 2 else []  # tunelab's side's rule
    at_once = oumi_tune.level_launches(commands, 2, True, tmp_path / "home-a")
    assert [x.command for x in at_once] == [[*pinned, "oumi", "tune", "-c", "tune.yaml"]] * 2
    assert [x.env["OMP_NUM_THREADS"] for x in at_once] == ["1", "1"]  # 2 threads shared by 2 studies
    assert [x.cwd for x in at_once] == [tmp_path / "lora_rank-8", tmp_path / "lora_rank-16"]
    assert at_once[0].env["HOME"] == at_once[1].env["HOME"] == str((tmp_path / "home-a").resolve())
    apart = oumi_tune.level_launches(commands, 2, False, tmp_path / "home-b")
    assert [x.command for x in apart] == [["oumi", "tune", "-c", "tune.yaml"]] * 2
    assert [x.env["OMP_NUM_THREADS"] for x in apart] == ["2", "2"]
    assert oumi_tune.level_launches(commands, 5, True, tmp_path / "home-c")[0].env["OMP_NUM_THREADS"] == "2"


# a stand-in for the interpreter: records each call; `scaffold` makes the one run it would, or fails on demand
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$(dirname "$0")/calls.txt"
if [ "$3" = scaffold ]; then
    [ -e "$(dirname "$0")/fail" ] && exit 4
    mkdir -p "$(dirname "$4")/runs/tiny_r16" && touch "$(dirname "$4")/runs/tiny_r16/run.yaml"
fi
"""


def test_tunelabs_timed_command_is_scaffold_then_train_and_stops_when_scaffold_fails(tmp_path):
    python = tmp_path / "bin" / "python"
    python.parent.mkdir()
    python.write_text(FAKE_PYTHON)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    inputs = Inputs(model="tiny", model_dir=tmp_path / "model", data_dir=tmp_path / "data")
    out = tmp_path / "run"
    command = TunelabSide().train_command(inputs, Job(), out, python)
    exp = out / "experiment"
    assert not (exp / "runs").exists()  # nothing scaffolded before the clock starts
    measured = run_measured(command, thread_env(1), out)
    assert measured.returncode == 0, measured.output
    calls = (python.parent / "calls.txt").read_text().splitlines()
    assert calls == [f"-m tunelab scaffold {exp / 'experiment.yaml'} --force",
                     f"-m tunelab train {exp / 'runs' / 'tiny_r16' / 'run.yaml'}"]
    (python.parent / "calls.txt").unlink()
    (python.parent / "fail").touch()
    failed = run_measured(TunelabSide().train_command(inputs, Job(), tmp_path / "again", python), thread_env(1),
                          tmp_path / "again")
    assert failed.returncode == 4
    assert (python.parent / "calls.txt").read_text().splitlines() == [
        f"-m tunelab scaffold {tmp_path / 'again' / 'experiment' / 'experiment.yaml'} --force"]


def test_a_fresh_home_holds_tunelabs_cache_and_history_and_is_never_reused(tmp_path, monkeypatch):
    from tunelab.diskcache import cache_dir
    from tunelab.ledger.history import history_path

    env = fresh_home(tmp_path / "home")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    home = (tmp_path / "home").resolve()
    assert cache_dir().resolve().is_relative_to(home) and history_path().resolve().is_relative_to(home)
    assert Path.home() == home and not any(home.iterdir())  # made empty
    assert {"HF_HOME", "HF_DATASETS_CACHE", "XDG_CACHE_HOME", "TRITON_CACHE_DIR"} <= set(env)
    with pytest.raises(FileExistsError):
        fresh_home(tmp_path / "home")
    (home / "left-by-a-warm-up").write_text("x")  # --warm-caches: the home an untimed run filled is kept
    assert kept_home(tmp_path / "home") == env and (home / "left-by-a-warm-up").is_file()


def test_the_search_reports_tunelab_against_oumi_both_ways_by_the_median_walls():
    from peerlib.search import SearchResult
    from peerlib.summary import search_lines, search_table

    def row(tool: str, repeat: int, wall: float, loss: float) -> SearchResult:
        return SearchResult(tool, repeat, wall_s=wall, best={"8": (1e-3, loss), "16": (2e-3, loss + 0.1)}, trials=8)

    rows = [row("tunelab", 0, 30.0, 4.40), row("oumi", 0, 40.0, 4.45), row("oumi at once", 0, 20.0, 4.47),
            row("tunelab", 1, 34.0, 4.40), row("oumi", 1, 42.0, 4.44), row("oumi at once", 1, 24.0, 4.46),
            row("tunelab", 2, 32.0, 4.40), row("oumi", 2, 41.0, 4.43), row("oumi at once", 2, 22.0, 4.48)]
    # by hand: medians tunelab 32, oumi 41, oumi at once 22; each repeat's best loss (its rank 8's here), their
    # median and the lowest: tunelab 4.40 every repeat, oumi 4.45/4.44/4.43, oumi at once 4.47/4.46/4.48
    assert search_lines(rows) == [
        "search: tunelab ÷ oumi = 1.28x (wall to the best rates, median of 3, cold caches; a repeat's best validation "
        "loss, median (lowest) over the repeats: tunelab 4.4000 (4.4000), oumi 4.4400 (4.4300))",
        "search: tunelab ÷ oumi at once = 0.69x (wall to the best rates, median of 3, cold caches; a repeat's best "
        "validation loss, median (lowest) over the repeats: tunelab 4.4000 (4.4000), oumi at once 4.4700 (4.4600))"]
    assert "median of 3, warm caches;" in search_lines(rows, warm=True)[0]
    assert len(search_table(rows).splitlines()) == 2 + 9
    assert "wall s (cold caches)" in search_table(rows) and "wall s (warm caches" in search_table(rows, warm=True)
    failed = [*rows[:2], SearchResult("oumi at once", 0, error="rank 8: exit 1: boom")]
    assert search_lines(failed)[1] == "search: oumi at once failed: rank 8: exit 1: boom"


def test_the_search_runs_only_the_tools_asked_and_says_when_none_of_them_searches(tmp_path):
    from peerlib.job import Job
    from peerlib.search import Search, compare

    rows, lines = compare(None, Job(threads=1), Search(), tmp_path, 3, Path(sys.executable), ("torchtune",))  # type: ignore[arg-type]
    assert rows == [] and lines == ["search: nothing to run: --tools torchtune names neither tunelab nor oumi"]
    assert not (tmp_path / "search").exists()  # nothing started


def test_the_evaluation_routes_and_the_sweep_experiment_are_chosen_by_flags_and_refused_elsewhere(capsys):
    import peers
    from peerlib import evaluation

    args = peers.parse(["--parts", "evaluation", "--models", "sweep", "--eval-modes", "tunelab,lm-eval API"])
    assert args.models == [evaluation.SWEEP] and args.eval_modes == ("tunelab", "lm-eval API")
    assert peers.parse(["--parts", "evaluation"]).eval_modes == evaluation.MODES
    for argv, said in ((["--parts", "training", "--models", "sweep"], "--models sweep: the evaluation comparison"),
                       (["--parts", "evaluation", "--eval-modes", "tunelab,vllm"], "--eval-modes: unknown vllm")):
        with pytest.raises(SystemExit):
            peers.parse(argv)
        assert said in capsys.readouterr().err
