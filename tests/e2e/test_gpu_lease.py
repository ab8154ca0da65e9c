"""The GPU lease rehearsed on this machine's CPU (scripts/gpu-lease; docs/benchmarks.md, "GPU lease"): `prepare`
builds the carry from an image's `pip freeze` through tunelab's wheelhouse code, and `run --cpu-smoke`, in a
Python that holds only the image's packages, installs it offline and measures the kit's smoke rows.

The image here is the lent machine's recorded one (its freeze in the reference folder) as far as this machine
has it: a venv seeing only this venv's distributions of the names that freeze lists (envview.py), at this
venv's versions (torch 2.13.0 CPU for the image's 2.11.0 CUDA build; transformers and peft, which the image has
below tunelab's ranges, are then kept, not carried), for this machine's Python and platform. So what the carry
proves is by name: with the image's packages and the carry alone, nothing else on sys.path, every row trains.
Needs the package index (PyPI); skips without it."""

from __future__ import annotations

import json
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import pytest
from envview import here_distributions, view_env
from packaging.utils import canonicalize_name
from test_wheelhouse import index_reachable, node_env  # noqa: F401 (index_reachable: a fixture, used by name)

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import gpu_truth  # noqa: E402
from gpu_truth_grid import SMOKE_ROWS  # noqa: E402
from gpu_truth_records import load_kit  # noqa: E402

from tunelab.wheelhouse.plan import parse_freeze  # noqa: E402
from tunelab.wheelhouse.target import this_machine  # noqa: E402

pytestmark = [pytest.mark.slow, pytest.mark.rehearsal]  # `make test-rehearsals`: before a lease, outside make test

ROOT = Path(__file__).resolve().parents[2]
LEASE = ROOT / "scripts" / "gpu-lease"
IMAGE_FREEZE = ROOT / "benchmarks" / "device-image-pip-freeze.txt"  # the lent H100's image, 2026-11-26
GIB = 2**30


def image_names() -> set[str]:
    return set(parse_freeze(IMAGE_FREEZE.read_text(), file=IMAGE_FREEZE))


@pytest.mark.usefixtures("index_reachable")
def test_the_lease_prepares_its_carry_and_runs_the_smoke_in_the_image_alone(tmp_path, capsys):
    dists = here_distributions()
    on_image = image_names() & set(dists)
    assert {"torch", "pip", "numpy", "accelerate", "transformers", "peft"} <= on_image
    assert not {"trl", "datasets", "pydantic", "tunelab"} & on_image  # what the image lacks
    have = tmp_path / "image-here.txt"
    have.write_text("".join(f"{dists[n].metadata['Name']}=={dists[n].version}\n" for n in sorted(on_image)))
    python = view_env(tmp_path / "image", on_image)
    here = this_machine()
    carry = tmp_path / "carry"
    prepared = subprocess.run([sys.executable, str(LEASE), "prepare", "--have", str(have), "--python", here.python,
                               "--platform", here.platform, "--carry", str(carry), "--no-qlora"],
                              capture_output=True, text=True)
    manifest = json.loads((carry / "manifest.json").read_text())
    # over 64 MiB only where this checkout holds untracked folders that would travel too: then it says so
    fits = manifest["total_bytes"] <= 64 * 2**20
    assert prepared.returncode == (0 if fits else 1), prepared.stdout + prepared.stderr
    assert fits or "does not fit" in prepared.stderr
    carried = {canonicalize_name(w["name"]) for w in manifest["wheels"]}
    assert {"trl", "datasets", "pydantic", "pydantic-core"} <= carried  # missing from the image
    assert not carried & on_image and "tunelab" not in carried  # the checkout travels, not a wheel of it
    assert not {"inspect-ai", "mcp", "english-words", "optuna"} & carried  # never imported by the rows
    assert manifest["total_bytes"] == manifest["tree_bytes"] + sum(w["bytes"] for w in manifest["wheels"])

    out, work = tmp_path / "OUT", tmp_path / "work"
    ran = subprocess.run([str(python), str(LEASE), "run", "--cpu-smoke", "--carry", str(carry), "--site",
                          str(tmp_path / "site"), "--work", str(work), "--out", str(out), "--budget-s", "1200"],
                         capture_output=True, text=True, env=node_env(), cwd=tmp_path)
    assert ran.returncode == 0, ran.stdout[-3000:] + ran.stderr[-3000:]
    _only_the_image_and_the_carry(python, tmp_path / "site")
    _smoke_rows_measured(out, work, ran.stdout)
    _resumed_and_kept_in_budget(work, capsys)


def _only_the_image_and_the_carry(python: Path, site: Path) -> None:
    """Where the rows' interpreter imports from under run's PYTHONPATH: the standard library, the view of
    the image's packages, the carry, the checkout's src; nothing else."""
    env = {**node_env(), "PYTHONPATH": f"{site}:{ROOT / 'src'}", "PYTHONNOUSERSITE": "1"}
    paths = json.loads(subprocess.run([str(python), "-c", "import json, sys; print(json.dumps(sys.path))"],
                                      capture_output=True, text=True, env=env, check=True).stdout)
    view = python.parents[2] / "view" / "site-packages"
    stdlib = Path(sysconfig.get_paths()["stdlib"]).parent  # lib/: python3.11/, its lib-dynload, python311.zip
    venv = python.parents[1]
    allowed = (stdlib, venv, view, site, ROOT / "src")
    assert all(any(Path(p).is_relative_to(a) for a in allowed) for p in paths if p), paths
    # no site-packages but the venv's, which holds only the .pth adding the view, and the view: the base
    # interpreter's least of all
    sites = [Path(p) for p in paths if "site-packages" in p]
    assert sites[-1] == view and all(d.is_relative_to(venv) for d in sites[:-1]), paths
    assert {f.name for d in sites[:-1] for f in d.iterdir()} == {"view.pth"}


def _smoke_rows_measured(out: Path, work: Path, said: str) -> None:
    (result,) = out.glob("gpu-cpu-*.json")
    kit = load_kit(result)  # the schema: every record validated, unknown keys refused
    assert out.joinpath(result.with_suffix(".md").name).is_file() and kit.cpu_smoke and kit.device == "cpu"
    rows = {s.name: s for s in kit.shapes}
    assert set(rows) == set(SMOKE_ROWS)
    assert "| 3-packed-b1-auto | ok" in said  # the summary: the result's table, printed

    ran, oom = rows["3-packed-b1-auto"], rows["4-lab-oom-16x2048"]
    built = json.loads((work / "cache" / "models" / "Qwen2.5-0.5B-2L-drawn" / "tunelab_random.json").read_text())
    params = built["parameters"]  # counted from the meta model's tensors
    assert built["layers"] == 2 and built["weights"] == "drawn at load" and built["files"] == []
    m = ran.measured
    assert m.status == "ok" and m.memory_kind == "host_max_rss" and m.allocated_gib is None
    assert m.rss_peak_gib * GIB > params * 4  # the process held the drawn model in float32 (CPU training)
    assert m.tokens_per_step == 16 and len(m.memory_trace_gib) == ran.steps  # examples past max_seq_len: rows full
    assert m.tokens_per_s > 0 and all(x > 0 for x in m.memory_trace_gib)
    # FLOPs per token (forecast/speed.py): 4N + 3·4·layers·seq·(heads·head_dim)/2, Qwen2.5-0.5B: 14 heads of 64
    assert ran.flops_per_token == 4 * params + 3 * 4 * 2 * 16 * (14 * 64) / 2
    assert rows["2-unpacked-1024"].measured.status == "ok"
    for row in (ran, oom):
        s = row.simulated
        assert s.allocated_gib is not None and s.reserved_gib >= s.allocated_gib, s.source
        assert s.allocated_gib * GIB > params * 2  # at least the bf16 weights the simulated GPU step holds
        assert s.required_gib == pytest.approx(s.reserved_gib + s.context_gib, abs=1e-3)
    assert oom.measured.status == "oom" and "out of memory" in oom.measured.error  # a result, not a crash
    assert oom.measured.rss_peak_gib is None
    with tarfile.open(out / "logs.tar.gz") as tar:
        archived = {m.name for m in tar.getmembers() if m.isfile()}
        logs = {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".log")}
    # the two training rows shared one process (its log), the out-of-memory row ran in one of its own
    rows_in = {name: [x.split()[-1] for x in text.splitlines() if x.startswith("==== row ")]
               for name, text in logs.items() if name.startswith("logs/")}
    assert rows_in["logs/3-packed-b1-auto.log"] == ["3-packed-b1-auto", "2-unpacked-1024"], rows_in
    assert rows_in["logs/4-lab-oom-16x2048.log"] == ["4-lab-oom-16x2048"], rows_in
    # the profiled row (probe_steps --profile): its trace and table of a step's parts came back, the rest archived
    assert {p.name for p in (out / "profile").iterdir()} == {"trace.json.gz", "parts.txt", "ops.txt"}
    assert {"profile/parts.json", "profile/ops.json"} <= archived


def _peer_row_trained_tunelab_and_said_of_the_peer(out: Path, said: str) -> None:
    """The peer row (gpu_truth_peers.py) in its CPU form, in this venv (the lease carries neither torchtune nor
    the inspect-ai that `tunelab scaffold` needs): benchmarks/peers.py's training comparison on 80 words of the
    tiny model, tunelab trained and measured from outside; torchtune beside it where scripts/peer-env made its
    environment, else one line saying so (CI has none)."""
    from gpu_truth_peers import peer_python

    (table,) = out.glob("peers-cpu-*.md")
    assert f"peer row: exit 0; {table}" in said
    rows = {r["tool"]: r for r in json.loads(table.with_suffix(".json").read_text())["training"]}
    ours = rows["tunelab"]
    assert ours["error"] is None and ours["steps"] == 8  # 64 training rows (80 % of 80) in micro-batches of 8
    assert ours["accuracy"] is None  # unscored (--no-score)
    assert 0 < ours["first_step_s"] < ours["wall_s"] and ours["tokens_per_s"] > 0 and ours["peak_gpu_mib"] is None
    text = table.read_text()
    if peer_python({}) is None:
        assert "torchtune could not run: no environment: run scripts/peer-env torchtune" in text
    else:
        assert rows["torchtune"]["error"] is None and "training (tiny): tunelab ÷ torchtune = " in text


def _resumed_and_kept_in_budget(work: Path, capsys) -> None:
    """The kit again on the lease's output, here (this venv): nothing measured twice, and the peer row; then a
    row whose expected time exceeds a 20 s budget is not started, and the call ends cleanly."""
    out, cache = work / "out", work / "cache"
    (path,) = out.glob("gpu-cpu-*.json")
    before = load_kit(path).model_dump()
    capsys.readouterr()
    assert gpu_truth.main(["--out", str(out), "--cache", str(cache), "--cpu-smoke"]) == 0
    said = capsys.readouterr().out
    assert "0 row(s) to measure, 3 already in" in said
    assert load_kit(path).model_dump() == before
    _peer_row_trained_tunelab_and_said_of_the_peer(out, said)
    assert gpu_truth.main(["--out", str(out), "--cache", str(cache), "--cpu-smoke", "--only", "2-unpacked-4096",
                           "--budget-s", "20", "--no-peers"]) == 0
    assert "2-unpacked-4096: not started" in capsys.readouterr().out
    assert not (out / "logs" / "2-unpacked-4096.log").exists()
    assert "2-unpacked-4096" not in {s.name for s in load_kit(path).shapes}
