"""``labeler app``: start the Streamlit labeling app on a workspace."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from labeler.cli._common import labeler_command, workspace_option

if TYPE_CHECKING:
    from labeler.workspace import Workspace


def streamlit_command(
    workspace: str,
    *,
    host: str = "127.0.0.1",
    port: int = 8501,
    python: str | None = None,
    sign_in: bool = False,
) -> list[str]:
    """The ``python -m streamlit run`` command line for ``workspace`` (headless, no stats);
    ``sign_in`` makes the app ask a sign-in also on a loopback address (behind a proxy)."""
    import sys

    import labeler.ui

    app = Path(labeler.ui.__file__).with_name("app.py")
    return [
        python or sys.executable, "-m", "streamlit", "run", str(app),
        "--server.address", host,
        "--server.port", str(port),
        "--server.headless", "true",
        "--server.fileWatcherType", "none",
        "--server.enableStaticServing", "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "minimal",
        "--runner.postScriptGC", "false",
        "--", "--workspace", workspace, *(["--sign-in"] if sign_in else []),
    ]  # fmt: skip


def run_server(cmd: list[str], env: dict[str, str]) -> int:
    """Run the Streamlit server ``cmd`` so that it shares this process's fate.

    On POSIX the process *becomes* the server (``exec``): a supervisor's SIGTERM, ``docker
    stop`` or Ctrl+C reach Streamlit itself, which shuts down cleanly, and nothing is left
    behind. Elsewhere the server runs as a child and SIGTERM/SIGINT are forwarded to it.
    Returns the server's exit code (only on the non-POSIX path).
    """
    import os
    import signal
    import subprocess
    import sys

    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        os.execve(cmd[0], cmd, env)  # no return
    child = subprocess.Popen(cmd, env=env)

    def forward(signum: int, _frame: object) -> None:
        if child.poll() is None:
            child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    try:
        return child.wait()
    finally:
        if child.poll() is None:  # the wrapper is dying for another reason: take the server along
            child.terminate()
            try:
                child.wait(10)
            except subprocess.TimeoutExpired:
                child.kill()


def start_checks(ws: Workspace) -> Path | None:
    """What ``labeler app`` does before Streamlit starts; returns the start's backup.

    Refuses (one line naming the file and the fix) a read-only workspace, a damaged
    label store (``PRAGMA quick_check``, :func:`labeler.labels.backup.require_sound_store`):
    a damaged store is neither served nor backed up, and a missing store while backups of
    it exist (restore it: an empty store started in its place would be backed up over the
    good copies). Removes the temporary files a killed labeler left in the workspace, creates
    a missing store in a fresh workspace, then backs the store up (one backup per start;
    rotation keeps the newest sound one and the one with the most events). A full disk is
    one line too.
    """
    import os

    from labeler._io import remove_stale_temps
    from labeler.labels import LabelStore
    from labeler.labels.backup import make_backup, require_sound_store

    if not os.access(ws.root, os.W_OK):
        raise click.ClickException(
            f"{ws.root} is read-only; the app saves labels in {ws.labels_db}: make the "
            "workspace writable (or copy it somewhere writable)"
        )
    require_sound_store(ws.labels_db)
    remove_stale_temps(ws.root)  # e.g. the new store's copy a killed restore left
    LabelStore(ws.labels_db).version()  # creates a missing store
    return make_backup(ws.labels_db)


def access_check(ws: Workspace, host: str, *, sign_in: bool = False) -> list[str]:
    """Refuse to listen beyond this computer (or to ask a sign-in) without annotators to sign
    in; returns their names ([] on a loopback address without ``sign_in``, where the app
    asks a name as always)."""
    from labeler.ui.access import annotators, is_loopback

    if is_loopback(host) and not sign_in:
        return []
    names = [a.name for a in annotators(ws.root)]
    if not names:
        why = (
            f"--host {host} lets anyone on the network reach the app"
            if not is_loopback(host)
            else "--sign-in asks every browser to sign in"
        )
        raise click.ClickException(
            f"{why}, but {ws.root} has no annotators to sign in: add one with "
            f"'labeler annotators add NAME -w {ws.root}' (or leave out --host to label on "
            "this computer only)"
        )
    return names


@labeler_command("app")
@workspace_option()
@click.option(
    "--host",
    default="127.0.0.1",
    show_default=True,
    help="Address to listen on; any other than a loopback one (e.g. 0.0.0.0) needs annotators "
    "who sign in ('labeler annotators add NAME').",
)
@click.option(
    "--port",
    default=8501,
    show_default=True,
    type=click.IntRange(1, 65535),
    help="Port to listen on (1-65535).",
)
@click.option(
    "--sign-in",
    "sign_in",
    is_flag=True,
    help="Ask annotators to sign in also on a loopback address (behind a TLS reverse proxy).",
)
def command(ws: Workspace, host: str, port: int, sign_in: bool) -> None:
    """Open the labeling app in the browser (Streamlit) on WORKSPACE.

    Only images inside the workspace and its ingested folders are ever served. The command
    becomes the Streamlit server (POSIX), so stopping it (Ctrl+C, SIGTERM) stops the server.
    """
    import os

    who = access_check(ws, host, sign_in=sign_in)
    start_checks(ws)
    cmd = streamlit_command(str(ws.root), host=host, port=port, sign_in=bool(who))
    env = {**os.environ, "LABELER_WORKSPACE": str(ws.root)}
    click.echo(f"labeler app on http://{host}:{port}  (workspace {ws.root}; Ctrl+C to stop)")
    if who:
        click.echo(f"sign-in required: {len(who)} annotator(s) (labeler annotators list)")
    raise SystemExit(run_server(cmd, env))
