"""``labeler demo-data OUT``: write the shippable demo set (masks painted on a public portrait)."""

from __future__ import annotations

import click

from labeler.cli._common import labeler_command, seed_option


@labeler_command("demo-data")
@click.argument("out", type=click.Path(file_okay=False), default="data/demo")
@click.option(
    "--per-state",
    type=click.IntRange(min=1),
    default=36,
    show_default=True,
    help="Images per mask state.",
)
@seed_option("Seed of the painted masks and their jitter.")
def command(out: str, per_state: int, seed: int) -> None:
    """Write a small labeled demo set (OUT/images + OUT/labels.csv) from matplotlib's public-domain Grace Hopper portrait."""
    from labeler.demo import make_demo_set

    demo = make_demo_set(out, per_state=per_state, seed=seed)
    click.echo(f"wrote {demo.n_images} images to {demo.images} (truth in {demo.labels_csv})")
