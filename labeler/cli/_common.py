"""Options and helpers shared by the command modules (click only: no heavy imports)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

F = TypeVar("F", bound=Callable[..., Any])


def workspace_option(*, create: bool = False) -> Callable[[F], F]:
    """``-w/--workspace DIR``; the command receives a ``labeler.workspace.Workspace``."""

    def callback(ctx: click.Context, param: click.Parameter, value: str) -> Any:
        from labeler.workspace import Workspace, WorkspaceError

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


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input, shown as one line by the commands."""
    from labeler._deps import MissingDependency
    from labeler.workspace import WorkspaceError

    return (ValueError, WorkspaceError, MissingDependency, FileNotFoundError, PermissionError)
