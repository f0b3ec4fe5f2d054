"""Human labels: an append-only SQLite (WAL) event log per workspace, with undo per annotator.

One database per workspace (``ws.labels_db``); its tables are listed in
:mod:`labeler.labels.db`. One module per concern:

* :mod:`~labeler.labels.store`       - :class:`LabelStore`, the shell: connections, checks
* :mod:`~labeler.labels.events`      - the event log: assign, undo / redo, current labels
* :mod:`~labeler.labels.schema`      - the fields annotators label and their values
* :mod:`~labeler.labels.suggestions` - machine suggestions (propagated / predicted labels)
* :mod:`~labeler.labels.suspects`    - likely label errors
* :mod:`~labeler.labels.review`      - the review queue's reads and decisions (rejections)
* :mod:`~labeler.labels.plan`        - what a bulk action would change (never relabel silently)
* :mod:`~labeler.labels.db`          - the tables, one-line errors, creating a store file
* :mod:`~labeler.labels.backup`      - rotating backups, the soundness check, restore
* :mod:`~labeler.labels.human`       - the human labels a model learns from, in faces order
* :mod:`~labeler.labels.sources`     - labels made elsewhere read as records (CSV, class
  folders, Label Studio)
* :mod:`~labeler.labels.importing`   - those records matched to faces, planned, written as
  ``import`` events (``labeler labels import``)

Concurrency: every call opens its own short-lived connection (``busy_timeout`` 30 s) and writes
in one ``BEGIN IMMEDIATE`` transaction, so two annotators in two browsers (threads or processes)
never lose a write; each sees the other's result on the next read. The app's bulk actions go
through :meth:`LabelStore.assign_checked`, which plans in that same transaction: a face labeled
by someone since the page was drawn is never changed by them, and is reported by who and what.
Order is ``event_id`` (commit order), not the wall-clock ``ts``.

Example::

    store = LabelStore(ws.labels_db)
    eid = store.assign(["a_0", "b_0"], "mask_state", "correct", annotator="ann", source="cluster")
    store.current("mask_state")         # face_id, field, value, source, annotator, ts, event_id
    store.undo("ann"); store.redo("ann")
"""

from __future__ import annotations

from labeler.labels.db import LabelStoreError
from labeler.labels.events import CURRENT_COLUMNS, HISTORY_COLUMNS, SOURCES
from labeler.labels.human import human_labels
from labeler.labels.plan import NOT_A_FACE, AssignPlan, AssignResult, plan_assign
from labeler.labels.schema import DEFAULT_SCHEMA, MASK_STATES, LabelField, LabelSchema
from labeler.labels.store import LabelStore
from labeler.labels.suggestions import SUGGESTION_COLUMNS
from labeler.labels.suspects import SUSPECT_COLUMNS

__all__ = [
    "CURRENT_COLUMNS",
    "DEFAULT_SCHEMA",
    "HISTORY_COLUMNS",
    "MASK_STATES",
    "NOT_A_FACE",
    "SOURCES",
    "SUGGESTION_COLUMNS",
    "SUSPECT_COLUMNS",
    "AssignPlan",
    "AssignResult",
    "LabelField",
    "LabelSchema",
    "LabelStore",
    "LabelStoreError",
    "human_labels",
    "plan_assign",
]
