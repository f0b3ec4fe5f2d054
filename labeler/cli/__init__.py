"""The ``labeler`` command line. Each command lives in its own small module under
``labeler.cli``; modules import only click at load time so ``labeler --help`` stays fast
(no torch, no faiss, no streamlit).
"""

from __future__ import annotations

import importlib
import logging
import sys

import click

from labeler.cli._common import EXIT_BUG

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
    "regroup": "labeler.cli.regroup",
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

    The one error path of the command line (exit codes in :mod:`labeler.cli._common`):

    * a :class:`labeler.errors.LabelerError` (bad input, a missing step, an output already
      there) or an ``OSError`` about the user's files or machine (disk full, read-only
      folder, a missing path) becomes one line, ``Error: <what and the fix>``, exit code 1
      (``-vv`` adds the traceback);
    * a usage error (unknown option, a value out of range) is click's, exit code 2;
    * anything else is a bug in labeler: one line naming it, exit code 70, and with ``-v``
      its traceback.
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
        from labeler import _io
        from labeler.cli._common import is_user_os_error, os_error_message
        from labeler.errors import LabelerError

        root = logging.getLogger()
        level = root.level
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Abort, click.exceptions.Exit):
            raise
        except BrokenPipeError:  # the reader of our output left (e.g. '| head'): stop quietly
            import os

            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            raise click.exceptions.Exit(141) from None
        except LabelerError as exc:
            raise _user_error(str(exc)) from exc
        except OSError as exc:
            if not is_user_os_error(exc):
                raise _bug(exc) from exc
            raise _user_error(os_error_message(exc)) from exc
        except Exception as exc:
            raise _bug(exc) from exc
        finally:  # -v/-q/--progress of this call do not outlive it (tests call many)
            root.setLevel(level)
            _io.PROGRESS = None


class BugError(click.ClickException):
    """An unexpected exception inside labeler: one line, exit code
    :data:`labeler.cli._common.EXIT_BUG`."""

    exit_code = EXIT_BUG


def _user_error(message: str) -> click.ClickException:
    """The one-line error; with ``-vv`` the traceback goes to the log first."""
    if logging.getLogger().level == logging.DEBUG:
        logging.getLogger("labeler.cli").debug("user error", exc_info=True)
    return click.ClickException(message)


def _bug(exc: BaseException) -> BugError:
    """One line for a bug; its traceback on stderr under ``-v``."""
    from labeler.cli._common import is_verbose

    if is_verbose():
        import traceback

        traceback.print_exception(exc, file=sys.stderr)
        hint = "the traceback is above"
    else:
        hint = "run the command again with -v for the traceback"
    what = f"{type(exc).__name__}: {exc}".strip().splitlines()[0][:300]
    return BugError(
        f"internal error in labeler ({what}); this is a bug, not your input: {hint}, and "
        "report it with the command line you ran"
    )


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-v",
    "--verbose",
    count=True,
    help="More log output (-v info and a bug's traceback, -vv debug); also after the command.",
)
@click.option(
    "-q",
    "--quiet",
    count=True,
    help="Less output: errors only, no progress bars; also after the command.",
)
@click.version_option(package_name="labeler")
def cli(verbose: int, quiet: int) -> None:
    """Turn a folder of raw face photos into a labeled, split, trained dataset.

    Typical session: 'labeler run PHOTOS -w WS', then 'labeler app -w WS'.

    Exit codes: 0 done, 1 a user error (one line: what and the fix), 2 a usage error, 70 a
    bug in labeler (-v shows its traceback).
    """
    from labeler.cli._common import set_verbosity

    logging.basicConfig(
        level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    if verbose or quiet:
        set_verbosity(verbose - quiet)


def main() -> None:
    """Console entry point. User errors are one line, bugs too (see :class:`LazyGroup`)."""
    cli.main(prog_name="labeler")
