"""``labeler propagate``: suggest labels for unlabeled faces from the labeled ones."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import user_errors, workspace_option

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@click.command("propagate")
@workspace_option()
@click.option("--field", default="mask_state", show_default=True)
@click.option(
    "--method", type=click.Choice(["spreading", "probe", "both"]), default="both", show_default=True
)
@click.option(
    "--features",
    "feature_spec",
    default="auto",
    show_default=True,
    help="Feature spec (stored embeddings joined by '+').",
)
@click.option(
    "-k",
    "--neighbors",
    default=10,
    show_default=True,
    type=int,
    help="kNN graph degree for spreading.",
)
@click.option(
    "--min-confidence",
    default=0.0,
    show_default=True,
    type=float,
    help="Drop suggestions below this calibrated confidence.",
)
def command(
    ws: Workspace,
    field: str,
    method: str,
    feature_spec: str,
    neighbors: int,
    min_confidence: float,
) -> None:
    """Write calibrated suggestions (never human labels) for the unlabeled faces; review them
    in the app."""
    from labeler.propagate import propagate

    try:
        df = propagate(
            ws,
            field=field,
            method=method,
            feature_spec=feature_spec,
            k=neighbors,
            min_confidence=min_confidence,
        )
    except user_errors() as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"{len(df)} suggestions for {field} ({method})")
    if len(df):
        for value, n in df["value"].value_counts().items():
            conf = df.loc[df["value"] == value, "confidence"].mean()
            click.echo(f"  {value}: {n} (mean confidence {conf:.2f})")
