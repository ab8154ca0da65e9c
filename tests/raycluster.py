"""A real two-node Ray cluster for the tests (tests/e2e/ray/): a head and a second node, each a `ray start` in a
network namespace of its own, joined to this host by a bridge — as the Slurm cluster's nodes are
(scripts/slurm-dev-cluster), on a /24 of their own.

Why namespaces: Ray listens on every address and advertises the host's external one even when told 127.0.0.1
(tried: 0.0.0.0 and 192.0.2.2 sockets). In a namespace whose only interfaces are its loopback and a veth on the
bridge, there is no other address to reach: nothing of the cluster leaves this host. Ports are fixed (each
namespace has its own), usage stats are off, and everything the fixture started is ended by pid: the processes
in its namespaces (only it starts any there), then the namespaces, the veths and the bridge it made.

Token authentication is on (RAY_AUTH_MODE=token), as a cluster shared by a lab should run: every request to it
needs the token, which start_cluster puts in this process's RAY_AUTH_TOKEN, where tunelab (execute/ray_rest.py) and
every process started from here read it; Ray's own clients in the tests are given `headers()`.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

GCS_PORT, DASHBOARD_PORT, CLIENT_PORT = 26379, 28265, 20001
TOKEN = "tunelab-test-cluster-token"  # fixed: a cluster found running (started by an earlier session) takes it too
RAY = str(Path(sys.executable).with_name("ray"))


@dataclass(frozen=True)
class Layout:
    """A cluster's network and nodes: its bridge, its /24, one namespace a node (the head first), each node's CPUs, and
    the name of the host's end of each node's veth pair (its index appended)."""

    bridge: str
    net: str
    namespaces: tuple[str, ...]
    cpus: tuple[int, ...]
    veth: str

    def node_ip(self, i: int) -> str:
        return f"{self.net}.{11 + i}"

    @property
    def host_ip(self) -> str:
        return f"{self.net}.1"


# the suite's (tests/e2e/ray/conftest.py): a head and a second node, one CPU each
SUITE = Layout("tl-raybr0", "10.78.0", ("tl-ray1", "tl-ray2"), (1, 1), "tl-rayveth")
# the fault runs' own (make test-faults): a head that runs no job (no CPU) and two one-CPU workers, one to lose
FAULTS = Layout("tl-raybr1", "10.79.0", ("tl-rayf1", "tl-rayf2", "tl-rayf3"), (0, 1, 1), "tl-rayfveth")
BRIDGE, NET, NAMESPACES = SUITE.bridge, SUITE.net, SUITE.namespaces


def node_ip(i: int) -> str:
    return SUITE.node_ip(i)


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


def pids_in(ns: str) -> list[int]:
    out = _ip("netns", "pids", ns, check=False).stdout
    return [int(p) for p in out.split()]


def in_ns(ns: str, *args: str) -> list[str]:
    """A command run in a namespace's network only (nsenter: `ip netns exec` would remount /sys)."""
    return ["nsenter", f"--net=/run/netns/{ns}", *args]


@dataclass
class RayCluster:
    """The cluster this session started: its job server's address and what it made, to take down."""

    temp_dir: Path
    layout: Layout = SUITE
    made: list[tuple[str, str]] = field(default_factory=list)  # (kind, name), in the order made
    start_s: float = 0.0

    @property
    def address(self) -> str:
        return f"http://{self.layout.node_ip(0)}:{DASHBOARD_PORT}"

    def env(self) -> dict[str, str]:
        # jobs get 30 s to stop on SIGTERM (a trainer saves its checkpoint), not Ray's 3
        return dict(os.environ, RAY_USAGE_STATS_ENABLED="0", RAY_JOB_STOP_WAIT_TIME_S="30", RAY_AUTH_MODE="token",
                    RAY_AUTH_TOKEN=TOKEN)

    def network(self) -> None:
        lay = self.layout
        if _ip("link", "show", lay.bridge, check=False).returncode != 0:
            _ip("link", "add", lay.bridge, "type", "bridge")
            self.made.append(("bridge", lay.bridge))
        if f" {lay.host_ip}/24 " not in _ip("-o", "addr", "show", "dev", lay.bridge).stdout:
            _ip("addr", "add", f"{lay.host_ip}/24", "dev", lay.bridge)
        _ip("link", "set", lay.bridge, "up")
        for i, ns in enumerate(lay.namespaces):
            if not Path(f"/run/netns/{ns}").exists():
                _ip("netns", "add", ns)
                self.made.append(("netns", ns))
            veth = f"{lay.veth}{i}"
            if _ip("link", "show", veth, check=False).returncode != 0:
                _ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns)
                self.made.append(("veth", veth))
            _ip("link", "set", veth, "master", lay.bridge, "up")
            _ip("-n", ns, "link", "set", "lo", "up")
            if lay.node_ip(i) not in _ip("-n", ns, "-o", "addr", "show", "dev", "eth0").stdout:
                _ip("-n", ns, "addr", "add", f"{lay.node_ip(i)}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")

    def start(self) -> None:
        t0 = time.monotonic()
        self.network()
        for i in range(len(self.layout.namespaces)):
            self.start_node(i)
        end = time.monotonic() + 120  # `ray start` returns before the head's job server (the dashboard) answers
        while not answers(self.address):
            if time.monotonic() > end:
                self.stop()
                raise RuntimeError(f"the Ray job server {self.address} did not answer within 120 s of `ray start`")
            time.sleep(0.5)
        self.start_s = time.monotonic() - t0

    def start_node(self, i: int) -> None:
        """`ray start` of node i in its namespace: the head (i = 0) or a worker joining it (again, after a kill)."""
        lay = self.layout
        common = [f"--num-cpus={lay.cpus[i]}", "--num-gpus=0", "--object-store-memory=100000000",
                  "--disable-usage-stats", f"--temp-dir={self.temp_dir}", f"--node-ip-address={lay.node_ip(i)}"]
        if i == 0:
            cmd = [RAY, "start", "--head", f"--port={GCS_PORT}", f"--dashboard-host={lay.node_ip(0)}",
                   f"--dashboard-port={DASHBOARD_PORT}", f"--ray-client-server-port={CLIENT_PORT}", *common]
        else:
            cmd = [RAY, "start", f"--address={lay.node_ip(0)}:{GCS_PORT}", *common]
        proc = subprocess.run(in_ns(lay.namespaces[i], *cmd), env=self.env(), capture_output=True, text=True,
                              timeout=180)
        if proc.returncode != 0:
            self.stop()
            raise RuntimeError(f"{' '.join(cmd)} (in {lay.namespaces[i]}) failed:\n{proc.stdout[-3000:]}\n"
                               f"{proc.stderr[-3000:]}")

    def kill_node(self, i: int, wait_s: float = 10.0) -> list[int]:
        """Node i lost: SIGKILL to every process in its namespace (its raylet, its workers, the jobs they run); the
        pids killed."""
        pids = pids_in(self.layout.namespaces[i])
        _signal(pids, signal.SIGKILL)
        end = time.monotonic() + wait_s
        while pids_in(self.layout.namespaces[i]) and time.monotonic() < end:
            time.sleep(0.1)
        return pids

    def stop(self) -> None:
        """Every process in the cluster's namespaces, by pid (SIGTERM, then SIGKILL), then what network it made."""
        for sig, wait_s in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
            for ns in self.layout.namespaces:
                _signal(pids_in(ns), sig)
            end = time.monotonic() + wait_s
            while any(pids_in(ns) for ns in self.layout.namespaces) and time.monotonic() < end:
                time.sleep(0.1)
        for kind, name in reversed(self.made):
            if kind == "netns":
                _ip("netns", "del", name, check=False)
            else:
                _ip("link", "del", name, check=False)
        shutil.rmtree(self.temp_dir, ignore_errors=True)


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def why_not() -> str | None:
    """Why this machine cannot start the cluster (None: it can)."""
    if os.geteuid() != 0:
        return "the Ray test cluster runs in network namespaces, which need root"
    if not Path(RAY).is_file():
        return "ray is not installed (pip install 'tunelab[ray]')"
    if shutil.which("nsenter") is None or shutil.which("ip") is None:
        return "nsenter and ip (util-linux, iproute2) are needed for the Ray test cluster's namespaces"
    return None


def headers() -> dict[str, str]:
    """What a request to the test clusters carries: their token."""
    return {"Authorization": f"Bearer {TOKEN}"}


def answers(address: str) -> bool:
    """A Ray job server answers there (a cluster already running: used as it is, and left running). Its jobs API,
    not /api/version alone: the dashboard answers that before its job module is up (404 on a loaded machine)."""
    try:
        for path in ("/api/version", "/api/jobs/"):
            with urllib.request.urlopen(urllib.request.Request(f"{address}{path}", headers=headers()),
                                        timeout=2) as reply:
                if reply.status != 200:
                    return False
        return True
    except OSError:
        return False


def start_cluster(layout: Layout = SUITE) -> tuple[RayCluster, bool]:
    """The cluster, and whether this call started it (then the caller stops it); its token in RAY_AUTH_TOKEN."""
    os.environ["RAY_AUTH_TOKEN"] = TOKEN
    found = RayCluster(Path("/nonexistent"), layout)  # a running cluster's files are its starter's
    if answers(found.address):
        return found, False
    cluster = RayCluster(Path(tempfile.mkdtemp(prefix="tlray-", dir="/tmp")), layout)  # short: Ray's socket paths
    cluster.start()
    return cluster, True
