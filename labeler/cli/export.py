"""``labeler export``: labels with leak-free splits (ImageFolder, Hugging Face, COCO, Label
Studio, FiftyOne, CSV / Parquet) or clusters."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import (
    field_option,
    force_option,
    labeler_command,
    person_options,
    progress_option,
    seed_option,
    workspace_option,
)

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@labeler_command("export")
@workspace_option()
@click.option(
    "--out", required=True, type=click.Path(), help="Output folder (or .csv/.parquet file)."
)
@click.option(
    "--what",
    type=click.Choice(["labels", "clusters"]),
    default="labels",
    show_default=True,
    help="labels: labeled faces in train/val/test splits; clusters: every face's group.",
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["imagefolder", "hf", "coco", "label-studio", "fiftyone", "csv", "parquet"]),
    default=None,
    help="Default: imagefolder for labels, csv for clusters. hf: + metadata.jsonl per split "
    "(datasets' imagefolder); coco: the photos + annotations/instances_SPLIT.json; "
    "label-studio: + tasks with suggestions as predictions; fiftyone: "
    "FiftyOneImageClassificationDataset per split. Every folder gets manifest.csv.",
)
@field_option("Label field that names the class folders and stratifies the splits.")
@click.option(
    "--ratios", default="8:1:1", show_default=True, help="train:val:test (or train:test)."
)
@seed_option("Seed of the split (the same seed gives the same splits).")
@click.option(
    "--human-only",
    is_flag=True,
    help="Only human labels (no machine suggestions for unlabeled faces).",
)
@click.option(
    "--source-images", is_flag=True, help="Copy the source photos instead of the aligned crops."
)
@person_options("no person is in two splits")
@force_option(
    "Replace a previous labeler export at --out (a folder with labeler's export.json); any "
    "other folder is refused, nothing deleted."
)
@progress_option()
def command(
    ws: Workspace,
    out: str,
    what: str,
    fmt: str | None,
    field: str,
    ratios: str,
    seed: int,
    human_only: bool,
    source_images: bool,
    persons: str,
    person_pattern: str | None,
    person_csv: str | None,
    force: bool,
) -> None:
    """Export labeled faces (train/val/test stratified by class, grouped by person) or the
    cluster assignments of every face."""
    from labeler.export.manifest import ExportConfig, export
    from labeler.export.splits import parse_ratios

    config = ExportConfig(
        what=what,
        format=fmt or ("imagefolder" if what == "labels" else "csv"),
        field=field,
        ratios=parse_ratios(ratios),
        seed=seed,
        human_only=human_only,
        source_images=source_images,
        persons=persons,
        person_pattern=person_pattern,
        person_csv=person_csv,
        force=force,
    )
    res = export(ws, out, config)
    click.echo(f"{res.rows} faces -> {res.manifest}")
    if res.persons:
        p = res.persons
        click.echo(f"persons: {p['n_persons']} by {p['method']} ({p['detail']})")
        if p.get("confidence"):
            from labeler.export.persons import sureness_line

            click.echo("  how sure: " + sureness_line(p["confidence"]))
    for split, counts in res.counts.items():
        click.echo(f"  {split}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
