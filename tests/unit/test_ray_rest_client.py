"""The job server's REST client (execute/ray_rest.py) where no cluster is needed: which token it sends, in the order
Ray's own clients look for one (Ray's token-authentication docs: RAY_AUTH_TOKEN, the file RAY_AUTH_TOKEN_PATH
names, ~/.ray/auth_token; none with RAY_AUTH_MODE=disabled), and what an address that leads nowhere gives. Against
a real cluster, with token authentication on: tests/e2e/ray/test_ray_rest.py."""

from __future__ import annotations

import socket
import subprocess
import sys

import pytest

from tunelab.execute.ray_rest import JobServer, JobServerError, auth_headers, server_url


def test_the_token_comes_from_the_environment_then_its_file_then_the_default_file(tmp_path):
    home = tmp_path / "home"
    assert auth_headers({}, home) == {}  # none anywhere: no header (a cluster without authentication)
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("default-token\n")
    assert auth_headers({}, home) == {"Authorization": "Bearer default-token"}
    named = tmp_path / "elsewhere"
    named.write_text("  named-token \n")
    assert auth_headers({"RAY_AUTH_TOKEN_PATH": str(named)}, home) == {"Authorization": "Bearer named-token"}
    env = {"RAY_AUTH_TOKEN": "env-token", "RAY_AUTH_TOKEN_PATH": str(named)}
    assert auth_headers(env, home) == {"Authorization": "Bearer env-token"}
    assert auth_headers({**env, "RAY_AUTH_MODE": "disabled"}, home) == {}
    assert auth_headers({"RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")}, home) == {}  # named, not there


def test_a_job_server_url_is_used_as_given_and_one_that_does_not_answer_is_one_error(tmp_path):
    assert server_url(" http://head:8265/ ") == "http://head:8265"
    assert server_url("https://ray.example.org") == "https://ray.example.org"
    with socket.socket() as s:  # a port nothing listens on: the connection is refused
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = JobServer(f"http://127.0.0.1:{port}", timeout_s=5)
    with pytest.raises(JobServerError, match=f"Ray job server http://127.0.0.1:{port} did not answer") as err:
        server.list_jobs()
    assert err.value.status is None  # never reached: not a refusal by the server
    from tunelab.errors import TunelabError
    from tunelab.execute.ray_cluster import RayExecutor

    with pytest.raises(TunelabError, match=f"resources.address: Ray job server http://127.0.0.1:{port} did not answer"):
        RayExecutor().cancel([f"tl-train-0@http://127.0.0.1:{port}"])  # `tunelab cancel` says it in one line


def test_the_address_check_says_once_that_a_server_did_not_answer_and_that_one_answering_refused(monkeypatch):
    """answering_server's one line: a port nothing listens on "did not answer" (said once, not the client's words
    nested in the check's); a server that answers 401 (token authentication on, none sent) refused, and does not
    read as one that never answered."""
    import http.server
    import threading

    from tunelab.errors import TunelabError
    from tunelab.execute.ray_cluster import answering_server

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(TunelabError) as err:
        answering_server(f"http://127.0.0.1:{port}", 5)
    assert str(err.value).count("did not answer") == 1 and "within 5 s" in str(err.value)

    class Refusing(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(401)
            self.end_headers()
            self.wfile.write(b"Unauthorized: no token")

        def log_message(self, *args):
            pass

    monkeypatch.delenv("RAY_AUTH_TOKEN", raising=False)
    server = http.server.HTTPServer(("127.0.0.1", 0), Refusing)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        with pytest.raises(TunelabError) as err:
            answering_server(f"http://127.0.0.1:{server.server_port}", 5)
    finally:
        server.shutdown()
    text = str(err.value)
    assert "refused the request" in text and "HTTP 401" in text and "did not answer" not in text
    assert "resources.address" in text


def test_talking_to_the_job_server_imports_no_ray():
    """The point of the module: `tunelab run`, `status` and `cancel` on Ray no longer pay Ray's import."""
    code = ("import sys; from tunelab.execute import ray_cluster, ray_after; "
            "ray_cluster.RayExecutor('http://head:8265'); print(sorted(m for m in sys.modules if m.split('.')[0] == 'ray'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
