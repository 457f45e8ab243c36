"""The feedback pages in a real browser: headless Chromium, driven over the Chrome DevTools protocol.

Chromium is started with ``--remote-debugging-pipe`` (commands on fd 3, replies on fd 4, each a JSON
message ended by a NUL byte), so only the standard library is needed. Each page is loaded at a laptop
(1280 px) and a phone (390 px) viewport, and the test asserts that every image decoded, that nothing
overflows horizontally, that nothing was requested from the network and that the console stayed free
of errors. Full-page screenshots are saved under pytest's tmp path; their paths are printed and put
in assertion messages.

Skipped, with the reason, when Chromium is not installed (CI installs the Debian ``chromium`` package).
"""

from __future__ import annotations

import base64
import fcntl
import importlib.util
import json
import os
import select
import shutil
import struct
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def _find_chromium() -> str | None:
    wanted = os.environ.get("CHROMIUM")
    if wanted:
        return wanted if os.access(wanted, os.X_OK) else None
    for name in ("chromium", "chromium-browser"):
        found = shutil.which(name)
        if found:
            return found
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else None


CHROMIUM = _find_chromium()
if CHROMIUM is None:
    pytest.skip(
        "headless Chromium is not installed (apt-get install chromium, or set CHROMIUM=/path/to/chrome)"
        + (f"; CHROMIUM={os.environ['CHROMIUM']} is not executable" if os.environ.get("CHROMIUM") else ""),
        allow_module_level=True,
    )

VIEWPORTS = {"laptop": (1280, 800, False), "phone": (390, 844, True)}
COMMAND_TIMEOUT = 30.0
ALLOWED_SCHEMES = ("data:", "file:", "about:")

# fds 3 and 4 of Chromium must be the pipes; this trampoline puts them there and execs Chromium.
_TRAMPOLINE = (
    "import os, sys\n"
    "r, w = int(sys.argv[1]), int(sys.argv[2])\n"
    "os.dup2(r, 3); os.dup2(w, 4); os.close(r); os.close(w)\n"
    "os.execv(sys.argv[3], sys.argv[3:])\n"
)


def _samples() -> Any:
    """tests/test_feedback.py's record builders (loaded by path, so any pytest import mode works)."""
    spec = importlib.util.spec_from_file_location("_feedback_samples", Path(__file__).with_name("test_feedback.py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Chromium:
    """A headless Chromium and a minimal DevTools client over ``--remote-debugging-pipe``."""

    def __init__(self, workdir: Path) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "chromium.log"
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        # Move the child's ends above 9 so the trampoline's dup2 onto 3 and 4 cannot clobber them.
        child_r = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD_CLOEXEC, 10)
        child_w = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        flags = [
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-extensions",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            "--mute-audio",
            f"--user-data-dir={workdir / 'profile'}",
            "--remote-debugging-pipe",
            "about:blank",
        ]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", _TRAMPOLINE, str(child_r), str(child_w), str(CHROMIUM), *flags],
                pass_fds=(child_r, child_w),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        os.close(child_r)
        os.close(child_w)
        self.out, self.inp = to_chrome_w, from_chrome_r
        self.buf = b""
        self.next_id = 0
        self.events: list[dict[str, Any]] = []

    # -- protocol --------------------------------------------------------------------------------

    def send(self, method: str, params: dict[str, Any] | None = None, session: str | None = None) -> dict[str, Any]:
        self.next_id += 1
        msg: dict[str, Any] = {"id": self.next_id, "method": method, "params": params or {}}
        if session:
            msg["sessionId"] = session
        data = json.dumps(msg).encode() + b"\0"
        while data:
            data = data[os.write(self.out, data) :]
        deadline = time.monotonic() + COMMAND_TIMEOUT
        while True:
            reply = self._read(deadline, f"the reply to {method}")
            if reply.get("id") == self.next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return dict(reply.get("result", {}))
            self.events.append(reply)

    def wait_event(self, method: str, session: str) -> dict[str, Any]:
        deadline = time.monotonic() + COMMAND_TIMEOUT
        seen = 0
        while True:
            for ev in self.events[seen:]:
                if ev.get("method") == method and ev.get("sessionId") == session:
                    return ev
            seen = len(self.events)
            self.events.append(self._read(deadline, f"the event {method}"))

    def _read(self, deadline: float, what: str) -> dict[str, Any]:
        while b"\0" not in self.buf:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"Chromium did not send {what} within {COMMAND_TIMEOUT:.0f} s; log: {self.log_path}")
            ready, _, _ = select.select([self.inp], [], [], left)
            if ready:
                chunk = os.read(self.inp, 1 << 20)
                if not chunk:
                    raise EOFError(f"Chromium closed the DevTools pipe (exit {self.proc.poll()}); log: {self.log_path}")
                self.buf += chunk
        raw, _, self.buf = self.buf.partition(b"\0")
        return dict(json.loads(raw))

    # -- pages -----------------------------------------------------------------------------------

    def inspect(self, page: Path, width: int, height: int, mobile: bool, screenshot: Path) -> dict[str, Any]:
        """Load ``page`` at a viewport; return what it measured, the problems it saw, and save a screenshot."""
        target = self.send("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        first_event = len(self.events)
        try:
            for domain in ("Page", "Runtime", "Log", "Network"):
                self.send(f"{domain}.enable", session=session)
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile},
                session=session,
            )
            self.send("Page.navigate", {"url": page.resolve().as_uri()}, session=session)
            self.wait_event("Page.loadEventFired", session)
            measured = self.send(
                "Runtime.evaluate",
                {
                    "expression": """JSON.stringify({
                        images: Array.from(document.images).map(i => ({
                            ok: i.complete && i.naturalWidth > 0, alt: i.alt,
                            natural: i.naturalWidth, shown: i.getBoundingClientRect().width,
                            right: i.getBoundingClientRect().right})),
                        scrollWidth: document.documentElement.scrollWidth,
                        bodyScrollWidth: document.body.scrollWidth,
                        innerWidth: window.innerWidth,
                        contentHeight: document.documentElement.scrollHeight,
                        wide: Array.from(document.querySelectorAll('body *'))
                            .filter(e => e.getBoundingClientRect().right > window.innerWidth + 0.5
                                         && !e.closest('.table-wrap, pre'))
                            .slice(0, 5).map(e => e.tagName + '.' + e.className)
                    })""",
                    "returnByValue": True,
                },
                session=session,
            )
            result = json.loads(measured["result"]["value"])
            full_height = min(int(result["contentHeight"]), 16000)
            shot = self.send(
                "Page.captureScreenshot",
                {
                    "format": "png",
                    "captureBeyondViewport": True,
                    "clip": {"x": 0, "y": 0, "width": width, "height": full_height, "scale": 1},
                },
                session=session,
            )
            screenshot.write_bytes(base64.b64decode(shot["data"]))
            result["problems"] = self._problems(self.events[first_event:], session)
            return result
        finally:
            self.send("Target.closeTarget", {"targetId": target})

    @staticmethod
    def _problems(events: list[dict[str, Any]], session: str) -> list[str]:
        out = []
        for ev in events:
            if ev.get("sessionId") != session:
                continue
            method, params = ev.get("method"), ev.get("params", {})
            if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert", "warning"):
                out.append(
                    f"console.{params['type']}: {[a.get('value', a.get('description')) for a in params.get('args', [])]}"
                )
            elif method == "Runtime.exceptionThrown":
                out.append(f"exception: {params.get('exceptionDetails', {}).get('text')}")
            elif method == "Log.entryAdded" and params.get("entry", {}).get("level") in ("error", "warning"):
                entry = params["entry"]
                out.append(
                    f"log {entry.get('level')} ({entry.get('source')}): {entry.get('text')} {entry.get('url', '')}"
                )
            elif method == "Network.requestWillBeSent":
                url = params.get("request", {}).get("url", "")
                if not url.startswith(ALLOWED_SCHEMES):
                    out.append(f"network request: {url}")
            elif method == "Network.loadingFailed":
                out.append(f"failed to load: {params.get('errorText')}")
        return out

    def close(self) -> None:
        try:
            self.send("Browser.close")
        except (OSError, RuntimeError, TimeoutError, EOFError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        os.close(self.out)
        os.close(self.inp)


# ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    return _samples().build_pages(tmp_path_factory.mktemp("grades"))  # type: ignore[no-any-return]


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Chromium]:
    b = Chromium(tmp_path_factory.mktemp("chromium"))
    try:
        yield b
    finally:
        b.close()


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("screenshots")


@pytest.mark.parametrize("viewport", list(VIEWPORTS))
@pytest.mark.parametrize("page", ["alice", "bob", "carol", "index"])
def test_page_renders_in_chromium(
    site: dict[str, Path], browser: Chromium, shots: Path, page: str, viewport: str
) -> None:
    width, height, mobile = VIEWPORTS[viewport]
    screenshot = shots / f"{page}-{viewport}-{width}px.png"
    result = browser.inspect(site[page], width, height, mobile, screenshot)
    where = f"page {site[page]}, screenshot {screenshot}"
    print(f"\nscreenshot: {screenshot}")

    assert result["innerWidth"] == width, where
    broken = [img["alt"] for img in result["images"] if not img["ok"]]
    assert not broken, f"images that did not load: {broken} ({where})"
    if page != "carol":  # the invalid submission has no plots
        assert result["images"], where
    for img in result["images"]:
        assert img["right"] <= width + 0.5, f"image overflows: {img} ({where})"
    assert result["scrollWidth"] <= width, (
        f"page is {result['scrollWidth']} px wide at {width} px: {result['wide']} ({where})"
    )
    assert result["bodyScrollWidth"] <= width, where
    assert not result["wide"], f"elements wider than the viewport: {result['wide']} ({where})"
    assert not result["problems"], f"console errors or network requests: {result['problems']} ({where})"

    png = screenshot.read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n"), where
    shot_width, shot_height = struct.unpack(">II", png[16:24])
    assert shot_width == width and shot_height >= min(height, 300), (shot_width, shot_height, where)
