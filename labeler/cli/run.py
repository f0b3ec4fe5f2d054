"""``labeler run IMAGES -w WS``: ingest + detect + embed + cluster in one command."""

from __future__ import annotations

import click

from labeler.cli._common import user_errors, workspace_option


@click.command("run")
@click.argument("images", type=click.Path(exists=True, file_okay=False))
@workspace_option(create=True)
@click.option(
    "--detector", default="mediapipe", show_default=True, help="mediapipe | mtcnn | haar | none"
)
@click.option("--backbone", default="timm:efficientnet_lite0", show_default=True)
@click.option("--features", default="auto", show_default=True, help="Feature spec for clustering.")
@click.option("--device", default="auto", show_default=True, help="auto | cpu | cuda")
@click.option("--batch-size", default=64, show_default=True)
@click.option("--no-cluster", is_flag=True, help="Stop after embedding.")
@click.option("--workers", type=int, default=None, help="Decode/detect threads (default: cores).")
@click.option(
    "--detect-engine",
    type=click.Choice(["auto", "threads", "fused"]),
    default="auto",
    show_default=True,
    help="auto: one fused GPU pass (decode, detect, align, embed) when the model runs on CUDA; "
    "threads: the CPU path; fused: the GPU pass's code on whatever device (for checking).",
)
def command(
    images: str,
    ws: object,
    detector: str,
    backbone: str,
    features: str,
    device: str,
    batch_size: int,
    no_cluster: bool,
    workers: int | None,
    detect_engine: str,
) -> None:
    """Ingest IMAGES, detect and align faces, embed them and group them (all incremental)."""
    from labeler.pipeline import RunConfig, run_pipeline

    config = RunConfig(
        detector=detector,
        backbone=backbone,
        features=features,
        device=device,
        batch_size=batch_size,
        cluster=not no_cluster,
        workers=workers,
        detect_engine=detect_engine,
    )
    try:
        res = run_pipeline(images, ws, config=config)  # type: ignore[arg-type]
    except user_errors() as exc:
        raise click.ClickException(str(exc)) from exc
    total = sum(res.timings.values())
    click.echo(
        f"{res.images_ok} images ok, {res.image_errors} unreadable (see images.parquet), "
        f"{res.faces} faces, clusters: {res.clusters if res.clusters is not None else '-'}"
    )
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items())
    click.echo(f"done in {total:.1f}s ({steps})")
