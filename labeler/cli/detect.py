"""``labeler detect -w WS``: find faces, landmarks and aligned crops (resumable)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import (
    detector_option,
    force_option,
    labeler_command,
    progress_option,
    workers_option,
    workspace_option,
)

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@labeler_command("detect", aliases={"--redo": "--force"})
@workspace_option()
@detector_option()
@click.option(
    "--min-size",
    type=click.FloatRange(min=0),
    default=20.0,
    show_default=True,
    help="Smallest face side kept, in original image pixels.",
)
@click.option(
    "--score-threshold",
    type=click.FloatRange(0, 1),
    default=0.5,
    show_default=True,
    help="Smallest detector confidence kept (0..1).",
)
@workers_option("detector threads [default: the cores]")
@click.option(
    "--chunk-size",
    type=click.IntRange(min=1),
    default=None,
    help="Images per committed chunk (a crash loses at most one; default grows with the "
    "folder: 32 to 500 images, then 1/100 of it).",
)
@click.option(
    "--fallback/--no-fallback",
    default=True,
    show_default=True,
    help="Use the whole image as the face when none is found in a crop-like image.",
)
@force_option("Forget earlier results and detect every image again (old name --redo).")
@progress_option()
def command(
    ws: Workspace,
    detector: str,
    min_size: float,
    score_threshold: float,
    workers: int | None,
    chunk_size: int | None,
    fallback: bool,
    force: bool,
) -> None:
    """Detect faces in the ingested images and cache 256x256 aligned crops.

    Only images without a result are processed, so an interrupted run continues where it
    stopped and new images added by 'labeler ingest' are picked up.
    """
    from labeler.detect.pipeline import detect_workspace

    res = detect_workspace(
        ws,  # type: ignore[arg-type]
        detector=detector,
        min_size=min_size,
        score_threshold=score_threshold,
        workers=workers,
        chunk_size=chunk_size,
        fallback=fallback,
        redo=force,
        progress=None,
    )
    click.echo(
        f"{res.processed} images processed ({res.skipped_done} already done): {res.faces} faces, "
        f"{res.whole_image} whole-image fallbacks, {res.no_face} without a face, "
        f"{res.errors} errors; {res.total_faces} faces in the workspace"
    )
