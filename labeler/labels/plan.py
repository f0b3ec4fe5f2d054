"""What a bulk label action would change, before it changes anything, and what it changed.

A bulk action (assign a label to a cluster's ticked faces, a map lasso, "more like this")
labels only faces that have no label for the field yet. Faces that have another label keep
it unless the annotator makes the explicit choice to relabel them, and that choice names the
count and whose labels they are: :class:`AssignPlan` is the one place that splits a
selection into the three kinds, when the page is drawn.

Between drawing and pressing, another annotator may label some of those faces. So the write
plans again, in its own transaction, against the labels as they are then
(:func:`recheck`, called by :meth:`~labeler.labels.store.LabelStore.assign_checked`): a face
changes only while it still has the label the page showed (:meth:`AssignPlan.seen`); a face
labeled (or relabeled, or unlabeled) by someone since is left as it is and reported in the
:class:`AssignResult`, by who and what it is now.

>>> plan = plan_assign(["a", "b", "c"], {"b": "no_mask", "c": "correct"}, "correct")
>>> plan.new, plan.relabel, plan.same
(('a',), ('b',), ('c',))
>>> plan.faces(relabel=False), plan.faces(relabel=True)
(['a'], ['a', 'b'])
>>> plan.seen(relabel=True)
{'a': None, 'b': 'no_mask'}
>>> plan.relabel_text()
'1 face now no_mask'
>>> now = {"a": ("on_chin", "Bea"), "b": ("no_mask", "Ann")}  # Bea labeled 'a' meanwhile
>>> done = recheck(["a", "b"], plan.seen(relabel=True), now, "correct", relabel=True)
>>> done.changed, done.meanwhile_text()
(('b',), '1 face was labeled on_chin by Bea meanwhile and was left as it is')
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: The built-in outcome for a false detection (an ear, a blur, a poster): allowed in every
#: field, excluded from training and export, counted in the Overview, reversible (Undo, or
#: relabel the face).
NOT_A_FACE = "not_a_face"


def _faces(n: int) -> str:
    return f"{n:,} face{'' if n == 1 else 's'}"


def _counts(counts: Mapping[str, int]) -> str:
    """``"no_mask"`` for one key, ``"no_mask (5), correct (2)"`` for several."""
    if len(counts) == 1:
        return str(next(iter(counts)))
    return ", ".join(f"{k} ({c:,})" for k, c in counts.items())


@dataclass(frozen=True)
class AssignPlan:
    """A selection split by what assigning ``value`` would do to each face.

    ``new``: unlabeled faces (labeled by default); ``relabel``: faces labeled with another
    value (changed only on the explicit choice); ``same``: faces that already have ``value``
    (never touched: no event row, Undo stays exact). ``relabel_from``: old value -> count;
    ``old``: face -> its label for the faces of ``relabel`` and ``same`` (what the page
    shows); ``relabel_by``: annotator -> count of the ``relabel`` faces whose label they gave
    (empty when the plan was made without ``owners``).
    """

    value: str
    new: tuple[str, ...]
    relabel: tuple[str, ...]
    same: tuple[str, ...]
    relabel_from: dict[str, int] = field(default_factory=dict)
    old: dict[str, str] = field(default_factory=dict)
    relabel_by: dict[str, int] = field(default_factory=dict)

    def faces(self, *, relabel: bool) -> list[str]:
        """The faces an assign changes: the unlabeled ones, plus the relabeled on request."""
        return [*self.new, *self.relabel] if relabel else list(self.new)

    def seen(self, *, relabel: bool) -> dict[str, str | None]:
        """``{face_id: label the page showed (None: unlabeled)}`` for :meth:`faces`: what
        :meth:`LabelStore.assign_checked` checks each face against when the write runs."""
        return {f: self.old.get(f) for f in self.faces(relabel=relabel)}

    def relabel_text(self) -> str:
        """``"58 faces now no_mask"``, ``"7 faces now no_mask (5), correct (2)"``; with the
        owners known, ``"58 faces now no_mask by Bea"``, ``"... by Bea (4), Ann (3)"``."""
        what = f"{_faces(len(self.relabel))} now {_counts(self.relabel_from)}"
        return f"{what} by {_counts(self.relabel_by)}" if self.relabel_by else what


def plan_assign(
    face_ids: Iterable[str],
    current: Mapping[str, str],
    value: str,
    *,
    owners: Mapping[str, str] | None = None,
) -> AssignPlan:
    """Split ``face_ids`` (order kept, duplicates dropped) by their ``current`` label
    (``{face_id: value}`` of the field, as the page shows it) against the ``value`` to
    assign. ``owners``: ``{face_id: annotator}`` who gave the current labels (for the
    Relabel button's text)."""
    new, relabel, same = [], [], []
    for fid in dict.fromkeys(face_ids):
        old = current.get(fid)
        (new if old is None else same if old == value else relabel).append(fid)
    olds = Counter(current[f] for f in relabel)
    by = Counter(owners[f] for f in relabel if f in owners) if owners else Counter()
    return AssignPlan(
        value=value,
        new=tuple(new),
        relabel=tuple(relabel),
        same=tuple(same),
        relabel_from=dict(olds.most_common()),
        old={f: current[f] for f in (*relabel, *same)},
        relabel_by=dict(by.most_common()),
    )


@dataclass(frozen=True)
class AssignResult:
    """What a checked bulk assign did, decided in its write transaction (:func:`recheck`).

    ``changed``: the faces now ``value`` by this action (one event, ``event_id``; None when
    nothing changed), of which ``relabeled`` had another label; ``unchanged``: faces left as
    the page showed them (they had ``value`` already, or a label and no relabel was asked);
    ``meanwhile``: faces whose label is no longer what the page showed (someone labeled,
    relabeled or unlabeled them since), left as they are, grouped by
    ``(annotator who did it, value now)`` (either None where unknown / unlabeled).
    """

    value: str
    event_id: int | None
    changed: tuple[str, ...]
    relabeled: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = ()
    meanwhile: dict[tuple[str | None, str | None], tuple[str, ...]] = field(default_factory=dict)

    @property
    def n_meanwhile(self) -> int:
        return sum(len(f) for f in self.meanwhile.values())

    def meanwhile_text(self) -> str:
        """One sentence about the faces left because they changed since the page was drawn
        (``""`` when none): ``"3 faces were labeled no_mask by Bea meanwhile and were left
        as they are"``; several people or values: ``"5 faces were changed meanwhile and
        were left as they are: no_mask by Bea (3), unlabeled by Ann (2)"``."""
        n = self.n_meanwhile
        if not n:
            return ""
        were, they = ("was", "it is") if n == 1 else ("were", "they are")

        def what(key: tuple[str | None, str | None]) -> str:
            who, now = key
            done = "unlabeled" if now is None else f"labeled {now}"
            return done if who is None else f"{done} by {who}"

        if len(self.meanwhile) == 1:
            key = next(iter(self.meanwhile))
            return f"{_faces(n)} {were} {what(key)} meanwhile and {were} left as {they}"
        parts = sorted(self.meanwhile.items(), key=lambda kv: (-len(kv[1]), str(kv[0])))
        return f"{_faces(n)} {were} changed meanwhile and {were} left as {they}: " + ", ".join(
            f"{what(k)} ({len(f):,})" for k, f in parts
        )


def recheck(
    face_ids: Iterable[str],
    seen: Mapping[str, str | None],
    now: Mapping[str, tuple[str | None, str | None]],
    value: str,
    *,
    relabel: bool,
) -> AssignResult:
    """Decide, at write time, which of ``face_ids`` an assign of ``value`` changes.

    ``seen``: ``{face_id: label the page showed}`` (a face not in it counts as shown
    unlabeled); ``now``: ``{face_id: (label now, annotator who gave it)}`` read in the write's
    transaction (a face absent, or with label None, is unlabeled now; its annotator, where
    given, is who unlabeled it). A face changes only when its label now is the one the page
    showed, is not ``value`` already, and is None unless ``relabel``. Every other face is left
    as it is: in ``unchanged`` when it is as the page showed, else in ``meanwhile``. The
    result's ``event_id`` is None: the caller writes ``changed`` and sets it.
    """
    changed, relabeled, unchanged = [], [], []
    meanwhile: dict[tuple[str | None, str | None], list[str]] = {}
    for fid in dict.fromkeys(face_ids):
        label, who = now.get(fid, (None, None))
        if label != seen.get(fid):
            meanwhile.setdefault((who, label), []).append(fid)
        elif label == value or (label is not None and not relabel):
            unchanged.append(fid)
        else:
            changed.append(fid)
            if label is not None:
                relabeled.append(fid)
    return AssignResult(
        value=value,
        event_id=None,
        changed=tuple(changed),
        relabeled=tuple(relabeled),
        unchanged=tuple(unchanged),
        meanwhile={k: tuple(v) for k, v in meanwhile.items()},
    )
