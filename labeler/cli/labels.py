"""``labeler labels``: import labels made elsewhere; back up, list and restore the label store
(``labels.db``)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import click

from labeler.cli._common import labeler_group, workspace_option

if TYPE_CHECKING:
    from labeler.workspace import Workspace


@labeler_group("labels")
def command() -> None:
    """Labels made elsewhere ('import') and backups of the label store ('backup', 'list',
    'restore').

    Backups are taken automatically when 'labeler app' starts and every 50 label events.
    """


@command.command("backup")
@workspace_option()
def backup_cmd(ws: Workspace) -> None:
    """Snapshot labels.db into WORKSPACE/backups now."""
    from labeler.labels.backup import (
        check_store,
        damaged_store_message,
        make_backup,
        missing_store_message,
    )

    if not ws.labels_db.exists():
        msg = missing_store_message(ws.labels_db, "nothing was backed up")
        raise click.ClickException(msg or f"{ws.labels_db}: it does not exist; nothing to back up")
    why = check_store(ws.labels_db)
    if why is not None:
        raise click.ClickException(damaged_store_message(ws.labels_db, why, "it was not backed up"))
    out = make_backup(ws.labels_db)
    click.echo(f"backed up to {out}")


@command.command("list")
@workspace_option()
def list_cmd(ws: Workspace) -> None:
    """The backups of labels.db, newest first."""
    import time

    from labeler.labels.backup import list_backups

    backups = list_backups(ws.labels_db)
    if not backups:
        click.echo(f"no backups in {ws.root / 'backups'}")
    for b in backups:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(b.created))
        click.echo(f"{b.path}  {when}  up to event {b.last_event}  {b.size_bytes:,} bytes")


@command.command("restore")
@workspace_option()
@click.option(
    "--backup",
    "backup",
    default=None,
    type=click.Path(exists=True, dir_okay=False),
    help="The backup to restore (default: the newest sound one).",
)
def restore_cmd(ws: Workspace, backup: str | None) -> None:
    """Replace labels.db by a backup. A damaged store is kept as labels.db.damaged-TIME;
    a sound one is backed up first. The new store replaces the old one in one rename:
    interrupted at any moment, labels.db is the old store or the restored one.
    Stop 'labeler app' first."""
    from labeler.labels.backup import list_backups, restore_backup

    used = restore_backup(ws.labels_db, Path(backup) if backup else None)
    click.echo(f"restored {ws.labels_db} from {used}")
    backups = list_backups(ws.labels_db)
    restored = next((b.last_event for b in backups if b.path == used), None)
    bigger = max(backups, key=lambda b: b.last_event, default=None)
    if restored is not None and bigger is not None and bigger.last_event > restored:
        click.echo(
            f"note: {bigger.path} holds more events (up to {bigger.last_event:,}, this one up "
            f"to {restored:,}); to restore it: labeler labels restore -w {ws.root} "
            f"--backup {bigger.path}"
        )


@command.command("import")
@workspace_option()
@click.argument("source", type=click.Path(exists=True))
@click.option(
    "--format",
    "kind",
    type=click.Choice(["csv", "folders", "label-studio"]),
    default=None,
    help="What SOURCE is (default: folders for a folder, label-studio for .json, csv for .csv).",
)
@click.option(
    "--field",
    "fields",
    multiple=True,
    metavar="FIELD[=COLUMN]",
    help="A field to import and the CSV column (or Label Studio from_name) holding it; "
    "repeat for several. Default: every column named like a field; class folders: mask_state.",
)
@click.option(
    "--annotator",
    required=True,
    envvar="LABELER_ANNOTATOR",
    help="Who the labels are recorded as (their Undo in the app takes them back); "
    "default $LABELER_ANNOTATOR.",
)
@click.option(
    "--add-values", is_flag=True, help="Add values and fields the schema lacks (else: an error)."
)
@click.option(
    "--relabel", is_flag=True, help="Change faces labeled otherwise (else they keep their label)."
)
@click.option("--dry-run", is_flag=True, help="Report what would be imported; write nothing.")
def import_cmd(
    ws: Workspace,
    source: str,
    kind: str | None,
    fields: tuple[str, ...],
    annotator: str,
    add_values: bool,
    relabel: bool,
    dry_run: bool,
) -> None:
    """Import labels from SOURCE: a CSV (rows matched by face_id, by path relative to the
    ingested folder, or by file name), class folders (SOURCE/<value>/<photo>, matched by the
    photos' bytes, then by file name) or a Label Studio JSON export (choices).

    Labels are events (source 'import') under --annotator; faces that match nothing, photos
    with several faces and faces given two values are reported, never guessed.
    """
    from labeler.labels.importing import import_labels

    report = import_labels(
        ws,
        source,
        annotator=annotator,
        kind=kind,
        fields=fields,
        add_values=add_values,
        relabel=relabel,
        dry_run=dry_run,
    )
    for line in report.lines():
        click.echo(line)
    if dry_run:
        click.echo(f"dry run: nothing written ({report.labels:,} labels would be imported)")
    else:
        click.echo(
            f"imported {report.written_labels:,} labels in {len(report.events)} events as "
            f"{report.annotator!r} (source import; their Undo in the app takes them back)"
        )
