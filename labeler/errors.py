"""The errors a user can cause and fix: one base, :class:`LabelerError`.

The command line catches ``LabelerError`` once (in the ``labeler`` command group) and prints
its message as one line, exit code 1; the message says what was received and the fix
(``"no human labels for field 'mask_state' in ws/labels.db; label faces in the app first"``).
The machine's own errors (``OSError``: disk full, read-only folder, missing path) are shown as
one line too. Every other exception is a bug in labeler and shows its traceback.

The subclasses also derive from the built-in error they replace (``ValueError``,
``FileNotFoundError``, ...), so ``except ValueError`` written before them still works.
Raise them for bad input, a missing step or a missing file the user can supply; raise
plain ``ValueError`` / ``TypeError`` for a caller's programming error (wrong shapes passed
between labeler's own functions), which the CLI shows as the bug it is.

>>> raise InputError("ratios '8:x' are not numbers; write them like 8:1:1")  # doctest: +SKIP
"""

from __future__ import annotations


class LabelerError(Exception):
    """A problem the user can fix; the message names what was received and the fix."""


class InputError(LabelerError, ValueError):
    """A value the user gave (an option, a feature spec, a file's contents) cannot be used."""


class WorkspaceError(LabelerError, ValueError):
    """A workspace is missing a step's output, or its tables disagree (the fix names the
    command to run)."""


class NotFoundError(LabelerError, FileNotFoundError):
    """A file or artifact the command needs is missing (the fix says how to make it)."""


class ExistsError(LabelerError, FileExistsError):
    """An output is there already (the fix is usually ``--force``)."""


class UnknownKeyError(LabelerError, KeyError):
    """A name (a label field, a face id) is not known; shown without KeyError's quotes."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""
