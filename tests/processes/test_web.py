"""``iii-console web``: the console served to a real headless Chromium by textual-serve, over a real
app's traffic; and the guard in front of it (token, Host, websocket origin, loopback)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from pathlib import Path

import httpx
import pytest

from ..helpers import ROOT, make_project, wait_for

pytest.importorskip("textual_serve", reason="the web extra is not installed (pip install -e '.[web]')")

pytestmark = pytest.mark.slow

TOKEN = "s3cret-web-token"
CHROMIUM = next(
    (p for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser")) if p and os.path.exists(p)),
    None,
)

#: Runs before the page's scripts: keeps a handle on the xterm.js terminal textual-serve creates
#: (``this.terminal = new Terminal(...)``), so the test reads what the terminal shows.
HOOK = """
Object.defineProperty(Object.prototype, "terminal", {configurable: true, set(v) {
  Object.defineProperty(this, "terminal", {value: v, writable: true, configurable: true, enumerable: true});
  if (v && v.buffer !== undefined) (window.__terminals = window.__terminals || []).push(v);
}});
"""
SCREEN = """() => { const t = (window.__terminals || [])[0]; if (!t) return "";
  const b = t.buffer.active, out = [];
  for (let i = b.viewportY; i < b.viewportY + t.rows; i++) { const l = b.getLine(i); if (l) out.push(l.translateToString(true)); }
  return out.join("\\n"); }"""


def until(page, pred, what: str, timeout: float = 15) -> str:
    """The terminal's screen once ``pred(screen)`` holds; else fail showing what the page shows."""
    try:
        return wait_for(
            lambda: (lambda screen: screen if pred(screen) else None)(page.evaluate(SCREEN)), timeout=timeout, what=what
        )
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the page shows:\n{page.evaluate(SCREEN)}") from None


class Proc:
    def __init__(self, args: list[str], cwd: Path, env: dict[str, str] | None = None, ready: str = r"on (http://\S+)"):
        #: What the process said on stderr after its first line (kept for a stop that fails).
        self.said: deque[str] = deque(maxlen=200)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "iii_console", *args],
            cwd=cwd,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = self.proc.stderr.readline()
        m = re.search(ready, line)
        if m is None:
            self.stop()
            raise AssertionError(f"iii-console {args[0]} did not start: {line}{self.proc.stderr.read()}")
        self.url = m.group(1).rstrip(",")
        threading.Thread(target=lambda: self.said.extend(self.proc.stderr), daemon=True).start()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(30)
        except subprocess.TimeoutExpired:
            raise AssertionError(
                f"iii-console {self.proc.args[2:]} did not stop within 30 s of SIGTERM; its stderr:\n{''.join(self.said)}"
            ) from None
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
        # A clean drain exits 0; a forced stop (its deadline passed) exits 1 and says where it hung.
        assert code == 0, f"iii-console {self.proc.args[2:]} exited {code} on SIGTERM; its stderr:\n{''.join(self.said)}"


@pytest.fixture(scope="module")
def project(redis_server, tmp_path_factory):
    root = tmp_path_factory.mktemp("webproj")
    shutil.copytree(ROOT / "steps", root / "steps")
    # A short drain: a stop that hangs is forced (and says where) well within the 30 s the fixtures wait.
    make_project(
        root,
        {},
        "server:\n  port: 0\nworkers:\n  shutdown_timeout: 5\nqueues:\n  message.sent:\n    max_retries: 0\n",
        redis_url=redis_server.url,
    )
    return root


@pytest.fixture(scope="module")
def traffic(project):
    """A running app that has handled a few messages, one of them failing for good."""
    app = Proc(["--no-ui"], project, ready=r"on (http://\S+) with")
    app.traces = []  # type: ignore[attr-defined]
    for text in ["hello from a browser", "second message", "boom"]:
        body = {"text": text, **({"fail_times": 9} if text == "boom" else {})}
        r = httpx.post(f"{app.url}/messages", json=body)
        assert r.status_code == 202
        app.traces.append(r.json()["trace_id"])  # type: ignore[attr-defined]
    yield app
    app.stop()


@pytest.fixture(scope="module")
def web(project, traffic):
    env = {**os.environ, "III_AUTH_TOKEN": TOKEN}
    proc = Proc(["web", "--port", "0"], project, env=env)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        pytest.skip("no Chromium found (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (the test extra)")
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield chromium
        chromium.close()


def console_page(browser, url: str):
    page = browser.new_page(viewport={"width": 1400, "height": 800})
    page.add_init_script(HOOK)
    page.goto(url)
    return page


def test_the_console_runs_in_a_browser_with_the_token_and_is_read_only(browser, web, traffic):
    page = console_page(browser, f"{web.url}/?token={TOKEN}")
    try:
        assert "token" not in page.url  # the redirect took it out of the address bar
        shown = [t[:8] for t in traffic.traces]  # how the Live view shows a trace id

        def live(screen: str) -> bool:
            ours = [ln for ln in screen.splitlines() if any(t in ln for t in shown)]
            # The newest events are at the bottom: the traffic's processed and dead-lettered messages
            # (its http.received lines may have scrolled off behind the workers' own events).
            return any("message.processed" in ln for ln in ours) and any("message.dead_lettered" in ln for ln in ours)

        screen = until(page, live, "the Live view with the traffic's events", timeout=20)
        assert "read-only" in screen
        page.wait_for_timeout(300)  # a frame for the canvas to catch up with the buffer
        shot = page.screenshot()
        assert shot[:8] == b"\x89PNG\r\n\x1a\n" and len(shot) > 20_000
        if os.environ.get("III_SAVE_SCREENSHOTS"):
            (ROOT / "screenshots" / "web-console.png").write_bytes(shot)

        page.focus(".xterm-helper-textarea")
        page.keyboard.press("3")
        until(
            page,
            lambda screen: "Waiting" in screen and "message.sent" in screen and "http.received" not in screen,
            "the Queues view",
        )
        page.keyboard.press("s")  # send: refused, visibly
        until(page, lambda screen: "attached read-only" in " ".join(screen.split()), "the read-only notice")
    finally:
        page.close()


def test_every_route_needs_the_token_and_the_page_s_own_origin(web):
    with httpx.Client(base_url=web.url) as c:
        r = c.get("/")
        assert r.status_code == 401 and "Basic" in r.headers["www-authenticate"] and "?token=" in r.text
        assert c.get("/", params={"token": "wrong"}).status_code == 401
        assert c.get("/static/js/textual.js").status_code == 401
        assert c.get("/ws").status_code == 401
        assert c.get("/static/js/textual.js", headers={"Authorization": f"Bearer {TOKEN}"}).status_code == 200
        assert c.get("/", auth=("anyone", TOKEN)).status_code == 200
        r = c.get("/", params={"token": TOKEN, "fontsize": "14"})
        assert r.status_code == 303 and r.headers["location"] == "/?fontsize=14"
        assert "httponly" in r.headers["set-cookie"].lower() and "samesite=strict" in r.headers["set-cookie"].lower()
        assert TOKEN not in r.headers["set-cookie"]
        page = c.get("/")  # the cookie now
        assert page.status_code == 200 and "data-session-websocket-url" in page.text
        ws = {
            "Connection": "Upgrade",
            "Upgrade": "websocket",
            "Sec-WebSocket-Version": "13",
            "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==",
        }
        assert c.get("/ws", headers={**ws, "Origin": "http://evil.example"}).status_code == 403
        host = web.url.split("//", 1)[1]
        assert c.get("/", headers={"Host": f"evil.example:{host.rsplit(':', 1)[1]}"}).status_code == 400


def _attach_children(web) -> list:
    import psutil

    try:
        kids = psutil.Process(web.proc.pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    return [p for p in kids if "attach" in " ".join(p.cmdline())]


def test_a_session_asking_for_a_huge_window_and_dropped_leaves_no_console_behind(web):
    """Given the web console, when a session asks for a 3000 x 3000 window and its connection is then dropped
    without a close (a reset), then the console it started is gone within seconds (the size is bounded: frames of
    megabytes left that console blocked on its pipe for good)."""
    import base64
    import socket
    import struct

    host, port = web.url.split("//", 1)[1].rsplit(":", 1)
    before = {p.pid for p in _attach_children(web)}
    sock = socket.create_connection((host, int(port)), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(
        (
            f"GET /ws?width=3000&height=3000 HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n"
        ).encode()
    )
    assert sock.recv(100).startswith(b"HTTP/1.1 101")
    wait_for(lambda: {p.pid for p in _attach_children(web)} - before, timeout=20, what="the session's console started")
    time.sleep(3)  # it draws (and writes) its first frames
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()  # a reset: no close frame
    wait_for(lambda: not ({p.pid for p in _attach_children(web)} - before), timeout=20, what="the session's console gone")


def test_beyond_loopback_without_a_token_it_refuses_to_start(project):
    env = {k: v for k, v in os.environ.items() if k != "III_AUTH_TOKEN"}
    out = subprocess.run(
        [sys.executable, "-m", "iii_console", "web", "--host", "0.0.0.0", "--port", "0"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "server.auth_token" in out.stderr and "refusing to serve the console on 0.0.0.0" in out.stderr


def test_the_console_command_is_read_only_unless_actions_are_allowed_and_holds_no_secret():
    from iii_console.tui.web import console_command

    ro = console_command(allow_actions=False, server_url="http://127.0.0.1:3111", config_path=None)
    assert ro.endswith("attach --read-only") and "3111" not in ro
    rw = console_command(allow_actions=True, server_url="http://127.0.0.1:3111", config_path="iii-config.yaml")
    assert "--read-write --server-url http://127.0.0.1:3111 --config " in rw and "redis://" not in rw


def test_without_the_web_extra_it_says_what_to_install(project):
    code = "import sys; sys.modules['textual_serve'] = None\nfrom iii_console.cli import main\nsys.exit(main(['web']))\n"
    out = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stderr
    assert "pip install 'iii-console[web]'" in out.stderr and "Traceback" not in out.stderr
