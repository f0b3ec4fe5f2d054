"""``labeler predict``: classify the faces of new photos with a trained model."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import (
    check_engine,
    detector_option,
    device_option,
    engine_options,
    field_option,
    force_option,
    labeler_command,
    progress_option,
    workspace_option,
)
from labeler.cli.ingest import follow_links_option

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@labeler_command("predict")
@click.argument("images", nargs=-1, required=True, type=click.Path(exists=True))
@workspace_option()
@click.option(
    "--model",
    "models",
    multiple=True,
    metavar="RUN_ID",
    help="Model run (as named by 'labeler train --model'); repeat for several fields. "
    "Default: the latest run of --field.",
)
@field_option("Field whose latest model is used when --model is not given.")
@click.option("--out", "out", required=True, type=click.Path(dir_okay=False), help="CSV to write.")
@detector_option()
@device_option("Where fine-tuned models run.")
@force_option()
@follow_links_option(recorded=False)
@engine_options("the whole stream (decode to classes) for large folders")
@progress_option()
def command(
    ws: Workspace,
    images: tuple[str, ...],
    models: tuple[str, ...],
    field: str,
    out: str,
    detector: str,
    device: str,
    force: bool,
    follow_links: bool,
    engine: str,
    address: str | None,
) -> None:
    """Detect, align and classify the faces in IMAGES (files or folders); write a CSV with
    path, face_index, box, the predicted label and confidence per field. The faces go
    through the stream of 'labeler run' (same decode, upright check, detection, crops and
    batched features, detect threads beside the model). In a folder, symlinks that lead out of
    it, devices and FIFOs are skipped unread (--follow-links reads such links to files)."""
    from pathlib import Path

    from labeler._csv import csv_bytes
    from labeler.predict import predict_files
    from labeler.train import load_model
    from labeler.workspace import atomic_write_bytes

    check_engine(engine, address)
    out_path = Path(out)
    if out_path.exists() and not force:
        raise click.ClickException(f"{out_path} exists; pass --force to overwrite it")
    loaded = [load_model(ws, m, device=device) for m in models] or [
        load_model(ws, field=field, device=device)
    ]
    df = predict_files(
        images, loaded, detector, progress=None, follow_links=follow_links, engine=engine,
        address=address,
    )  # fmt: skip
    atomic_write_bytes(out_path, csv_bytes(df))  # cells a spreadsheet would run get a '
    click.echo(f"{len(df)} faces in {df['path'].nunique()} images -> {out_path}")
