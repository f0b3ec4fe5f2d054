"""``labeler embed``: backbone features of every face crop (or a region of it)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import (
    backbone_option,
    batch_size_option,
    check_engine,
    device_option,
    engine_options,
    force_option,
    labeler_command,
    progress_option,
    workers_option,
    workspace_option,
)

if TYPE_CHECKING:
    from labeler.workspace import Workspace

REGION_NAMES = ("face", "lower", "nose", "mouth_chin", "forehead", "eyes", "box")


@labeler_command("embed", aliases={"--overwrite": "--force"})
@workspace_option()
@backbone_option()
@click.option(
    "--region",
    type=click.Choice(REGION_NAMES),
    default="face",
    show_default=True,
    help="Part of the aligned crop to embed.",
)
@click.option(
    "--input-size",
    type=click.IntRange(32),
    default=None,
    help="Model input side in px when not the model's own (the key gets '-<N>px').",
)
@batch_size_option(32)
@device_option()
@click.option(
    "--runtime",
    type=click.Choice(["auto", "torch", "onnx"]),
    default="auto",
    show_default=True,
    help="auto: onnxruntime on CPU, torch (bf16, channels_last) on CUDA.",
)
@click.option(
    "--weights",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="Local checkpoint (torch.save(model.state_dict(), FILE)) instead of the default weights.",
)
@engine_options("the embed step")
@click.option(
    "--shard-size",
    type=click.IntRange(1),
    default=2048,
    show_default=True,
    help="Faces per stored shard; a killed run loses at most this many.",
)
@workers_option("crop decode threads (0: in the calling thread)", default=2, minimum=0)
@click.option(
    "--decode",
    type=click.Choice(["cpu", "cuda"]),
    default="cpu",
    show_default=True,
    help="cuda: nvJPEG decode on the GPU (torch on CUDA only).",
)
@force_option("Recompute vectors already stored for this key (old name --overwrite).")
@progress_option()
def command(
    ws: Workspace,
    backbone: str,
    region: str,
    input_size: int | None,
    batch_size: int,
    device: str,
    runtime: str,
    weights: str | None,
    engine: str,
    address: str | None,
    shard_size: int,
    workers: int,
    decode: str,
    force: bool,
) -> None:
    """Embed the aligned face crops of workspace WS with a pretrained backbone.

    Resumable and incremental: re-running skips faces already embedded. Vectors go to
    WS/embeddings/<backbone>__<region>/ (face_id, vector) Parquet shards. One region a call:
    the default features (nose, mouth-chin and box crop blocks, colour cues) come from
    'labeler run', which also takes --engine ray for the whole stream.
    """
    check_engine(engine, address)
    if engine == "ray":
        from labeler.embeddings.ray_engine import embed_faces_ray

        result = embed_faces_ray(
            ws,  # type: ignore[arg-type]
            backbone=backbone,
            region=region,
            weights=weights,
            device=device,
            runtime=runtime,
            batch_size=batch_size,
            shard_size=shard_size,
            overwrite=force,
            address=address,
            progress=None,
            input_size=input_size,
        )
    else:
        from labeler.embeddings import get_backbone
        from labeler.embeddings.backbones import workspace_precision
        from labeler.embeddings.embed import embed_faces
        from labeler.embeddings.store import list_embeddings

        device, precision = workspace_precision(list_embeddings(ws), backbone, device=device)  # type: ignore[arg-type]
        model = get_backbone(
            backbone,
            weights=weights,
            device=device,
            runtime=runtime,
            precision=precision,
            input_size=input_size,
        )
        result = embed_faces(
            ws,  # type: ignore[arg-type]
            model,
            region=region,
            batch_size=batch_size,
            shard_size=shard_size,
            workers=workers,
            decode=decode,
            overwrite=force,
            progress=None,
        )
    rate = result.n_new / result.seconds if result.seconds > 0 else 0.0
    click.echo(
        f"{result.key}: embedded {result.n_new} faces ({result.n_before} already stored, "
        f"{result.n_faces} in total) in {result.seconds:.1f} s ({rate:.1f} faces/s) -> {result.path}"
    )
