"""The ``labeler`` command line. Each command lives in its own small module under
``labeler.cli``; modules import only click at load time so ``labeler --help`` stays fast
(no torch, no faiss, no streamlit).
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

# command name -> module defining ``command`` (a click.Command)
COMMANDS: dict[str, str] = {
    "info": "labeler.cli.info",
    "ingest": "labeler.cli.ingest",
    "detect": "labeler.cli.detect",
    "embed": "labeler.cli.embed",
    "run": "labeler.cli.run",
    "cluster": "labeler.cli.cluster",
    "place": "labeler.cli.place",
    "simulate": "labeler.cli.simulate",
    "export": "labeler.cli.export",
    "app": "labeler.cli.app",
    "propagate": "labeler.cli.propagate",
    "train": "labeler.cli.train",
    "predict": "labeler.cli.predict",
    "labels": "labeler.cli.labels",
    "demo-data": "labeler.cli.demo",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on demand; a command module that fails to import
    fails loudly (it is part of the package, never optional)."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        return self._load(cmd_name)

    @staticmethod
    def _load(name: str) -> click.Command | None:
        module = COMMANDS.get(name)
        if module is None:
            return None
        return importlib.import_module(module).command


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", count=True, help="More log output (-v info, -vv debug).")
@click.version_option(package_name="labeler")
def cli(verbose: int) -> None:
    """Turn a folder of raw face photos into a labeled, split, trained dataset.

    Typical session: 'labeler run PHOTOS -w WS', then 'labeler app -w WS'.
    """
    level = logging.WARNING - 10 * min(verbose, 2)
    logging.basicConfig(
        level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )


def main() -> None:
    """Console entry point: user errors become one clean line, never a traceback."""
    from labeler._deps import MissingDependency
    from labeler.workspace import WorkspaceError

    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("Aborted.", err=True)
        sys.exit(1)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except (
        WorkspaceError,
        MissingDependency,
        FileNotFoundError,
        FileExistsError,
        PermissionError,
    ) as exc:
        click.echo(f"Error: {exc}", err=True)
        sys.exit(1)
    except OSError as exc:  # disk full, read-only workspace, file-size limit...
        from labeler.cli._common import os_error_message

        click.echo(f"Error: {os_error_message(exc)}", err=True)
        sys.exit(1)
