"""The grammar every command shares (click only: no heavy imports).

* :class:`Command` / :class:`Group`: every command takes ``-v/--verbose`` and ``-q/--quiet``
  wherever they are written (``labeler -v run`` = ``labeler run -v``) and keeps its old
  option names as hidden aliases (``aliases={"--overwrite": "--force"}``): they still work,
  log a one-line note naming the new one, and are not in ``--help``.
* The same option for the same idea in every command: ``--force`` (replace what is there),
  ``--n-neighbors``, ``--cluster-run``, ``--model``, ``--workers``, ``--progress``,
  ``--seed``, ``--batch-size`` (see docs/CLI.md for the renamed options).
* Exit codes: 0 done, 1 a user error (one line: what and the fix), 2 a usage error
  (click's), :data:`EXIT_BUG` a bug in labeler (one line; ``-v`` adds the traceback).
"""

from __future__ import annotations

import errno
import logging
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])

log = logging.getLogger("labeler.cli")

#: exit code of an unexpected exception (a bug in labeler): BSD sysexits' EX_SOFTWARE
EXIT_BUG = 70
#: exit code of a user error (bad input, a missing step, an output already there)
EXIT_USER = 1


def set_verbosity(delta: int) -> None:
    """Move the log level ``delta`` steps (``+1`` per ``-v``, ``-1`` per ``-q``) from where it
    is: WARNING by default, INFO with -v, DEBUG with -vv, ERROR with -q, CRITICAL with -qq."""
    root = logging.getLogger()
    level = root.level if root.level != logging.NOTSET else logging.WARNING
    root.setLevel(min(logging.CRITICAL, max(logging.DEBUG, level - 10 * delta)))


def is_quiet() -> bool:
    """True under ``-q``: progress bars and progress lines stay off unless ``--progress``."""
    return logging.getLogger().level > logging.WARNING


def is_verbose() -> bool:
    """True under ``-v``: a bug's traceback is shown."""
    root = logging.getLogger()
    return root.level != logging.NOTSET and root.level <= logging.INFO


def _verbose_cb(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        set_verbosity(value)


def _quiet_cb(ctx: click.Context, param: click.Parameter, value: int) -> None:
    if value:
        set_verbosity(-value)


def verbosity_params() -> list[click.Option]:
    """``-v/--verbose`` and ``-q/--quiet`` (counted), applied as they are parsed."""
    return [
        click.Option(
            ["-v", "--verbose"], count=True, expose_value=False, callback=_verbose_cb,
            help="More log output (-v info and a bug's traceback, -vv debug).",
        ),
        click.Option(
            ["-q", "--quiet"], count=True, expose_value=False, callback=_quiet_cb,
            help="Less output: errors only, no progress bars (-qq: nothing but the result).",
        ),
    ]  # fmt: skip


def rewrite_aliases(args: Sequence[str], aliases: dict[str, str]) -> list[str]:
    """``args`` with each old option name in ``aliases`` replaced by its new one (``--old``,
    ``--old=V``, ``-kV``); stops at ``--``. Each use logs a note naming the new option."""
    out: list[str] = []
    rest = iter(args)
    for arg in rest:
        if arg == "--":
            out.append(arg)
            out.extend(rest)
            break
        new = arg
        for old, canonical in aliases.items():
            if arg == old:
                new = canonical
            elif old.startswith("--") and arg.startswith(old + "="):
                new = canonical + arg[len(old) :]
            elif not old.startswith("--") and arg.startswith(old) and len(arg) > len(old):
                new = f"{canonical}={arg[len(old) :].lstrip('=')}"
            else:
                continue
            log.warning("%s is now %s (the old name still works for now)", old, canonical)
            break
        out.append(new)
    return out


class Command(click.Command):
    """A labeler command: ``-v/-q`` wherever written, hidden old option names."""

    def __init__(self, *args: Any, aliases: dict[str, str] | None = None, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        super().__init__(*args, **kwargs)
        self.aliases: dict[str, str] = dict(aliases or {})
        self.params.extend(verbosity_params())

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        return super().parse_args(ctx, rewrite_aliases(args, self.aliases))


class Group(click.Group):
    """A group of labeler commands (``labeler labels ...``): its subcommands are
    :class:`Command` and it takes ``-v/-q`` itself too."""

    command_class = Command

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("context_settings", {"help_option_names": ["-h", "--help"]})
        super().__init__(*args, **kwargs)
        self.params.extend(verbosity_params())


def labeler_command(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Command]:
    """``@labeler_command("name", aliases={...})``: :func:`click.command` with :class:`Command`."""
    return click.command(name, cls=Command, **kwargs)  # type: ignore[return-value]


def labeler_group(name: str, **kwargs: Any) -> Callable[[Callable[..., Any]], Group]:
    """``@labeler_group("name")``: :func:`click.group` with :class:`Group`."""
    return click.group(name, cls=Group, **kwargs)  # type: ignore[return-value]


def _progress_cb(ctx: click.Context, param: click.Parameter, value: bool | None) -> None:
    from labeler import _io

    _io.PROGRESS = False if value is None and is_quiet() else value


def progress_option() -> Callable[[F], F]:
    """``--progress/--no-progress``: bars with rate and time left (default: on a terminal,
    off under -q). Sets :data:`labeler._io.PROGRESS`, which every bar of the command reads."""
    return click.option(
        "--progress/--no-progress", default=None, expose_value=False, callback=_progress_cb,
        help="Progress bars with rate and time left [default: on a terminal, off with -q].",
    )  # fmt: skip


def show_progress_lines(logger_name: str) -> None:
    """Show ``logger_name``'s INFO lines (a long step's progress) without ``-v``; a level the
    user set lower (``-vv``) stays, and ``-q`` keeps them off."""
    if is_quiet():
        return
    lg = logging.getLogger(logger_name)
    if lg.getEffectiveLevel() > logging.INFO:
        lg.setLevel(logging.INFO)


def workspace_option(*, create: bool = False) -> Callable[[F], F]:
    """``-w/--workspace DIR``; the command receives a ``labeler.workspace.Workspace``."""

    def callback(ctx: click.Context, param: click.Parameter, value: str) -> Any:
        from labeler.errors import WorkspaceError
        from labeler.workspace import Workspace

        try:
            return Workspace.open(value, create=create)
        except WorkspaceError as exc:
            raise click.BadParameter(str(exc), ctx=ctx, param=param) from None

    return click.option(
        "-w",
        "--workspace",
        "ws",
        required=True,
        type=click.Path(file_okay=False),
        callback=callback,
        help="Workspace directory (Parquet tables, crops, labels.db).",
    )


#: the face detectors (``labeler.detect.get_detector``); listed here so --help needs no import
DETECTOR_NAMES = ("mediapipe", "mtcnn", "haar", "none")
DEVICES = ("auto", "cpu", "cuda")


def detector_option(
    help: str = "Face detector; 'none': the images already are face crops.",
) -> Callable[[F], F]:
    """``--detector`` (one of :data:`DETECTOR_NAMES`, default mediapipe)."""
    return click.option(
        "--detector", type=click.Choice(DETECTOR_NAMES), default="mediapipe",
        show_default=True, help=help,
    )  # fmt: skip


def device_option(help: str = "Where the model runs.") -> Callable[[F], F]:
    """``--device auto|cpu|cuda`` (auto: CUDA when there is one)."""
    return click.option(
        "--device", type=click.Choice(DEVICES), default="auto", show_default=True, help=help
    )


def feature_spec_option(
    help: str = "Feature spec (see 'labeler cluster --features').",
) -> Callable[[F], F]:
    """``--features`` (default auto) as ``feature_spec``."""
    return click.option("--features", "feature_spec", default="auto", show_default=True, help=help)


def field_option(help: str = "Label field.") -> Callable[[F], F]:
    """``--field`` (default mask_state)."""
    return click.option("--field", default="mask_state", show_default=True, help=help)


def backbone_option(
    help: str = "Registered name or 'timm:<model>' (the default runs offline).",
) -> Callable[[F], F]:
    """``--backbone`` (default: the offline EfficientNet-Lite0 of the feature pipeline)."""
    return click.option(
        "--backbone", default="timm:efficientnet_lite0", show_default=True, help=help
    )


def force_option(help: str = "Overwrite --out if it exists.") -> Callable[[F], F]:
    """``--force``: replace what an earlier run left (the one name for it in every command)."""
    return click.option("--force", is_flag=True, help=help)


#: how ``export`` and ``train`` find persons (``labeler.export.persons``)
PERSON_METHODS = ("auto", "identity", "embedding", "pattern", "column", "image")


def person_options(why: str) -> Callable[[F], F]:
    """``--persons``, ``--person-pattern``, ``--person-csv``: how persons are found (``why``:
    what keeps them apart, e.g. 'no person is in two splits')."""

    def apply(f: F) -> F:
        for option in reversed(
            (
                click.option(
                    "--persons",
                    default="auto",
                    show_default=True,
                    type=click.Choice(PERSON_METHODS),
                    help=f"How persons are found ({why}): auto = --person-csv, else --person-pattern, "
                    "else face identity descriptors (dlib), else near-duplicates.",
                ),
                click.option(
                    "--person-pattern",
                    default=None,
                    help="Regex on the source path; group 1 is the person (--persons pattern), e.g. "
                    "'^([^/]+)/'.",
                ),
                click.option(
                    "--person-csv",
                    default=None,
                    type=click.Path(exists=True, dir_okay=False),
                    help="CSV with person and face_id or path (--persons column).",
                ),
            )
        ):
            f = option(f)
        return f

    return apply  # fmt: skip


def seed_option(
    help: str = "Random seed (the same seed gives the same result).",
) -> Callable[[F], F]:
    """``--seed N`` (default 0)."""
    return click.option(
        "--seed", type=click.IntRange(min=0), default=0, show_default=True, help=help
    )


def engine_options(what: str) -> Callable[[F], F]:
    """``--engine local|ray`` and ``--address``: where the command's stream runs."""

    def decorate(f: F) -> F:
        f = click.option(
            "--address",
            default=None,
            help="Ray cluster (--engine ray): auto (the one 'ray start' made on this machine) or "
            "HEAD_IP:6379; default: a new local Ray session.",
        )(f)
        return click.option(
            "--engine", type=click.Choice(["local", "ray"]), default="local", show_default=True,
            help=f"ray: {what} as a Ray Data pipeline (needs 'labeler[ray]').",
        )(f)  # fmt: skip

    return decorate


def check_engine(engine: str, address: str | None) -> None:
    """``--address`` only with ``--engine ray`` (a usage error otherwise)."""
    if address and engine != "ray":
        raise click.BadParameter("--address needs --engine ray", param_hint="--address")


def workers_option(what: str, default: int | None = None, minimum: int = 1) -> Callable[[F], F]:
    """``--workers N``: the parallel workers of this command's CPU stage ``what``."""
    return click.option(
        "--workers", type=click.IntRange(min=minimum), default=default,
        show_default=default is not None, help=f"Parallel workers: {what}.",
    )  # fmt: skip


def batch_size_option(default: int, what: str = "Faces per model batch.") -> Callable[[F], F]:
    """``--batch-size N``."""
    return click.option(
        "--batch-size", type=click.IntRange(min=1), default=default, show_default=True, help=what
    )


def cluster_run_option(
    help: str = "Cluster run id [default: the current run].",
) -> Callable[[F], F]:
    """``--cluster-run RUN_ID`` (old name ``--run`` in place and simulate)."""
    return click.option("--cluster-run", "cluster_run", default=None, metavar="RUN_ID", help=help)


#: errno values that are about the user's files, disk or limits (a one-line user error); any
#: other OSError (no errno, EINVAL, EBADF, ...) comes from labeler's own code: a bug
USER_ERRNOS = frozenset(
    getattr(errno, name)
    for name in (
        "ENOSPC", "EFBIG", "EDQUOT", "EROFS", "EACCES", "EPERM", "ENOENT", "ENOTDIR", "EISDIR",
        "ENAMETOOLONG", "EMFILE", "ENFILE", "EIO", "ELOOP", "EXDEV", "ENOTEMPTY", "EEXIST",
        "EBUSY", "ETXTBSY", "ESTALE", "ENOMEM", "ENXIO", "ENODEV", "EPIPE",
    )
    if hasattr(errno, name)
)  # fmt: skip


def is_user_os_error(exc: OSError) -> bool:
    """True when ``exc`` is about the user's files or machine (disk full, no permission, a
    missing path), not a mistake in labeler's code."""
    return exc.errno in USER_ERRNOS


def os_error_message(exc: OSError) -> str:
    """One line for an OS error: the file, what happened, and the fix."""
    where = exc.filename or "a file"
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        fix = "free disk space (or raise the file-size limit) and run the command again"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make the workspace (or --out) writable, or use a copy of it somewhere writable"
    else:
        fix = "check the path and run the command again"
    return f"cannot write or read {where} ({what}); {fix}"
