"""What a bulk label action would change, before it changes anything.

A bulk action (assign a label to a cluster's ticked faces, a map lasso, "more like this")
labels only faces that have no label for the field yet. Faces that have another label keep
it unless the annotator makes the explicit choice to relabel them, and that choice names the
count: :class:`AssignPlan` is the one place that splits a selection into the three kinds.

>>> plan = plan_assign(["a", "b", "c"], {"b": "no_mask", "c": "correct"}, "correct")
>>> plan.new, plan.relabel, plan.same
(('a',), ('b',), ('c',))
>>> plan.faces(relabel=False), plan.faces(relabel=True)
(['a'], ['a', 'b'])
>>> plan.relabel_text()
'1 face now no_mask'
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

#: The built-in outcome for a false detection (an ear, a blur, a poster): allowed in every
#: field, excluded from training and export, counted in the Overview, reversible (Undo, or
#: relabel the face).
NOT_A_FACE = "not_a_face"


@dataclass(frozen=True)
class AssignPlan:
    """A selection split by what assigning ``value`` would do to each face.

    ``new``: unlabeled faces (labeled by default); ``relabel``: faces labeled with another
    value (changed only on the explicit choice); ``same``: faces that already have ``value``
    (never touched: no event row, Undo stays exact). ``relabel_from``: old value -> count.
    """

    value: str
    new: tuple[str, ...]
    relabel: tuple[str, ...]
    same: tuple[str, ...]
    relabel_from: dict[str, int] = field(default_factory=dict)

    def faces(self, *, relabel: bool) -> list[str]:
        """The faces an assign changes: the unlabeled ones, plus the relabeled on request."""
        return [*self.new, *self.relabel] if relabel else list(self.new)

    def relabel_text(self) -> str:
        """``"58 faces now no_mask"``, ``"7 faces now no_mask (5), correct (2)"``."""
        n = len(self.relabel)
        what = f"{n:,} face{'' if n == 1 else 's'} now "
        if len(self.relabel_from) == 1:
            return what + next(iter(self.relabel_from))
        return what + ", ".join(f"{v} ({c:,})" for v, c in self.relabel_from.items())


def plan_assign(face_ids: Iterable[str], current: Mapping[str, str], value: str) -> AssignPlan:
    """Split ``face_ids`` (order kept, duplicates dropped) by their ``current`` label
    (``{face_id: value}`` of the field) against the ``value`` to assign."""
    new, relabel, same = [], [], []
    for fid in dict.fromkeys(face_ids):
        old = current.get(fid)
        (new if old is None else same if old == value else relabel).append(fid)
    olds = Counter(current[f] for f in relabel)
    return AssignPlan(
        value=value,
        new=tuple(new),
        relabel=tuple(relabel),
        same=tuple(same),
        relabel_from=dict(olds.most_common()),
    )
