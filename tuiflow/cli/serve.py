"""`tuiflow serve`: the dashboard in a web browser (textual-serve), and who may open it.

Whoever can open the page can cancel and retry every workflow of the home, and a home is
shared by every user of a cluster. So:

* Bound to a loopback address (``127.0.0.1``, the default; ``::1``; ``localhost``) no token
  is asked for, as before. The server still only answers requests that name a loopback
  host (``Host:``) and come from its own pages (``Origin:``, when a browser sends one):
  a web page on another site cannot drive the dashboard through your browser, neither
  directly nor through a DNS name rebound to 127.0.0.1.
* Bound to any other address it requires a token: ``--token``, else
  ``$TUIFLOW_SERVE_TOKEN``, else one generated for this run and printed once. A browser
  gives it once, in the page's form or in the URL (``/?token=...``, taken out of the
  address bar at once), and then holds a session cookie (HttpOnly, SameSite=Strict) valid
  while this server runs; scripts may send ``Authorization: Bearer <token>``. Tokens are
  compared in constant time; a wrong one costs a second and is logged. A token given on
  a loopback bind is required there too.

The gate is an aiohttp middleware in front of every route of textual-serve's server (the
page, its websocket, static files, downloads). The page's own URLs are made from the
address the browser used (textual-serve would write ``http://0.0.0.0:8000`` into them).
"""

from __future__ import annotations

import asyncio
import hmac
import html
import ipaddress
import logging
import os
import re
import secrets
import shlex
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.text import Text

from analyzer.fmt import safe_text
from spool import Home
from tuiflow.cli.console import user_text
from tuiflow.cli.exits import EXIT_OK, BadOption

log = logging.getLogger("tuiflow.serve")

#: where the token may come from when --token is not given
TOKEN_ENV = "TUIFLOW_SERVE_TOKEN"
#: the shortest token accepted (a generated one is 32 characters)
MIN_TOKEN_LENGTH = 16
#: where the page's form posts the token
LOGIN_PATH = "/login"
#: seconds a wrong token waits before its answer
FAILURE_DELAY = 1.0
_HOST_HEADER = re.compile(r"[A-Za-z0-9.\-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")

_LOGIN_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>tuiflow · {title}</title>
<style>
body {{ background: #0c181f; color: #eee; font-family: menlo, monospace; display: flex;
       align-items: center; justify-content: center; height: 90vh; }}
form {{ background: #12232d; padding: 2em 3em; max-width: 36em; }}
input {{ width: 100%; padding: .5em; margin: 1em 0; font-family: inherit; }}
button {{ padding: .6em 2em; background: #5e0ba7; color: #fff; border: none; }}
.wrong {{ color: #f66; }}
</style></head>
<body><form method="post" action="{action}">
<p>tuiflow · {title}</p>
<p>This dashboard asks for its access token: the one <code>tuiflow serve</code> printed when
it started (or its <code>--token</code> / <code>$TUIFLOW_SERVE_TOKEN</code>).</p>
{wrong}<input type="password" name="token" autofocus autocomplete="current-password">
<button type="submit">Open</button>
</form></body></html>
"""


def is_loopback(host: str) -> bool:
    """Whether `host` (an address or ``localhost``) is reachable from this machine only."""
    name = host.strip().strip("[]").lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False  # any other name may resolve anywhere


def check_token(token: str) -> str:
    """`token` if it is usable (BadOption saying why if not)."""
    if len(token) < MIN_TOKEN_LENGTH or not token.isprintable() or any(c.isspace() for c in token):
        raise BadOption(
            f"a serve token must be at least {MIN_TOKEN_LENGTH} printable characters without spaces "
            "(leave it out and one is generated)"
        )
    return token


class TokenGate:
    """Who may use the server: an aiohttp middleware (`middleware`).

    With no `token` (a loopback bind), every request that names a loopback host and comes
    from the server's own origin. With one, requests that carry the session cookie or an
    ``Authorization: Bearer`` header, and a browser that presents the token once."""

    def __init__(self, token: str | None, port: int, title: str = ""):
        self.token = token
        self.title = title
        #: what the session cookie holds: random, never the token itself, and good for
        #: this server's life only
        self.session = secrets.token_urlsafe(32)
        #: cookies are shared by every port of a host: one name per port
        self.cookie = f"tuiflow-session-{port}"

    # ------------------------------------------------------------------ checks
    def token_ok(self, given: Any) -> bool:
        """Whether `given` is the token (constant time)."""
        if self.token is None or not isinstance(given, str) or not given:
            return False
        return hmac.compare_digest(given.encode("utf-8", "replace"), self.token.encode())

    def admitted(self, request: Any) -> bool:
        """Whether `request` carries the session cookie or the token as a bearer."""
        cookie = request.cookies.get(self.cookie)
        if cookie and hmac.compare_digest(cookie.encode("utf-8", "replace"), self.session.encode()):
            return True
        scheme, _, credentials = request.headers.get("Authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_ok(credentials.strip())

    @staticmethod
    def foreign(request: Any) -> str | None:
        """Why a request to a loopback server does not come from this machine's own pages
        (None if it does): a Host that is not a loopback name (DNS rebinding), or an
        Origin other than the server's own (another site's page in your browser)."""
        host = request.host or ""
        hostname = urlsplit(f"//{host}").hostname if _HOST_HEADER.fullmatch(host) else None
        if hostname is None or not is_loopback(hostname):
            return "this dashboard answers requests for a loopback address only (Host)"
        origin = request.headers.get("Origin")
        if origin is not None and urlsplit(origin).netloc.lower() != host.lower():
            return "this dashboard answers its own pages only (Origin)"
        return None

    # --------------------------------------------------------------- middleware
    def middleware(self) -> Callable[..., Awaitable[Any]]:
        from aiohttp import web

        @web.middleware
        async def gate(request: web.Request, handler: Callable[..., Awaitable[Any]]) -> Any:
            if self.token is None:
                problem = self.foreign(request)
                if problem:
                    _refused(request, problem)
                    return web.Response(status=403, text=problem + "\n")
                return await handler(request)
            if request.path == LOGIN_PATH and request.method == "POST":
                form = await request.post()
                if self.token_ok(form.get("token")):
                    return self._admit(request, "/")
                return await self._wrong(request)
            if "token" in request.query:
                if self.token_ok(request.query.get("token")):
                    # in: the session cookie, and the token out of the address bar and history
                    rest = [(k, v) for k, v in request.query.items() if k != "token"]
                    path = request.path if not request.path.startswith("//") else "/"
                    return self._admit(request, str(request.rel_url.with_path(path).with_query(rest)))
                return await self._wrong(request)
            if self.admitted(request):
                return await handler(request)
            return self._ask(request)

        return gate

    def _admit(self, request: Any, location: str) -> Any:
        from aiohttp import web

        response = web.Response(status=303, headers={"Location": location})
        response.set_cookie(
            self.cookie, self.session, httponly=True, samesite="Strict", path="/", secure=request.secure
        )
        return response

    async def _wrong(self, request: Any) -> Any:
        _refused(request, "a wrong token")
        await asyncio.sleep(FAILURE_DELAY)
        return self._ask(request, wrong=True)

    def _ask(self, request: Any, *, wrong: bool = False) -> Any:
        """401: the login form for a browser's page, a line for anything else."""
        from aiohttp import web

        headers = {"WWW-Authenticate": 'Bearer realm="tuiflow"', "Cache-Control": "no-store"}
        if request.method in ("GET", "POST") and request.path in ("/", LOGIN_PATH):
            page = _LOGIN_PAGE.format(
                title=html.escape(self.title),
                action=LOGIN_PATH,
                wrong='<p class="wrong">That is not the token.</p>' if wrong else "",
            )
            return web.Response(status=401, text=page, content_type="text/html", headers=headers)
        return web.Response(status=401, text="this dashboard needs its token\n", headers=headers)


def _refused(request: Any, why: str) -> None:
    log.warning(
        "refused %s %s from %s: %s",
        request.method,
        safe_text(request.path),
        safe_text(request.remote),
        why,
    )


def _dashboard_server(command: str, host: str, port: int, title: str, gate: TokenGate) -> Any:
    """textual-serve's server with `gate` in front of it (a subclass: see the module)."""
    import aiohttp_jinja2
    from aiohttp import web
    from textual_serve.server import Server, to_int

    class DashboardServer(Server):
        async def _make_app(self) -> web.Application:
            app = await super()._make_app()
            app.middlewares.append(gate.middleware())
            return app

        def initialize_logging(self) -> None:
            super().initialize_logging()
            # the access log would print each request line, a `?token=` with it
            logging.getLogger("aiohttp.access").setLevel(logging.WARNING)

        async def on_startup(self, app: web.Application) -> None:
            pass  # `serve_dashboard` said where it listens

        @aiohttp_jinja2.template("app_index.html")
        async def handle_index(self, request: web.Request) -> dict[str, Any]:
            # the URLs of the page as the browser reached it (a proxy's or a tunnel's
            # address, a host name), not the address this server is bound to
            host = request.host or ""
            base = f"{request.scheme}://{host}" if _HOST_HEADER.fullmatch(host) else self.public_url
            router = request.app.router
            websocket = ("wss" if base.startswith("https:") else "ws") + base[base.index(":") :]
            static = base + str(router["static"].url_for(filename="/")).rstrip("/") + "/"
            return {
                "font_size": to_int(request.query.get("fontsize", "16"), 16),
                "app_websocket_url": websocket + str(router["websocket"].url_for()),
                "config": {"static": {"url": static}},
                # the template does not escape: the home's path is the user's text
                "application": {"name": html.escape(self.title)},
            }

    return DashboardServer(command, host=host, port=port, title=title)


def _url_host(host: str) -> str:
    """How a browser elsewhere names the address `host` (a wildcard: this machine's name)."""
    if host in ("", "0.0.0.0", "::"):
        name = socket.getfqdn()
        return socket.gethostname() if is_loopback(name) else name
    return f"[{host}]" if ":" in host else host


def serve_dashboard(home: Home, *, host: str, port: int, token: str | None, console: Console) -> int:
    """Serve `home`'s dashboard on `host`:`port` until SIGINT/SIGTERM; returns the exit code.

    `token`: the one given with --token (else ``$TUIFLOW_SERVE_TOKEN``); required for a
    bind that is not loopback, generated and printed when neither gave one."""
    given = token or os.environ.get(TOKEN_ENV) or None
    # the dashboards started for each browser inherit this environment: not the token
    os.environ.pop(TOKEN_ENV, None)
    loopback = is_loopback(host)
    generated = given is None and not loopback
    if given is not None:
        check_token(given)
    gate_token = secrets.token_urlsafe(24) if generated else given
    title = f"tuiflow · {home.root}"
    gate = TokenGate(gate_token, port, title)
    command = f"{shlex.quote(sys.executable)} -m tuiflow --home {shlex.quote(home.root)}"
    url = f"http://{_url_host(host)}:{port}/"
    where = Text.assemble("dashboard of ", user_text(home.root), " at ")
    if gate_token is None:
        console.print(where, url, "  (Ctrl-C stops)", sep="", soft_wrap=True)
    else:
        shown = f"{url}?token={gate_token}" if generated else url
        console.print(where, shown, "  (Ctrl-C stops)", sep="", soft_wrap=True)
        console.print(
            "  the page asks for a token: "
            + (
                f"this one, generated for this run and printed only here (choose one with ${TOKEN_ENV})"
                if generated
                else f"the one given by {'--token' if token else '$' + TOKEN_ENV}"
            )
            + "; whoever has it can cancel and retry workflows.",
            soft_wrap=True,
            markup=False,
            highlight=False,
        )
        if not loopback:
            console.print(
                f"  listening on {host}:{port} over plain HTTP: beyond a network you trust, reach it "
                "through TLS (a proxy) or an SSH tunnel to a loopback `tuiflow serve`.",
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
    _dashboard_server(command, host, port, title, gate).serve()
    return EXIT_OK


__all__ = [
    "LOGIN_PATH",
    "MIN_TOKEN_LENGTH",
    "TOKEN_ENV",
    "TokenGate",
    "check_token",
    "is_loopback",
    "serve_dashboard",
]
