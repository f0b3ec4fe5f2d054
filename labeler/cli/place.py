"""``labeler place``: put newly embedded faces into the current clusters and map."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import cluster_run_option, labeler_command, workspace_option

if TYPE_CHECKING:  # pragma: no cover
    from labeler.workspace import Workspace


@labeler_command(
    "place",
    aliases={"--run": "--cluster-run", "-k": "--n-neighbors", "--neighbors": "--n-neighbors"},
)
@workspace_option()
@click.option("--features", default=None, help="Feature spec [default: the current run's].")
@cluster_run_option("Cluster run to extend [default: the current run] (old name --run).")
@click.option(
    "--n-neighbors",
    "k",
    type=click.IntRange(1),
    default=15,
    show_default=True,
    help="Old faces that vote for a new face's group and map place (old names -k, --neighbors).",
)
def command(ws: Workspace, features: str | None, cluster_run: str | None, k: int) -> None:
    """Add faces that have features but are not in the run, without re-clustering.

    Each new face joins the cluster its nearest old faces vote for and sits at their
    weighted mean on the map; the result is saved as a new current run. For a full
    re-cluster run 'labeler cluster'.
    """
    from labeler.cluster.place import place_new_faces

    new_id, n = place_new_faces(ws, feature_spec=features, run_id=cluster_run, k=k)
    if new_id is None:
        click.echo("no new faces to place: every face with features is already in the run")
    else:
        click.echo(f"placed {n} new faces -> run {new_id} (now current)")
