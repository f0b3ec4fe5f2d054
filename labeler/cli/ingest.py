"""``labeler ingest IMAGES -w WS``: register a folder of photos (incremental)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import click

from labeler.cli._common import (
    labeler_command,
    progress_option,
    workers_option,
    workspace_option,
)

if TYPE_CHECKING:
    from labeler.workspace import Workspace


def follow_links_option(*, recorded: bool = True) -> Callable[[Any], Any]:
    """``--follow-links``: let file and folder symlinks lead out of the photo folder
    (:mod:`labeler.fence`). ``recorded``: a ``--follow-links/--no-follow-links`` switch
    whose default is what the workspace recorded for the folder (ingest, run); otherwise off
    by default (predict, which keeps no record)."""
    what = (
        "Read symlinks that lead out of the photo folder (a file or folder elsewhere); "
        "devices and FIFOs are never read."
    )
    if recorded:
        return click.option(
            "--follow-links/--no-follow-links",
            default=None,
            help=what + " Default: as the last ingest of this folder (off for a new one); "
            "export and the app apply the same setting.",
        )
    return click.option(
        "--follow-links/--no-follow-links", default=False, show_default=True, help=what
    )


@labeler_command("ingest")
@click.argument("images", type=click.Path(exists=True, file_okay=False))
@workspace_option(create=True)
@workers_option("reader threads [default: the cores]")
@click.option(
    "--show-errors/--no-show-errors",
    default=True,
    show_default=True,
    help="List refused files.",
)
@follow_links_option()
@progress_option()
def command(
    images: str, ws: Workspace, workers: int | None, show_errors: bool, follow_links: bool | None
) -> None:
    """Scan IMAGES recursively and add its photos to the workspace.

    Unreadable, corrupt or oversized files are recorded with a reason and skipped; files
    already ingested and unchanged are not read again. Symlinks that lead out of IMAGES,
    devices and FIFOs are recorded as errors and never opened (--follow-links reads such
    links to files).
    """
    from labeler.ingest import ingest_folder

    res = ingest_folder(
        ws,
        images,  # type: ignore[arg-type]
        workers=workers,
        follow_links=follow_links,
    )
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
