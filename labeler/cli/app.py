"""``labeler app``: start the Streamlit labeling app on a workspace."""

from __future__ import annotations

import click

from labeler.cli._common import workspace_option


def streamlit_command(
    workspace: str, *, host: str = "127.0.0.1", port: int = 8501, python: str | None = None
) -> list[str]:
    """The ``python -m streamlit run`` command line for ``workspace`` (headless, no stats)."""
    import sys
    from pathlib import Path

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
        "--", "--workspace", workspace,
    ]  # fmt: skip


@click.command("app")
@workspace_option()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8501, show_default=True, type=int, help="Port to listen on.")
def command(ws: object, host: str, port: int) -> None:
    """Open the labeling app in the browser (Streamlit) on WORKSPACE.

    Only images inside the workspace and its ingested folders are ever served.
    """
    import os
    import subprocess

    cmd = streamlit_command(str(ws.root), host=host, port=port)
    env = {**os.environ, "LABELER_WORKSPACE": str(ws.root)}
    click.echo(f"labeler app on http://{host}:{port}  (workspace {ws.root}; Ctrl+C to stop)")
    try:
        code = subprocess.call(cmd, env=env)
    except KeyboardInterrupt:
        code = 0
    raise SystemExit(code)
