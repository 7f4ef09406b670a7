"""A real headless Chromium for page tests, driven over the DevTools protocol, (tests/serve/conftest.py's `browser`
fixture skips when it is missing)."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"


def _above_4(fd: int) -> int:
    """The same pipe end on a descriptor >= 10, so that moving it to 3 or 4 in the child clobbers nothing."""
    import fcntl

    high = fcntl.fcntl(fd, fcntl.F_DUPFD, 10)
    os.close(fd)
    return high


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (--remote-debugging-pipe: commands on fd 3,
    answers on fd 4, each one JSON message ended by a NUL byte). `--dump-dom` cannot wait for a streamed answer:
    its virtual time runs out while the fetch body is still arriving."""

    def __init__(self, width: int = 1200, height: int = 900):
        self.profile = tempfile.TemporaryDirectory()
        to_chrome_r, to_chrome_w = os.pipe()
        from_chrome_r, from_chrome_w = os.pipe()
        to_chrome_r, from_chrome_w = _above_4(to_chrome_r), _above_4(from_chrome_w)
        flags = [
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            "--disable-extensions",
            f"--user-data-dir={self.profile.name}",
            "--remote-debugging-pipe",
            f"--window-size={width},{height}",
            "about:blank",
        ]
        # the pipe's ends become the browser's fds 3 and 4 by the shell's redirections (no preexec_fn: the
        # server's threads run in this process)
        move = f'exec "$@" 3<&{to_chrome_r} 4>&{from_chrome_w} {to_chrome_r}<&- {from_chrome_w}>&-'
        self.proc = subprocess.Popen(
            ["bash", "-c", move, "chromium", CHROMIUM, *flags],
            pass_fds=(to_chrome_r, from_chrome_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self.w, self.r = os.fdopen(to_chrome_w, "wb", buffering=0), os.fdopen(from_chrome_r, "rb", buffering=0)
        self.buf, self.ids, self.session = b"", 0, None
        self.width, self.height = width, height

    def send(self, method: str, params: dict | None = None, browser: bool = False) -> dict:
        self.ids += 1
        msg = {"id": self.ids, "method": method, "params": params or {}}
        if self.session and not browser:
            msg["sessionId"] = self.session
        self.w.write(json.dumps(msg).encode() + b"\0")
        while True:
            while b"\0" not in self.buf:
                part = self.r.read(1 << 16)
                if not part:
                    raise RuntimeError("chromium closed its DevTools pipe")
                self.buf += part
            raw, self.buf = self.buf.split(b"\0", 1)
            answer = json.loads(raw)
            if answer.get("id") == self.ids:
                if "error" in answer:
                    raise RuntimeError(f"{method}: {answer['error']}")
                return answer.get("result", {})

    def open(self, url: str) -> None:
        if self.session is None:
            target = self.send("Target.createTarget", {"url": "about:blank"}, browser=True)["targetId"]
            self.session = self.send("Target.attachToTarget", {"targetId": target, "flatten": True}, browser=True)[
                "sessionId"
            ]
            self.send(
                "Emulation.setDeviceMetricsOverride",
                {"width": self.width, "height": self.height, "deviceScaleFactor": 1, "mobile": False},
            )
        self.send("Page.navigate", {"url": url})

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", {"expression": expression, "returnByValue": True})
        if "exceptionDetails" in r:
            raise RuntimeError(r["exceptionDetails"].get("text", "script error"))
        return r["result"].get("value")

    def wait(self, expression: str, timeout: float = 30.0):
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                value = self.js(expression)
            except RuntimeError:  # the page is between documents
                value = None
            if value:
                return value
            time.sleep(0.05)
        raise AssertionError(f"the page never satisfied {expression!r}: body is {self.js('document.body.outerHTML')}")

    def screenshot(self, path, full_page: bool = False) -> None:
        params: dict = {"format": "png"}
        if full_page:
            height = self.js("document.documentElement.scrollHeight")
            params.update(
                captureBeyondViewport=True, clip={"x": 0, "y": 0, "width": self.width, "height": height, "scale": 1}
            )
        Path(path).write_bytes(base64.b64decode(self.send("Page.captureScreenshot", params)["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", browser=True)
        except (RuntimeError, OSError):
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.w.close()
        self.r.close()
        self.profile.cleanup()


def shown_number(v: float) -> str:
    """A score as steps.js's num() writes it."""
    if v == int(v):
        return str(int(v))
    if abs(v) >= 100:
        return f"{v:.1f}"
    if abs(v) >= 0.01:
        return f"{v:.3f}"
    return re.sub(r"e([+-])0*(\d)", r"e\1\2", f"{v:.2e}")
