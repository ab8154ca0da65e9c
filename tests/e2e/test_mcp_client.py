"""`tunelab mcp` driven by the MCP SDK's own stdio client, as an assistant would: list the tools and check their
schemas, then init_spec → plan → scaffold → run → status until done → eval → results → report on the tiny
model, read report.md as a resource; bad input is refused with one line and the server keeps answering."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

import anyio
import pytest
import yaml
from mcp import Client
from mcp.client.stdio import StdioServerParameters

from tunelab.execute import claims
from tunelab.execute.status import StatusRow
from tunelab.fsutil import human_seconds

pytestmark = pytest.mark.slow

PIPELINE = {"init_spec", "validate", "plan", "estimate", "probe", "scaffold", "tune", "run", "status", "cancel",
            "eval", "results", "report", "history", "ingest", "adopt", "list_models", "list_datasets"}


@pytest.fixture
def workspace(tmp_path, tiny_model, caps_dataset) -> Path:
    """A lab's workspace: models/tiny, data/<caps file>; the experiment is drafted into exp/."""
    root = tmp_path / "lab"
    shutil.copytree(tiny_model, root / "models" / "tiny")
    (root / "data").mkdir()
    shutil.copy(caps_dataset, root / "data" / caps_dataset.name)
    return root


def server(root: Path) -> StdioServerParameters:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return StdioServerParameters(command=sys.executable, args=["-m", "tunelab", "mcp", "--root", str(root)],
                                 env=env, cwd=str(root))


async def call(client: Client, name: str, args: dict) -> dict:
    result = await client.call_tool(name, args)
    assert not result.is_error, (name, result.content)
    assert result.structured_content is not None
    return result.structured_content


async def refused(client: Client, name: str, args: dict) -> str:
    result = await client.call_tool(name, args)
    assert result.is_error, (name, result.structured_content)
    text = result.content[0].text
    assert "Traceback" not in text
    return text


async def check_tools(client: Client) -> None:
    tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) == PIPELINE
    for t in tools.values():
        assert t.output_schema and t.output_schema["type"] == "object", t.name
        assert t.input_schema["type"] == "object", t.name
    status_row = tools["status"].output_schema["$defs"]["StatusRow"]["properties"]
    assert {f.name for f in dataclasses.fields(StatusRow)} <= set(status_row)
    assert tools["plan"].input_schema["required"] == ["spec"]
    assert tools["cancel"].input_schema["properties"]["all_runs"]["type"] == "boolean"
    assert tools["status"].annotations.read_only_hint and not tools["run"].annotations.read_only_hint
    assert "Changes files" in tools["scaffold"].description


async def bad_input(client: Client, root: Path, caps: str) -> None:
    text = await refused(client, "plan", {"spec": "../outside/experiment.yaml"})
    assert "outside the workspace root" in text
    (root / "escape").symlink_to(root.parent)  # a link inside the root pointing out of it
    assert "outside the workspace root" in await refused(client, "validate", {"path": "escape/x.yaml"})
    text = await refused(client, "init_spec", {"models": ["models/tiyn"], "datasets": [caps], "out": "bad"})
    assert "models[0]" in text and "nearest: models/tiny" in text
    (root / "broken").mkdir()
    (root / "broken" / "experiment.yaml").write_text("name: x\nmodels: 3\n")
    text = await refused(client, "plan", {"spec": "broken/experiment.yaml"})
    assert "broken/experiment.yaml" in text and "models" in text
    assert "all_runs" in await refused(client, "cancel", {"experiment_dir": "exp"})
    assert (await call(client, "list_models", {}))["paths"] == ["models/tiny"]  # still answering


async def drive(root: Path) -> None:
    caps = f"data/{next((root / 'data').iterdir()).name}"
    async with Client(server(root), read_timeout_seconds=600) as client:
        await check_tools(client)
        spec = await call(client, "init_spec", {"models": ["models/tiny"], "datasets": [caps], "out": "exp",
                                                "vary": {"lora_rank": [4]}, "epochs": 1, "gpus_per_run": 0,
                                                "validation": False, "prompt": "Capitalize: {input}",
                                                "overrides": {"training": {"max_seq_len": 64, "batch_size": 16},
                                                              "eval": {"max_tokens": 8}}})
        assert spec["spec"] == "exp/experiment.yaml" and len(spec["runs"]) == 1 and len(spec["controls"]) == 1
        drafted = yaml.safe_load((root / spec["spec"]).read_text())
        assert drafted["training"]["batch_size"] == 16 and drafted["eval"]["max_tokens"] == 8
        assert drafted["models"] == [{"name": "tiny", "path": str(root / "models" / "tiny")}]
        plan = await call(client, "plan", {"spec": spec["spec"]})
        assert [r["run"] for r in plan["runs"]] == spec["runs"] + spec["controls"]
        assert plan["plan_md"] == "exp/plan.md"
        # the makespan and the CPU's sharing an assistant reads are plan.md's own (its Schedule line, written apart)
        md_lines = (root / "exp" / "plan.md").read_text().splitlines()
        schedule = next(line for line in md_lines if "Predicted makespan" in line)
        assert schedule.startswith(plan["cpu_sharing"] + ". **Predicted makespan: "), (schedule, plan["cpu_sharing"])
        assert f"**Predicted makespan: {human_seconds(plan['forecast']['makespan_s'])} (P10–P90 " in schedule
        made = await call(client, "scaffold", {"spec": spec["spec"]})
        assert made["runs"] == spec["runs"]
        # the sweep `run` starts takes the experiment's lock before it does anything: held here, the sweep cannot
        # have trained (or started) a thing when `run` answers — it answered at once, without waiting for the sweep
        with claims.experiment_lock(root / "exp"):
            run = await call(client, "run", {"experiment_dir": "exp"})
            assert run["pid"] and sorted(run["submitted"]) == sorted(spec["runs"])
            assert run["log"] == "exp/.tunelab-mcp/run.log"
            held = await call(client, "status", {"experiment_dir": "exp"})
            assert held["sweep_running"] and not held["done"], held  # its process alive, waiting for the lock
            assert {r["state"] for r in held["runs"]} == {"pending"}, held["runs"]
            await bad_input(client, root, caps)  # while the sweep runs: the server answers
        started = time.monotonic()  # a guard against hanging below, not a measurement
        status = await call(client, "status", {"experiment_dir": "exp"})
        while not status["done"]:
            assert time.monotonic() - started < 900, status
            await anyio.sleep(2)
            status = await call(client, "status", {"experiment_dir": "exp"})
        states = {r["name"]: r["state"] for r in status["runs"]}
        assert all(states[r] == "completed" for r in spec["runs"]), (states, status["sweep_log_tail"])
        progress: list[tuple[float, float | None]] = []

        async def on_progress(done: float, total: float | None, message: str | None) -> None:
            progress.append((done, total))

        result = await client.call_tool("eval", {"experiment_dir": "exp"}, progress_callback=on_progress)
        assert not result.is_error, result.content
        evaluated = result.structured_content
        assert progress == [(1, 2), (2, 2)]  # a notification after the run and after the control
        assert set(spec["runs"] + spec["controls"]) <= set(evaluated["evaluated"])
        results = {r["name"]: r for r in (await call(client, "results", {"experiment_dir": "exp"}))["runs"]}
        train_rows = len(json.loads((root / caps).read_text())["train"])
        for name in spec["runs"]:
            assert results[name]["state"] == "completed" and results[name]["type"] == "fine-tuned"
            # one epoch at batch 16 (the overrides above)
            assert results[name]["steps"] == math.ceil(train_rows / 16) and results[name]["score"] is not None
        report = await call(client, "report", {"experiment_dir": "exp"})
        assert report["markdown"] == "exp/report/report.md" and not report["partial"]
        page = await client.read_resource(report["resource"])
        assert page.contents[0].text == (root / "exp" / "report" / "report.md").read_text()
        assert "# " in page.contents[0].text


def test_assistant_drives_the_demo(workspace):
    anyio.run(drive, workspace)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_streamable_http_on_loopback_read_only(tmp_path):
    """`tunelab mcp --http PORT --read-only`: the SDK's HTTP client lists only the tools that change nothing."""
    import subprocess

    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "tunelab", "mcp", "--root", str(tmp_path), "--http", str(port),
                             "--read-only"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

    async def names() -> set[str]:
        deadline = time.monotonic() + 120
        while True:
            try:
                async with Client(f"http://127.0.0.1:{port}/mcp") as client:
                    return {t.name for t in (await client.list_tools()).tools}
            except Exception:
                assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
                assert time.monotonic() < deadline
                await anyio.sleep(1)

    try:
        assert anyio.run(names) == {"validate", "estimate", "status", "results", "history", "list_models",
                                    "list_datasets"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
