"""A real browser for the HTML reports: Debian's headless Chromium, with no network.

`chromium(directory, *args)` runs it once (`--dump-dom`, `--screenshot`); `computed_styles`
opens a page and reads the style the browser computed for elements, over the DevTools protocol
on a pipe (`--remote-debugging-pipe`: no port, no socket), so a test sees the colour a person
sees, whatever CSS rule won. The browser runs in a network namespace of its own with no
interface up (as root): the page must open with no network.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def _browser_argv(directory: Path) -> list[str]:
    binary = shutil.which("chromium")
    if binary is None:
        pytest.skip("no chromium: scripts/test.sh installs it (apt-get install chromium)")
    offline = ["unshare", "--net"] if os.geteuid() == 0 and shutil.which("unshare") else []
    profile = directory / f"profile-{len(list(directory.glob('profile-*')))}"
    return [*offline, binary, *CHROMIUM_FLAGS, f"--user-data-dir={profile}"]


def chromium(directory: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Debian's chromium, headless, with a fresh profile and nothing that phones home, in a
    network namespace of its own with no interface up: the page must open with no network."""
    return subprocess.run(
        [*_browser_argv(directory), *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )


@dataclass(frozen=True)
class Styled:
    """One element the browser laid out: its classes, its text and the computed properties."""

    classes: tuple[str, ...]
    text: str
    style: dict[str, str]


class _Pipe:
    """The DevTools protocol over --remote-debugging-pipe: NUL-terminated JSON messages, the
    browser reads commands on its fd 3 and writes answers and events on its fd 4."""

    def __init__(self, argv: Sequence[str]) -> None:
        # High descriptors, so that moving them to 3 and 4 in the child clobbers nothing.
        def high(fd: int) -> int:
            moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 100)
            os.close(fd)
            return moved

        commands_in, self._commands = map(high, os.pipe())
        self._answers, answers_out = map(high, os.pipe())

        def child() -> None:
            os.dup2(commands_in, 3)
            os.dup2(answers_out, 4)

        self.process = subprocess.Popen(
            [*argv, "--remote-debugging-pipe", "about:blank"],
            pass_fds=(3, 4),
            preexec_fn=child,  # the test process runs no other thread
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        os.close(commands_in)
        os.close(answers_out)
        self._buffer = b""
        self._next_id = 0
        self._events: list[dict[str, Any]] = []

    def _message(self) -> dict[str, Any]:
        while b"\0" not in self._buffer:
            chunk = os.read(self._answers, 1 << 16)
            if not chunk:
                raise RuntimeError("the browser closed the DevTools pipe")
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b"\0", 1)
        message: dict[str, Any] = json.loads(raw)
        return message

    def send(self, method: str, session: str | None = None, **params: object) -> dict[str, Any]:
        self._next_id += 1
        command: dict[str, object] = {"id": self._next_id, "method": method, "params": params}
        if session is not None:
            command["sessionId"] = session
        os.write(self._commands, json.dumps(command).encode() + b"\0")
        while True:
            message = self._message()
            if message.get("id") == self._next_id:
                if "error" in message:
                    raise RuntimeError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result
            self._events.append(message)

    def wait_for(self, event: str) -> None:
        while not any(e.get("method") == event for e in self._events):
            self._events.append(self._message())

    def close(self) -> None:
        with contextlib.suppress(RuntimeError):  # the browser may be gone already
            self.send("Browser.close")
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()  # the process this helper started, by its own handle
            self.process.wait()
        os.close(self._commands)
        os.close(self._answers)


def computed_styles(
    directory: Path, page: Path, selector: str, properties: Sequence[str]
) -> list[Styled]:
    """The elements of `page` matching the CSS `selector`, in document order, with the values
    the browser computed for `properties` (`background-color` as `rgb(26, 127, 55)`)."""
    pipe = _Pipe(_browser_argv(directory))
    try:
        target = pipe.send("Target.createTarget", url="about:blank")["targetId"]
        session = pipe.send("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]
        pipe.send("Page.enable", session)
        pipe.send("Page.navigate", session, url=page.as_uri())
        pipe.wait_for("Page.loadEventFired")
        pipe.send("DOM.enable", session)
        pipe.send("CSS.enable", session)
        root = pipe.send("DOM.getDocument", session)["root"]["nodeId"]
        nodes = pipe.send("DOM.querySelectorAll", session, nodeId=root, selector=selector)
        found = []
        for node in nodes["nodeIds"]:
            computed = pipe.send("CSS.getComputedStyleForNode", session, nodeId=node)
            style = {p["name"]: p["value"] for p in computed["computedStyle"]}
            described = pipe.send("DOM.describeNode", session, nodeId=node)["node"]
            attributes = described.get("attributes", [])
            classes = dict(zip(attributes[::2], attributes[1::2], strict=True)).get("class", "")
            html = pipe.send("DOM.getOuterHTML", session, nodeId=node)["outerHTML"]
            found.append(
                Styled(
                    classes=tuple(classes.split()),
                    text=_text_of(html),
                    style={name: style.get(name, "") for name in properties},
                )
            )
        return found
    finally:
        pipe.close()


def _text_of(html: str) -> str:
    from html.parser import HTMLParser

    parts: list[str] = []

    class Text(HTMLParser):
        def handle_data(self, data: str) -> None:
            parts.append(data)

    Text().feed(html)
    return " ".join("".join(parts).split())
