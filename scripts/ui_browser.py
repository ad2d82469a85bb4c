"""A small headless-Chromium driver over the DevTools protocol (Debian's ``chromium``, no downloads).

Only what the UI screenshots and the browser test need: open a page, wait until a text or a JavaScript
condition shows up in the rendered DOM, run JavaScript, click, take a PNG screenshot. The websocket
client is aiohttp's (installed with MLflow); nothing else is needed.

Example:
    >>> async def demo():  # doctest: +SKIP
    ...     async with Chromium() as browser:
    ...         await browser.goto("http://127.0.0.1:5000/#/experiments")
    ...         await browser.wait_text("Experiments")
    ...         await browser.screenshot("experiments.png")
"""

from __future__ import annotations

import asyncio
import base64
import itertools
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome")


def find_chromium() -> str | None:
    """Path of a Chromium binary on PATH (``$AQS_CHROMIUM`` first), or None."""
    explicit = os.environ.get("AQS_CHROMIUM")
    if explicit:
        return explicit if Path(explicit).exists() else None
    for name in CHROMIUM_NAMES:
        found = shutil.which(name)
        if found:
            return found
    return None


class BrowserError(RuntimeError):
    """Chromium did not start, a page did not render in time, or a DevTools call failed."""


class Chromium:
    """One headless Chromium with one page, driven over the DevTools protocol."""

    def __init__(self, width: int = 1440, height: int = 900, binary: str | None = None) -> None:
        self.width, self.height = width, height
        self.binary = binary or find_chromium()
        if not self.binary:
            raise BrowserError("no chromium on PATH (apt-get install -y chromium)")
        self._ids = itertools.count(1)
        self._proc: subprocess.Popen | None = None
        self._profile: tempfile.TemporaryDirectory | None = None
        self._session: Any = None
        self._ws: Any = None
        self._pending: dict[int, asyncio.Future] = {}
        self._reader: asyncio.Task | None = None

    async def __aenter__(self) -> Chromium:
        import aiohttp

        self._profile = tempfile.TemporaryDirectory(prefix="aqs-chromium-")
        profile = Path(self._profile.name)
        self._proc = subprocess.Popen(
            [
                self.binary,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-dev-shm-usage",
                "--hide-scrollbars",
                "--no-first-run",
                "--no-default-browser-check",
                "--mute-audio",
                "--disable-extensions",
                "--disable-background-networking",
                "--disable-sync",
                f"--user-data-dir={profile}",
                "--remote-debugging-port=0",
                "--remote-debugging-address=127.0.0.1",
                f"--window-size={self.width},{self.height}",
                "about:blank",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not port_file.is_file() or not port_file.read_text().strip():
            if self._proc.poll() is not None or time.monotonic() > deadline:
                await self.__aexit__(None, None, None)
                raise BrowserError("chromium did not open its DevTools port within 30 s")
            await asyncio.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
            pages = [t for t in json.loads(r.read()) if t.get("type") == "page"]
        if not pages:
            raise BrowserError("chromium has no page target")
        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0)
        self._reader = asyncio.create_task(self._read())
        await self.send("Page.enable")
        await self.send("Runtime.enable")
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=self.width,
            height=self.height,
            deviceScaleFactor=1,
            mobile=False,
        )
        return self

    async def __aexit__(self, *exc: Any) -> None:
        if self._reader is not None:
            self._reader.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._session is not None:
            await self._session.close()
        if self._proc is not None and self._proc.poll() is None:
            try:
                os.killpg(self._proc.pid, signal.SIGTERM)
                self._proc.wait(timeout=10)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                try:
                    os.killpg(self._proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        if self._profile is not None:
            self._profile.cleanup()

    async def _read(self) -> None:
        async for msg in self._ws:
            data = json.loads(msg.data)
            future = self._pending.pop(data.get("id", -1), None)
            if future is not None and not future.done():
                future.set_result(data)

    async def send(self, method: str, timeout: float = 30, **params: Any) -> dict:
        """One DevTools call; returns its ``result``."""
        call_id = next(self._ids)
        future = asyncio.get_running_loop().create_future()
        self._pending[call_id] = future
        await self._ws.send_str(json.dumps({"id": call_id, "method": method, "params": params}))
        data = await asyncio.wait_for(future, timeout)
        if "error" in data:
            raise BrowserError(f"{method}: {data['error']}")
        return data.get("result", {})

    async def eval(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page (promises awaited)."""
        result = await self.send(
            "Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True
        )
        if "exceptionDetails" in result:
            raise BrowserError(
                f"javascript error: {result['exceptionDetails'].get('text')}: {expression[:200]}"
            )
        return result.get("result", {}).get("value")

    async def goto(self, url: str) -> None:
        await self.send("Page.navigate", url=url)

    async def wait_for(self, expression: str, timeout: float = 30, what: str = "") -> Any:
        """Poll a JavaScript expression until it is truthy; returns its value."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = await self.eval(expression)
            except BrowserError:
                value = None
            if value:
                return value
            if time.monotonic() > deadline:
                raise BrowserError(f"not rendered within {timeout:.0f} s: {what or expression[:200]}")
            await asyncio.sleep(0.25)

    async def wait_text(self, text: str, timeout: float = 30) -> None:
        """Wait until ``text`` is part of the page's visible text."""
        await self.wait_for(
            f"document.body && document.body.innerText.includes({json.dumps(text)})",
            timeout,
            f"text {text!r}",
        )

    async def text(self) -> str:
        """The page's rendered, visible text."""
        text = await self.eval("document.body ? document.body.innerText : ''") or ""
        return text.replace("\xa0", " ")  # the UI separates "@" and an alias with a no-break space

    async def click_text(
        self,
        text: str,
        selector: str = "button, a, [role=button], [role=menuitem], "
        "[role=tab], [role=option], [role=menuitemcheckbox], label, span",
        exact: bool = True,
    ) -> bool:
        """Click the first visible element matching ``selector`` whose text is ``text``."""
        js = f"""(() => {{
            const want = {json.dumps(text)};
            for (const el of document.querySelectorAll({json.dumps(selector)})) {{
                const t = (el.innerText || el.textContent || '').trim();
                if ({"t === want" if exact else "t.includes(want)"} && el.offsetParent !== null) {{
                    el.scrollIntoView({{block: 'center'}}); el.click(); return true; }}
            }}
            return false; }})()"""
        return bool(await self.eval(js))

    async def resize(self, width: int, height: int) -> None:
        """Resize the page's viewport (the layout follows)."""
        self.width, self.height = width, height
        await self.send(
            "Emulation.setDeviceMetricsOverride",
            width=width,
            height=height,
            deviceScaleFactor=1,
            mobile=False,
        )

    async def screenshot(self, path: str | Path) -> Path:
        """PNG of the viewport."""
        data = await self.send("Page.captureScreenshot", format="png")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(base64.b64decode(data["data"]))
        return path
