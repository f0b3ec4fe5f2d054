"""``labeler ingest IMAGES -w WS``: register a folder of photos (incremental)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import workspace_option

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@click.command("ingest")
@click.argument("images", type=click.Path(exists=True, file_okay=False))
@workspace_option(create=True)
@click.option("--workers", type=click.IntRange(min=1), default=None, help="Reader threads.")
@click.option("--show-errors/--no-show-errors", default=True, help="List refused files.")
def command(images: str, ws: Workspace, workers: int | None, show_errors: bool) -> None:
    """Scan IMAGES recursively and add its photos to the workspace.

    Unreadable, corrupt or oversized files are recorded with a reason and skipped; files
    already ingested and unchanged are not read again.
    """
    from labeler.ingest import ingest_folder

    res = ingest_folder(ws, images, workers=workers)  # type: ignore[arg-type]
    click.echo(
        f"{res.scanned} image files: {res.new} new, {res.changed} changed, "
        f"{res.skipped_unchanged} unchanged; {res.ok} ok, {res.duplicates} duplicates, "
        f"{res.errors} errors"
    )
    if show_errors and res.errors:
        imgs = ws.images()  # type: ignore[attr-defined]
        bad = imgs[(imgs["root"] == res.root) & (imgs["status"] == "error")]
        for reason in bad["error"].head(20):
            click.echo(f"  error: {reason}", err=True)
        if len(bad) > 20:
            click.echo(f"  ... and {len(bad) - 20} more (see images.parquet)", err=True)
