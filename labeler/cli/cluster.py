"""``labeler cluster``: group faces by appearance (kNN graph, UMAP map, Ward tree / HDBSCAN / k-means)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

import click

from labeler.cli._common import (
    cluster_run_option,
    labeler_command,
    progress_option,
    seed_option,
    show_progress_lines,
    workspace_option,
)

if TYPE_CHECKING:  # pragma: no cover
    from labeler.cluster.types import ClusterConfig
    from labeler.workspace import Workspace

F = TypeVar("F", bound=Callable[..., Any])


#: The options of a clustering run, shared by ``labeler cluster`` and ``labeler run``; each
#: parameter is named like its :class:`labeler.cluster.types.ClusterConfig` field.
CLUSTER_OPTIONS = (
    click.option(
        "--algorithm",
        type=click.Choice(["auto", "ward", "hdbscan", "kmeans"]),
        default="auto",
        show_default=True,
        help="auto = ward: a Ward tree in the UMAP space cut into groups of about 120 faces "
        "(every face in a group, outliers last); hdbscan keeps density noise apart (-1); "
        "kmeans a fixed k.",
    ),
    click.option(
        "--min-cluster-size",
        type=click.IntRange(2),
        default=None,
        help="HDBSCAN's smallest cluster [auto: N/200, 5..1000].",
    ),
    click.option(
        "--min-samples",
        type=click.IntRange(1),
        default=None,
        help="HDBSCAN density smoothing [auto: min(10, min-cluster-size)].",
    ),
    click.option(
        "--n-clusters",
        type=click.IntRange(1),
        default=None,
        help="Number of groups [auto: ward max(natural level, N/120); k-means sqrt(N/2), 2..200].",
    ),
    click.option(
        "--pca-dims",
        type=click.IntRange(0),
        default=None,
        help="PCA dims before the graph, 0 = off [auto: 64 when D > 64].",
    ),
    click.option(
        "--n-neighbors",
        type=click.IntRange(2),
        default=None,
        help="kNN graph / UMAP neighbours [auto: 15].",
    ),
    click.option(
        "--umap-dims",
        type=click.IntRange(2),
        default=None,
        help="Dims of the space Ward / HDBSCAN run in [auto: 10].",
    ),
    click.option(
        "--max-umap-points",
        "umap_max_points",
        type=click.IntRange(0),
        default=None,
        help="Embed a sample this big, place the rest by kNN; 0 = all [auto: 20000].",
    ),
    click.option(
        "--index",
        type=click.Choice(["auto", "flat", "ivf", "hnsw"]),
        default="auto",
        show_default=True,
        help="FAISS index kind.",
    ),
    seed_option("Seed of every random choice (the same seed gives the same groups)."),
)


def cluster_options(f: F) -> F:
    """Add :data:`CLUSTER_OPTIONS` to a command (it receives them as keyword arguments)."""
    for option in reversed(CLUSTER_OPTIONS):
        f = option(f)
    return f


def cluster_config(options: dict[str, Any]) -> ClusterConfig:
    """The :class:`~labeler.cluster.types.ClusterConfig` of a command's cluster options."""
    from labeler.cluster.types import ClusterConfig

    return ClusterConfig(**options)


@labeler_command("cluster", aliases={"--use": "--cluster-run"})
@workspace_option()
@click.option(
    "--features",
    default="auto",
    show_default=True,
    help="Feature spec: 'auto', a stored embedding key, or keys joined by '+'.",
)
@cluster_options
@click.option("--list", "list_runs_", is_flag=True, help="List the saved runs and exit.")
@cluster_run_option("Make this saved run current (undo a split/merge) and exit (old name --use).")
@progress_option()
def command(
    ws: Workspace,
    features: str,
    list_runs_: bool,
    cluster_run: str | None,
    **options: Any,
) -> None:
    """Cluster the faces of a workspace and save the run (it becomes the current one).

    Every run is kept under WS/clusters/<run_id>/ with its parameters; the same seed gives
    the same clusters. New faces can later join with 'labeler place'. Each phase is shown on
    stderr as it ends, with its seconds.
    """

    from labeler.cluster.store import list_runs, save_run, set_current

    if list_runs_:
        runs = list_runs(ws)
        click.echo(runs.to_string(index=False) if len(runs) else "no cluster runs yet")
        return
    if cluster_run:
        set_current(ws, cluster_run)
        click.echo(f"current run: {cluster_run}")
        return
    from labeler.cluster.inputs import load_cluster_features
    from labeler.cluster.run import PhaseClock, fit_clusters, fit_phases

    # the phase lines show without -v (a run takes minutes on a few thousand faces)
    show_progress_lines("labeler.cluster.run")
    clock = PhaseClock(planned=2)  # feature assembly and save; the fit's phases added below
    face_ids, X, spec = load_cluster_features(ws, features)
    config = cluster_config(options)
    clock.planned += len(fit_phases(X.shape[0], X.shape[1], config))
    clock.tick("features", f"{X.shape[0]} faces x {X.shape[1]} dims ({spec})")
    fit = fit_clusters(face_ids, X, config=config, feature_spec=spec, clock=clock)
    run_id = save_run(ws, fit.result, artifacts=fit.artifacts)
    clock.tick("save", f"run {run_id}")
    p = fit.result.params
    click.echo(
        f"run {run_id}: {p['n_faces']} faces -> {p['n_clusters']} clusters, "
        f"{100 * p['noise_fraction']:.1f}% outliers ({p['algorithm']}, features {spec}, "
        f"{sum(fit.timings.values()):.1f} s)"
    )
