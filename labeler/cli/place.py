"""``labeler place``: put newly embedded faces into the current clusters and map."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import workspace_option

if TYPE_CHECKING:  # pragma: no cover
    from labeler.workspace import Workspace


@click.command("place")
@workspace_option()
@click.option("--features", default=None, help="Feature spec [default: the current run's].")
@click.option("--run", "run_id", default=None, help="Run to extend [default: current].")
@click.option("-k", "--neighbors", "k", type=click.IntRange(1), default=15, show_default=True)
def command(ws: Workspace, features: str | None, run_id: str | None, k: int) -> None:
    """Add faces that have features but are not in the run, without re-clustering.

    Each new face joins the cluster its nearest old faces vote for and sits at their
    weighted mean on the map; the result is saved as a new current run. For a full
    re-cluster run 'labeler cluster'.
    """
    from labeler.cluster.place import place_new_faces

    new_id, n = place_new_faces(ws, feature_spec=features, run_id=run_id, k=k)
    if new_id is None:
        click.echo("no new faces to place: every face with features is already in the run")
    else:
        click.echo(f"placed {n} new faces -> run {new_id} (now current)")
