"""``labeler regroup``: the app's Regroup (groups that learn) from the command line."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import (
    feature_spec_option,
    field_option,
    labeler_command,
    workspace_option,
)

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@labeler_command("regroup")
@workspace_option()
@field_option()
@feature_spec_option("Feature spec the head learns on (see 'labeler cluster --features').")
def command(ws: Workspace, field: str, feature_spec: str) -> None:
    """Regroup the faces without a label for FIELD by what the labels taught: a head fitted
    on the labels places each unlabeled face by the state it looks like, beside its looks,
    and the faces get new groups of about 120 in a new cluster run. Labeled faces keep
    their groups; no label is written. 'labeler cluster --cluster-run PARENT' goes back
    (the run before it, printed).

    Pays where the first groups mixed states (the groups annotators opened held faces of
    other states); needs 100 labels of two states or more."""
    import pandas as pd

    from labeler.loop.regroup import regroup_workspace

    new, out, classes = regroup_workspace(ws, field, feature_spec=feature_spec)
    mostly = pd.Series([classes[v] for v in out.value]).value_counts()
    click.echo(
        f"regrouped {int(out.size.sum()):,} unlabeled faces into {out.n_groups} groups from "
        f"{out.n_labels:,} labels of {field} (run {new.params['run_id']}, before it "
        f"{new.params['parent']}): " + ", ".join(f"{n} mostly {v}" for v, n in mostly.items())
    )
