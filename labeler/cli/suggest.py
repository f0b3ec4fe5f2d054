"""``labeler suggest`` (alias ``labeler propagate``): the app's Suggest step from the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import (
    feature_spec_option,
    field_option,
    labeler_command,
    show_progress_lines,
    workspace_option,
)

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@labeler_command("suggest")
@workspace_option()
@field_option()
@feature_spec_option()
@click.option(
    "--min-confidence",
    default=0.0,
    show_default=True,
    type=click.FloatRange(0, 1),
    help="Leave out groups whose measured (out-of-fold) precision is lower.",
)
@click.option(
    "--show",
    type=click.IntRange(min=0),
    default=15,
    show_default=True,
    help="Suggestion groups to list.",
)
@click.option(
    "--model",
    default=None,
    metavar="RUN",
    help="A run of 'labeler train' ('current': the field's current run) whose probabilities "
    "vote beside the Suggest step's own (out-of-fold for the faces it was trained on), with "
    "the share that fits the labels best. Its first vote scores every other face once "
    "(cached in the workspace).",
)
def command(
    ws: Workspace,
    field: str,
    feature_spec: str,
    min_confidence: float,
    show: int,
    model: str | None,
) -> None:
    """Suggest labels for the unlabeled faces in groups (predicted value x confidence band),
    each with the precision measured out-of-fold on the labels so far; flag a few suspected
    label errors. Writes suggestions, never human labels: review them in the app.

    The app's Suggest button runs the same step; 'labeler propagate' is an alias."""
    from labeler.loop.step import suggest_workspace

    show_progress_lines("labeler.loop.step")  # the phases of a long run, as cluster shows them

    run = suggest_workspace(
        ws, field=field, feature_spec=feature_spec, min_confidence=min_confidence, model=model
    )
    click.echo(
        f"{len(run.faces)} suggestions for {field} in {len(run.groups)} groups from "
        f"{run.n_labeled} labels ({run.seconds:.2f} s)"
        + (f", with the vote of {run.model} ({run.vote_weight:.0%})" if run.model else "")
        + f"; {len(run.suspects)} suspected label errors"
    )
    if len(run.groups):
        click.echo(
            f"{'group':>5} {'value':<16} {'confidence':>11} {'faces':>6} {'right in CV':>12}"
            f" {'unmeasured':>10}"
        )
        for g in run.groups.head(show).itertuples():
            tick = "  pre-ticked" if g.pretick else ""
            click.echo(
                f"{g.group:>5} {g.value:<16} {g.lo:5.3f}-{g.hi:5.3f} {g.size:>6} "
                f"{g.precision:11.1%} {g.size - g.measured:>10}{tick}"
            )
        click.echo("unmeasured: faces unlike every labeled face; the precision measured "
                   "on the labels does not hold for them (the app never pre-ticks them)")  # fmt: skip
        if len(run.groups) > show:
            click.echo(f"... {len(run.groups) - show} more groups")
