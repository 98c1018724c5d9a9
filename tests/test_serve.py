"""`tuiflow serve`: the dashboard in a browser, and who may open it. Each test starts the
real command as a process and talks HTTP to it."""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuiflow.cli.exits import EXIT_INVALID
from tuiflow.cli.main import app
from tuiflow.cli.serve import TOKEN_ENV, is_loopback

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "s3cret-t0ken-for-tests"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Served:
    def __init__(self, proc: subprocess.Popen, port: int):
        self.proc = proc
        self.port = port

    def get(
        self, path: str, headers: dict[str, str] | None = None, method: str = "GET", body: str | None = None
    ):
        """(status, headers, body) of one request to the server, redirects not followed."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            r = conn.getresponse()
            return r.status, r.headers, r.read().decode("utf-8", "replace")
        finally:
            conn.close()

    def first_line(self) -> str:
        return self.proc.stdout.readline()


@contextlib.contextmanager
def served(tmp_path: Path, *args: str, env: dict[str, str] | None = None) -> Iterator[Served]:
    port = free_port()
    environ = {k: v for k, v in os.environ.items() if k != TOKEN_ENV}
    environ.update(env or {}, PYTHONUNBUFFERED="1", COLUMNS="300")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tuiflow",
            "serve",
            "--home",
            str(tmp_path / "home"),
            "--port",
            str(port),
            *args,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
        env=environ,
    )
    server = Served(proc, port)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                server.get("/static/css/xterm.css")
                break
            except OSError:
                assert proc.poll() is None, proc.communicate()
                assert time.monotonic() < deadline, "tuiflow serve did not answer"
                time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        proc.stdout.close()
        proc.stderr.close()


def cookie_of(headers) -> str:
    """The `name=value` of the session cookie a response sets."""
    return headers["Set-Cookie"].split(";", 1)[0]


# --------------------------------------------------------------- a public address
def test_a_public_bind_refuses_requests_without_the_token(tmp_path):
    with served(tmp_path, "--host", "0.0.0.0", "--token", TOKEN) as s:
        status, headers, page = s.get("/")
        assert status == 401 and 'name="token"' in page  # a browser gets the form asking for it
        assert "Bearer" in headers["WWW-Authenticate"]
        for path in ("/ws?width=80&height=24", "/static/css/xterm.css", "/download/x"):
            assert s.get(path)[0] == 401, path
        status, _, page = s.get("/?token=not-the-token-at-all")
        assert status == 401 and "not the token" in page
        assert s.get("/", {"Authorization": "Bearer not-the-token-at-all"})[0] == 401
        assert s.get("/", {"Cookie": f"tuiflow-session-{s.port}=forged"})[0] == 401


def test_a_public_bind_serves_whoever_has_the_token(tmp_path):
    with served(tmp_path, "--host", "0.0.0.0", "--token", TOKEN) as s:
        assert TOKEN not in s.first_line()  # given by the user: not printed back
        # a script: the token as a bearer
        status, _, page = s.get("/", {"Authorization": f"Bearer {TOKEN}"})
        assert status == 200 and "textual" in page.lower()
        # a browser, from the URL: a session cookie, and the token out of the address bar
        status, headers, _ = s.get(f"/?token={TOKEN}&fontsize=14")
        assert status == 303 and headers["Location"] == "/?fontsize=14"
        assert "HttpOnly" in headers["Set-Cookie"] and "SameSite=Strict" in headers["Set-Cookie"]
        assert TOKEN not in headers["Set-Cookie"]
        cookie = cookie_of(headers)
        status, _, page = s.get("/?fontsize=14", {"Cookie": cookie})
        assert status == 200 and TOKEN not in page
        # the page's own URLs are the address the browser used, not 0.0.0.0
        assert f'data-session-websocket-url="ws://127.0.0.1:{s.port}/ws"' in page
        assert s.get("/static/css/xterm.css", {"Cookie": cookie})[0] == 200
        # a browser, from the page's form
        status, headers, _ = s.get(
            "/login",
            {"Content-Type": "application/x-www-form-urlencoded"},
            method="POST",
            body=f"token={TOKEN}",
        )
        assert (
            status == 303
            and headers["Location"] == "/"
            and s.get("/", {"Cookie": cookie_of(headers)})[0] == 200
        )


def test_a_public_bind_without_a_token_generates_one_and_prints_it_once(tmp_path):
    with served(tmp_path, "--host", "0.0.0.0") as s:
        line = s.first_line()
        token = re.search(r"\?token=(\S+)", line).group(1)
        assert len(token) >= 16 and s.get("/")[0] == 401
        assert s.get("/", {"Authorization": f"Bearer {token}"})[0] == 200


def test_the_token_may_come_from_the_environment(tmp_path):
    with served(tmp_path, "--host", "0.0.0.0", env={TOKEN_ENV: TOKEN}) as s:
        assert "$TUIFLOW_SERVE_TOKEN" in s.first_line() + s.proc.stdout.readline()
        assert s.get("/")[0] == 401 and s.get("/", {"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_a_guessable_token_is_refused(tmp_path):
    result = CliRunner().invoke(
        app, ["serve", "--home", str(tmp_path / "h"), "--host", "0.0.0.0", "--token", "short"]
    )
    assert result.exit_code == EXIT_INVALID and "at least 16" in result.stderr


# ---------------------------------------------------------------------- loopback
def test_loopback_needs_no_token_and_serves_the_page(tmp_path):
    with served(tmp_path) as s:
        status, _, page = s.get("/")
        assert status == 200 and "textual" in page.lower()
        assert s.get("/", {"Host": f"localhost:{s.port}", "Origin": f"http://localhost:{s.port}"})[0] == 200


def test_loopback_answers_its_own_pages_only(tmp_path):
    with served(tmp_path, "--host", "127.0.0.1") as s:
        # another site's page in this machine's browser: not its origin
        assert s.get("/ws?width=80&height=24", {"Origin": "http://evil.example"})[0] == 403
        # a DNS name of the attacker's, rebound to 127.0.0.1: not a loopback host
        assert s.get("/", {"Host": f"evil.example:{s.port}"})[0] == 403


def test_loopback_with_a_token_asks_for_it(tmp_path):
    with served(tmp_path, "--token", TOKEN) as s:
        assert s.get("/")[0] == 401 and s.get("/", {"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_the_help_says_how_to_reach_it():
    result = CliRunner().invoke(app, ["serve", "--help"], env={"COLUMNS": "200"})
    assert result.exit_code == 0
    for words in ("127.0.0.1", "--token", "TUIFLOW_SERVE_TOKEN", "?token=", "Bearer"):
        assert words in result.stdout, words


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("127.0.0.1", True),
        ("127.1.2.3", True),
        ("::1", True),
        ("[::1]", True),
        ("localhost", True),
        ("0.0.0.0", False),
        ("::", False),
        ("10.0.0.7", False),
        ("login-node-1", False),
        ("localhost.evil.example", False),
    ],
)
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback
