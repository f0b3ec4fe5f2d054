"""Options and helpers shared by the command modules (click only: no heavy imports)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def show_progress_lines(logger_name: str) -> None:
    """Show ``logger_name``'s INFO lines (a long step's progress) without ``-v``; a level the
    user set lower (``-vv``) stays."""
    import logging

    log = logging.getLogger(logger_name)
    if log.getEffectiveLevel() > logging.INFO:
        log.setLevel(logging.INFO)


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
    """``--force``."""
    return click.option("--force", is_flag=True, help=help)


def os_error_message(exc: OSError) -> str:
    """One line for an OS error: the file, what happened, and the fix."""
    import errno

    where = exc.filename or "a file"
    what = exc.strerror or str(exc)
    if exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
        fix = "free disk space (or raise the file-size limit) and run the command again"
    elif exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM):
        fix = "make the workspace (or --out) writable, or use a copy of it somewhere writable"
    else:
        fix = "check the path and run the command again"
    return f"cannot write or read {where} ({what}); {fix}"
