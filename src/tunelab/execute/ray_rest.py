"""A Ray cluster's job server, spoken to over its REST API with the standard library: the dashboard's
`/api/jobs/` (submit, list, stop) and the state API's `/api/v0/nodes` — the same requests Ray's own
`JobSubmissionClient` and `ray.util.state` send.

Why not Ray's client: importing it (and its state API) cost every `tunelab run`, `status` and `cancel` 1.2–2.7 s
on a 2-core machine (docs/ray.md), for a few small HTTP requests; a job's gate (execute/ray_after.py) paid it too.
Nothing here imports Ray, except to resolve an address that is not the job server's URL (`auto`, `ray://…`, a GCS
`host:6379`), which only Ray knows how to turn into one (the slow path, once per address).

Token authentication (Ray's `RAY_AUTH_MODE=token`): the token Ray's clients send — `RAY_AUTH_TOKEN`, else the file
`RAY_AUTH_TOKEN_PATH` names, else `~/.ray/auth_token` — goes as `Authorization: Bearer …` unless
`RAY_AUTH_MODE=disabled`; a cluster without authentication ignores it.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

TIMEOUT_S = 30.0  # one request's wait at most (a job server that does not answer is an error, never a hang)
AUTH_MODE_ENV, TOKEN_ENV, TOKEN_PATH_ENV = "RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"
NODES_LIMIT = 10_000  # the state API's page: every node of any cluster tunelab would drive


class JobServerError(RuntimeError):
    """A request the job server refused (`status`: its HTTP status) or that never reached it (`status` None)."""

    def __init__(self, message: str, status: int | None = None, cause: str = "") -> None:
        super().__init__(message)
        self.status = status
        self.cause = cause or message  # what went wrong, without the server's name (a caller names it once)


@dataclass(frozen=True)
class RayJob:
    """One submission job as the job server lists it (its JobDetails, the fields tunelab reads)."""

    submission_id: str
    status: str  # PENDING, RUNNING, SUCCEEDED, FAILED, STOPPED
    driver_exit_code: int | None = None
    driver_node_id: str | None = None
    error_type: str | None = None
    message: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> RayJob:
        return cls(str(d.get("submission_id") or ""), str(d.get("status") or ""), d.get("driver_exit_code"),
                   d.get("driver_node_id") or None, d.get("error_type"), d.get("message") or "",
                   dict(d.get("metadata") or {}))


@dataclass(frozen=True)
class RayNode:
    """One node as the state API lists it: its id, address, state (ALIVE, DEAD) and resources (CPU, GPU, memory)."""

    node_id: str
    node_ip: str
    state: str
    resources_total: dict[str, float]


def auth_headers(env: dict[str, str] | None = None, home: Path | None = None) -> dict[str, str]:
    """The Authorization header Ray's clients would send here: its token, from the environment or its file."""
    env = dict(os.environ) if env is None else env
    if env.get(AUTH_MODE_ENV, "").lower() == "disabled":
        return {}
    token = env.get(TOKEN_ENV, "").strip()
    if not token:
        path = Path(env[TOKEN_PATH_ENV]) if env.get(TOKEN_PATH_ENV) else (home or Path.home()) / ".ray" / "auth_token"
        try:
            token = path.read_text().strip()
        except OSError:
            return {}
    return {"Authorization": f"Bearer {token}"} if token else {}


def server_url(address: str) -> str:
    """The job server's URL for an address as Ray accepts it: an http(s) URL as it is; `auto`, `ray://…` or a GCS
    `host:port` through Ray's own resolution (which imports Ray and asks the cluster)."""
    address = address.strip().rstrip("/")
    if address.startswith(("http://", "https://")):
        return address
    try:
        from ray.dashboard.utils import (  # the optional extra, only for these forms
            ray_address_to_api_server_url,
            ray_client_address_to_api_server_url,
        )
    except ImportError:
        raise JobServerError(f"address {address!r} is not a job server URL (http://head:8265), and resolving it "
                             "needs Ray here: pip install 'tunelab[ray]'") from None
    try:
        if address.startswith("ray://"):
            return str(ray_client_address_to_api_server_url(address)).rstrip("/")
        return str(ray_address_to_api_server_url(address)).rstrip("/")
    except Exception as exc:  # Ray raises its own and connection errors: the address leads nowhere
        raise JobServerError(f"address {address!r}: no Ray job server found from it: {str(exc)[:300]}") from None


class JobServer:
    """One cluster's job server: `address` as Ray accepts it (module docstring), each request within `timeout_s`."""

    def __init__(self, address: str, timeout_s: float = TIMEOUT_S) -> None:
        self.url = server_url(address)
        self.timeout_s = timeout_s
        self._headers = {"Content-Type": "application/json", **auth_headers()}

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None,
                 timeout_s: float | None = None) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(self.url + path, data=data, method=method, headers=self._headers)
        try:
            with urllib.request.urlopen(req, timeout=timeout_s or self.timeout_s) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as exc:
            text = exc.read().decode(errors="replace").strip()
            said = (text.splitlines()[-1] if text else exc.reason)[:300]  # Ray's last line: the error, after a traceback
            if exc.code in (401, 403):  # token authentication on, and no token or another one sent
                said += (f" (the cluster wants its token: set {TOKEN_ENV}, or {TOKEN_PATH_ENV} to its file, or put "
                         "it in ~/.ray/auth_token)")
            raise JobServerError(f"{method} {path}: HTTP {exc.code}: {said}", exc.code) from None
        except (OSError, ValueError) as exc:  # refused, unreachable, timed out, a malformed URL
            raise JobServerError(f"Ray job server {self.url} did not answer: {exc}", cause=str(exc)) from None
        return json.loads(raw) if raw else None

    def version(self) -> str:
        """The cluster's Ray version (`/api/version`): also how one asks whether the job server answers at all."""
        return str(self._request("GET", "/api/version").get("ray_version", ""))

    def submit_job(self, *, entrypoint: str, submission_id: str, **fields: Any) -> str:
        """A job submitted; its submission id. `fields`: the rest of Ray's JobSubmitRequest (runtime_env, metadata,
        entrypoint_num_cpus, entrypoint_num_gpus, …); those left None are not sent, as Ray's client does."""
        body = {"entrypoint": entrypoint, "submission_id": submission_id,
                **{k: v for k, v in fields.items() if v is not None}}
        return str(self._request("POST", "/api/jobs/", body)["submission_id"])

    def list_jobs(self) -> list[RayJob]:
        """Every job the cluster knows (submission jobs; drivers started otherwise have no submission id)."""
        return [RayJob.from_json(d) for d in self._request("GET", "/api/jobs/") if d.get("submission_id")]

    def get_job(self, submission_id: str) -> RayJob:
        return RayJob.from_json(self._request("GET", f"/api/jobs/{urllib.parse.quote(submission_id)}"))

    def find_job(self, submission_id: str) -> RayJob | None:
        """The job, or None where the server does not know it (HTTP 404)."""
        try:
            return self.get_job(submission_id)
        except JobServerError as exc:
            if exc.status == 404:
                return None
            raise

    def stop_job(self, submission_id: str) -> bool:
        """Ray's stop (SIGTERM, then SIGKILL after RAY_JOB_STOP_WAIT_TIME_S): whether the job was still running.
        A job the server does not know raises JobServerError (HTTP 404)."""
        out = self._request("POST", f"/api/jobs/{urllib.parse.quote(submission_id)}/stop")
        return bool(out.get("stopped"))

    def list_nodes(self, timeout_s: float | None = None) -> list[RayNode]:
        """The cluster's nodes, alive and dead, as the state API lists them (`detail`: with their resources)."""
        wait = timeout_s or self.timeout_s
        query = urllib.parse.urlencode({"limit": NODES_LIMIT, "detail": 1, "timeout": max(1, round(wait))})
        out = self._request("GET", f"/api/v0/nodes?{query}", timeout_s=wait + 5)
        if not out.get("result", True):
            raise JobServerError(f"state API: {out.get('msg', 'nodes not listed')}"[:400])
        rows = out["data"]["result"]["result"]
        return [RayNode(str(n["node_id"]), str(n["node_ip"]), str(n["state"]),
                        {k: float(v) for k, v in (n.get("resources_total") or {}).items()}) for n in rows]
