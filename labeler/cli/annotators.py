"""``labeler annotators``: who may sign in to the app when it listens beyond this computer."""

from __future__ import annotations

from typing import TYPE_CHECKING

import click

from labeler.cli._common import labeler_group, workspace_option

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@labeler_group("annotators")
def command() -> None:
    """Annotators who may sign in to 'labeler app --host ...': 'add', 'list', 'reset', 'remove'.

    Only needed when the app listens beyond this computer (e.g. '--host 0.0.0.0'); on the
    default 127.0.0.1 anyone at this computer labels under the name they type. The workspace
    keeps a salted scrypt hash of each password in WORKSPACE/annotators.json (mode 0600),
    never the password itself.
    """


def _show(ws: Workspace, name: str, password: str, what: str) -> None:
    from labeler.labels.names import printable

    who = printable(name)  # a name stored by an older labeler may hold control characters
    click.echo(f"{what} annotator {name!r} in {ws.root}.")
    click.echo(f"password (shown only now; give it to {who} in person or a private message):")
    click.echo(f"  {password}")
    click.echo(f"{who} signs in to the app with the name {name!r} and this password.")


@command.command("add")
@click.argument("name")
@workspace_option()
def add_cmd(name: str, ws: Workspace) -> None:
    """Add annotator NAME and print their password (once; only its hash is kept).

    NAME is stored NFKC-normalised; one with control, bidi or invisible characters, or one
    that looks like an annotator already there (another case, a Cyrillic or Greek letter
    for a Latin one, 0 for O, 1 or I for l), is refused.
    """
    from labeler.errors import InputError
    from labeler.labels.names import annotator_name, confusable_with
    from labeler.ui.access import add_annotator, annotators

    name = annotator_name(name)
    twin = confusable_with(name, [a.name for a in annotators(ws.root)])
    if twin is not None and twin.casefold() != name.casefold():  # same but for case: "already"
        raise InputError(
            f"annotator name {name!r} looks like {twin!r}, who is already in "
            f"{ws.root / 'annotators.json'}: in the app's tables and history the two could "
            "not be told apart; pick a name that reads differently"
        )
    invite = add_annotator(ws.root, name)
    _show(ws, invite.name, invite.password, "added")


@command.command("reset")
@click.argument("name")
@workspace_option()
def reset_cmd(name: str, ws: Workspace) -> None:
    """Give NAME a new password (printed once); their old one and open sessions stop working."""
    from labeler.ui.access import reset_password

    invite = reset_password(ws.root, name)
    _show(ws, invite.name, invite.password, "new password for")


@command.command("remove")
@click.argument("name")
@workspace_option()
def remove_cmd(name: str, ws: Workspace) -> None:
    """Remove annotator NAME; their open sessions end at their next click. Their labels stay."""
    from labeler.ui.access import remove_annotator

    click.echo(f"removed annotator {remove_annotator(ws.root, name)!r} from {ws.root}")


@command.command("list")
@workspace_option()
def list_cmd(ws: Workspace) -> None:
    """The annotators who may sign in, oldest first."""
    import time

    from labeler.labels.names import printable
    from labeler.ui.access import annotators, store_path

    people = annotators(ws.root)
    if not people:
        click.echo(f"no annotators in {store_path(ws.root)}; add one with "
                   f"'labeler annotators add NAME -w {ws.root}'")  # fmt: skip
    for a in people:
        click.echo(
            f"{printable(a.name)}  (added {time.strftime('%Y-%m-%d %H:%M', time.localtime(a.created))})"
        )
