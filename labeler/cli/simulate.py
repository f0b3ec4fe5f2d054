"""``labeler simulate``: how many annotator actions the current grouping costs (needs truth)."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import (
    cluster_run_option,
    labeler_command,
    show_progress_lines,
    workspace_option,
)

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@labeler_command("simulate", aliases={"--run": "--cluster-run"})
@workspace_option()
@click.option(
    "--truth",
    "truth_csv",
    required=True,
    type=click.Path(exists=True, dir_okay=False),
    help="CSV with the true label per image file.",
)
@click.option(
    "--truth-column", default="state", show_default=True, help="Column of the true label."
)
@click.option(
    "--file-column",
    default="file",
    show_default=True,
    help="Column of the image path (relative to the ingested folder).",
)
@cluster_run_option("Cluster run to simulate [default: the current run] (old name --run).")
@click.option(
    "--features", default="auto", show_default=True, help="Feature spec the Suggest step learns on."
)
@click.option(
    "--split-parts",
    default=2,
    show_default=True,
    type=click.IntRange(min=0),
    help="k of the app's 'split by similarity' when a group holds a state nobody labeled yet (0 = never).",
)
@click.option(
    "--all-faces",
    is_flag=True,
    help="Give every face of an image the image's label (default: its largest face only).",
)
def command(
    ws: Workspace,
    truth_csv: str,
    truth_column: str,
    file_column: str,
    cluster_run: str | None,
    features: str,
    split_parts: int,
    all_faces: bool,
) -> None:
    """Simulate an annotator on the workspace with known labels; print the effort table.

    Rows: 'plain' (bulk-label the groups of the cluster run, biggest first, then correct
    faces one by one) and 'interactive' (the app's Suggest step after every action; the
    annotator takes plain's next action unless a suggestion group, a review group or a split
    by similarity is expected, calibrated on what such actions really fixed so far, to beat
    it by a margin). effN = faces labeled correctly per action when accuracy
    first reaches N %; clicks98 = the app clicks those actions cost. Each session shows its
    progress on stderr (actions taken, share of faces right) every few seconds.
    """

    from labeler.loop.simulate import InteractiveConfig, simulate_workspace

    # the progress lines show without -v (the interactive session takes minutes)
    show_progress_lines("labeler.loop.simulate")

    cfg = InteractiveConfig(split_parts=split_parts)
    results, info = simulate_workspace(
        ws,
        truth_csv,
        truth_column=truth_column,
        file_column=file_column,
        run_id=cluster_run,
        features=features,
        config=cfg,
        all_faces=all_faces,
    )
    click.echo(
        f"run {info['run_id']}: {info['faces_with_truth']} of {info['faces_total']} faces with truth; "
        f"features {info['features']}"
    )
    click.echo(
        f"{'session':<12} {'NMI':>6} {'ARI':>6} {'purity':>6} {'eff95':>7} {'eff98':>7} {'eff99':>7} {'actions98':>9} {'clicks98':>8}"
    )
    for name, r in results.items():
        click.echo(
            f"{name:<12} {r.nmi:6.3f} {r.ari:6.3f} {r.purity:6.3f} {r.eff95:7.1f} {r.eff98:7.1f} {r.eff99:7.1f} {r.actions98:9d} {r.clicks98:8d}"
        )
    click.echo(f"written to {ws.clusters_dir / str(info['run_id']) / 'simulation.json'}")  # type: ignore[attr-defined]
