"""A real headless Chromium driven through the DevTools protocol over a pipe
(`--remote-debugging-pipe`: JSON messages ending in NUL on fds 3 and 4), standard library only.

`load(path)` opens a local page and returns what an operator's browser would have met: console
errors, uncaught exceptions, every request the page made, and a full-page screenshot.
"""
from __future__ import annotations

import base64
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


@dataclass
class PageLoad:
    errors: list[str]            # console errors, uncaught exceptions, failed loads, CSP violations
    requests: list[str]          # every URL the page asked for, the page itself included (data: URLs cut
                                 # to their first 40 characters)
    screenshot: bytes            # PNG of the whole page
    boxes: dict[str, dict]       # CSS selector -> {x, y, width, height, loaded} in screenshot pixels


class _DevTools:
    def __init__(self, executable: str, profile: str):
        to_browser_r, self._to_browser = os.pipe()
        self._from_browser, from_browser_w = os.pipe()

        def on_fds_3_and_4():
            reads, writes = os.dup(to_browser_r), os.dup(from_browser_w)
            os.dup2(reads, 3)
            os.dup2(writes, 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--remote-debugging-pipe", "--no-sandbox", "--disable-gpu",
             "--no-first-run", "--no-default-browser-check", "--disable-extensions",
             f"--user-data-dir={profile}", "about:blank"],
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=on_fds_3_and_4, close_fds=False)   # dup2 leaves 3 and 4 inheritable
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._buffer = b""
        self._next_id = 0
        self.events: list[dict] = []

    def send(self, method: str, params: dict | None = None, session: str | None = None,
             timeout: float = 30) -> dict:
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.time() + timeout
        while True:
            reply = self._read(deadline, f"a reply to {method}")
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self.events.append(reply)

    def wait_for(self, method: str, timeout: float) -> dict:
        deadline = time.time() + timeout
        for event in self.events:
            if event.get("method") == method:
                return event
        while True:
            event = self._read(deadline, method)
            self.events.append(event)
            if event.get("method") == method:
                return event

    def _read(self, deadline: float, what: str) -> dict:
        while b"\0" not in self._buffer:
            left = deadline - time.time()
            if left <= 0 or not select.select([self._from_browser], [], [], left)[0]:
                raise TimeoutError(f"chromium sent no {what} in time")
            chunk = os.read(self._from_browser, 1 << 20)
            if not chunk:
                raise RuntimeError(f"chromium closed the pipe (exit {self.process.poll()}) before {what}")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def close(self) -> None:
        try:
            os.write(self._to_browser, json.dumps({"id": 0, "method": "Browser.close"}).encode() + b"\0")
            self.process.wait(timeout=10)
        except (OSError, subprocess.TimeoutExpired):
            self.process.kill()
            self.process.wait()
        finally:
            os.close(self._to_browser)
            os.close(self._from_browser)


def load(page: Path, selectors: list[str], width: int = 1400, timeout: float = 30) -> PageLoad:
    """Open `page` in headless Chromium, let it settle, and report what happened."""
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        tools = _DevTools(chromium(), profile)
        try:
            target = tools.send("Target.createTarget", {"url": "about:blank"}, timeout=timeout)["targetId"]
            session = tools.send("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
            for domain in ("Page", "Runtime", "Log", "Network"):
                tools.send(f"{domain}.enable", session=session)
            tools.send("Emulation.setDeviceMetricsOverride",
                       {"width": width, "height": 900, "deviceScaleFactor": 1, "mobile": False}, session)
            tools.events.clear()
            tools.send("Page.navigate", {"url": page.resolve().as_uri()}, session)
            tools.wait_for("Page.loadEventFired", timeout)
            time.sleep(0.5)                       # late console messages, if any
            script = ("JSON.stringify(Object.fromEntries(%s.map(s => { const e = document.querySelector(s);"
                      " if (!e) return [s, null]; const r = e.getBoundingClientRect();"
                      " return [s, {x: r.x + scrollX, y: r.y + scrollY, width: r.width, height: r.height,"
                      " loaded: e.complete === undefined ? true : e.complete && e.naturalWidth > 0}]; })))"
                      % json.dumps(selectors))
            boxes = json.loads(tools.send("Runtime.evaluate", {"expression": script, "returnByValue": True},
                                          session)["result"]["value"])
            shot = tools.send("Page.captureScreenshot", {"format": "png", "captureBeyondViewport": True},
                              session, timeout=timeout)["data"]
        finally:
            tools.close()
    return PageLoad(errors=_errors(tools.events), requests=_requests(tools.events),
                    screenshot=base64.b64decode(shot), boxes=boxes)


def _errors(events: list[dict]) -> list[str]:
    out = []
    for event in events:
        method, params = event.get("method"), event.get("params", {})
        if method == "Runtime.exceptionThrown":
            out.append(f"exception: {params['exceptionDetails'].get('text')} "
                       f"{params['exceptionDetails'].get('exception', {}).get('description', '')}")
        elif method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            out.append("console: " + " ".join(str(a.get("value", a.get("description"))) for a in params["args"]))
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            out.append(f"log ({params['entry'].get('source')}): {params['entry'].get('text')}")
        elif method == "Network.loadingFailed":
            out.append(f"load failed: {params.get('errorText')} {params.get('blockedReason', '')}")
    return out


def _requests(events: list[dict]) -> list[str]:
    urls = [e["params"]["request"]["url"] for e in events if e.get("method") == "Network.requestWillBeSent"]
    return [url[:40] if url.startswith("data:") else url for url in urls]
