"""Start ``labeler app`` in a subprocess for a test, and make sure it is gone afterwards.

:func:`running_app` is a context manager: whatever happens inside (a failed assertion, a
timeout), the server is stopped on exit, SIGTERM first, SIGKILL after 10 s, and any process
still naming the workspace on its command line is killed too (a server left behind by a
wrapper would be one of those).
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def answers(url: str) -> bool:
    """Whether a Streamlit server answers its health check at ``url``."""
    try:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def wait_healthy(url: str, proc: subprocess.Popen, timeout: float = 90) -> None:
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            out = proc.stdout.read().decode(errors="replace") if proc.stdout else ""
            raise RuntimeError(f"labeler app exited with {proc.returncode}: {out[-2000:]}")
        if answers(url):
            return
        time.sleep(0.3)
    raise TimeoutError(f"labeler app did not answer at {url} within {timeout} s")


def pids_mentioning(text: str) -> list[int]:
    """Ids of live processes whose command line contains ``text`` (Linux /proc)."""
    out = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if text in cmdline and "State:\tZ" not in status:  # zombies are already dead
            out.append(int(entry.name))
    return out


@contextlib.contextmanager
def running_app(
    workspace: Path,
    *,
    env: dict[str, str] | None = None,
    timeout: float = 90,
    host: str | None = None,
    extra: tuple[str, ...] = (),
) -> Iterator[tuple[str, subprocess.Popen]]:
    """``labeler app -w workspace`` on a free port; yields ``(url, process)``.

    ``host`` is passed as ``--host`` (default: none, the app's own 127.0.0.1), ``extra``
    after it (e.g. ``("--sign-in",)``); the url is
    always the loopback one, so a test's traffic never leaves this computer."""
    proc: subprocess.Popen | None = None
    try:
        for attempt in range(3):  # the free port can be taken before the server binds it
            port = free_port()
            proc = subprocess.Popen(
                [sys.executable, "-c", "from labeler.cli import main; main()", "app", "-w",
                 str(workspace), "--port", str(port), *(["--host", host] if host else []), *extra],
                env={**os.environ, **(env or {})},
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
            url = f"http://127.0.0.1:{port}"
            try:
                wait_healthy(url, proc, timeout)
                break
            except RuntimeError as exc:  # it exited: tried again only when its port was taken
                if proc.stdout:
                    proc.stdout.close()
                if attempt == 2 or f"Port {port} is not available" not in str(exc):
                    raise
        yield url, proc
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        for pid in pids_mentioning(str(workspace)):  # anything the wrapper left behind
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        if proc is not None and proc.stdout:
            proc.stdout.close()


def settle(page, ms: int = 400) -> None:
    """Wait until Streamlit has finished the rerun a click started (a Playwright ``page``):
    no status widget and no element marked stale, twice in a row 100 ms apart."""
    page.wait_for_timeout(250)
    for _ in range(2):
        page.wait_for_function(
            """() => !document.querySelector('[data-testid="stStatusWidget"]')
                     && !document.querySelector('[data-stale="true"]')""",
            timeout=60_000,
        )
        page.wait_for_timeout(100)
    page.wait_for_timeout(ms)
