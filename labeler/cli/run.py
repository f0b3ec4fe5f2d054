"""``labeler run IMAGES -w WS``: ingest + detect + embed + cluster in one command."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import click

from labeler.cli._common import (
    backbone_option,
    batch_size_option,
    check_engine,
    detector_option,
    device_option,
    engine_options,
    labeler_command,
    progress_option,
    show_progress_lines,
    workers_option,
    workspace_option,
)
from labeler.cli.cluster import cluster_config, cluster_options
from labeler.cli.ingest import follow_links_option

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@labeler_command("run")
@click.argument("images", type=click.Path(exists=True, file_okay=False))
@workspace_option(create=True)
@detector_option()
@backbone_option()
@click.option("--features", default="auto", show_default=True, help="Feature spec for clustering.")
@device_option()
@batch_size_option(64)
@click.option("--no-cluster", is_flag=True, help="Stop after embedding.")
@cluster_options
@workers_option("decode and detect threads [default: the cores]")
@click.option(
    "--embed-threads",
    type=click.IntRange(1),
    default=None,
    help="CPU threads of the model (default: all cores, shared with detection).",
)
@click.option(
    "--detect-engine",
    type=click.Choice(["auto", "threads", "fused"]),
    default="auto",
    show_default=True,
    help="auto: one fused GPU pass (decode, detect, align, embed) when the model runs on CUDA; "
    "threads: the CPU path; fused: the GPU pass's code on whatever device (for checking).",
)
@engine_options("the whole stream (decode to features)")
@follow_links_option()
@progress_option()
def command(
    images: str,
    ws: Workspace,
    detector: str,
    backbone: str,
    features: str,
    device: str,
    batch_size: int,
    no_cluster: bool,
    workers: int | None,
    embed_threads: int | None,
    detect_engine: str,
    follow_links: bool | None,
    engine: str,
    address: str | None,
    **options: Any,
) -> None:
    """Ingest IMAGES, detect and align faces, embed them and group them (all incremental).

    The clustering options are those of 'labeler cluster'. They apply when the workspace has
    no cluster run yet, or when one of them differs from how the current run was made (then
    everything is re-clustered); otherwise new faces are placed into the current run.
    """
    from labeler.pipeline import RunConfig, run_pipeline

    check_engine(engine, address)

    config = RunConfig(
        detector=detector,
        backbone=backbone,
        features=features,
        device=device,
        batch_size=batch_size,
        cluster=None if no_cluster else cluster_config(options),
        workers=workers,
        embed_threads=embed_threads,
        detect_engine=detect_engine,
        follow_links=follow_links,
        engine=engine,
        address=address,
    )
    if config.cluster is not None:  # a fit over many faces takes minutes: say each phase
        show_progress_lines("labeler.cluster.run")
    res = run_pipeline(images, ws, config=config)  # type: ignore[arg-type]
    total = sum(res.timings.values())
    click.echo(
        f"{res.images_ok} images ok, {res.image_errors} unreadable (see images.parquet), "
        f"{res.faces} faces, clusters: {res.clusters if res.clusters is not None else '-'}"
    )
    steps = ", ".join(f"{k} {v:.1f}s" for k, v in res.timings.items())
    click.echo(f"done in {total:.1f}s ({steps})")
