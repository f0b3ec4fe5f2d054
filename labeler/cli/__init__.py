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
    "suggest": "labeler.cli.suggest",
    "propagate": "labeler.cli.suggest",  # alias of suggest
    "train": "labeler.cli.train",
    "predict": "labeler.cli.predict",
    "labels": "labeler.cli.labels",
    "annotators": "labeler.cli.annotators",
    "demo-data": "labeler.cli.demo",
}


class LazyGroup(click.Group):
    """A group whose commands are imported on demand; a command module that fails to import
    fails loudly (it is part of the package, never optional).

    The one error path of the command line: a :class:`labeler.errors.LabelerError` (bad
    input, a missing step, an output already there) or an ``OSError`` (disk full, read-only
    folder) raised by any command becomes one line, ``Error: <what and the fix>``, exit code
    1 (``-vv`` adds the traceback). Any other exception is a bug in labeler and shows its
    traceback.
    """

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

    def invoke(self, ctx: click.Context) -> object:
        from labeler.errors import LabelerError

        try:
            return super().invoke(ctx)
        except LabelerError as exc:
            raise _user_error(ctx, str(exc)) from exc
        except OSError as exc:  # disk full, read-only workspace, file-size limit, bad path...
            from labeler.cli._common import os_error_message

            raise _user_error(ctx, os_error_message(exc)) from exc


def _user_error(ctx: click.Context, message: str) -> click.ClickException:
    """The one-line error; with ``-vv`` the traceback goes to the log first."""
    if ctx.params.get("verbose", 0) >= 2:
        logging.getLogger("labeler.cli").debug("user error", exc_info=True)
    return click.ClickException(message)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More log output (-v info, -vv debug, with the traceback of a one-line error).",
)
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
    """Console entry point. User errors are one line (see :class:`LazyGroup`); anything else
    is a bug and shows its traceback."""
    cli.main(prog_name="labeler")
