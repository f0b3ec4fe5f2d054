"""``labeler info``: versions, device, backbones, detectors."""

from __future__ import annotations

import click

from labeler.cli._common import labeler_command


@labeler_command("info")
def command() -> None:
    """Print versions, the compute device and the available backbones and detectors."""
    from labeler.info import collect_info

    for key, value in collect_info().items():
        click.echo(f"{key:>12}: {value}")
