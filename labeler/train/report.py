"""Classification reports: macro-F1, per-class precision/recall, a confusion-matrix PNG."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ClassReport:
    """Scores of predictions against labels. ``per_class``: {class: {precision, recall, f1,
    support}}; ``confusion``: (C, C) counts, rows = given label, columns = prediction."""

    classes: tuple[str, ...]
    accuracy: float
    macro_f1: float
    per_class: dict
    confusion: tuple[tuple[int, ...], ...]
    n: int

    def lines(self) -> list[str]:
        """A small text table for the CLI / logs."""
        out = [f"n={self.n}  accuracy={self.accuracy:.3f}  macro-F1={self.macro_f1:.3f}"]
        out.append(f"{'class':>16} {'prec':>6} {'recall':>6} {'f1':>6} {'n':>6}")
        for c in self.classes:
            m = self.per_class[c]
            out.append(
                f"{c:>16} {m['precision']:6.3f} {m['recall']:6.3f} {m['f1']:6.3f} {m['support']:6d}"
            )
        return out


def classification_report(
    y_true: Sequence[str], y_pred: Sequence[str], *, classes: Sequence[str] | None = None
) -> ClassReport:
    """Score string predictions (N,) against labels (N,). Macro-F1 averages the classes that
    occur in ``y_true`` (a class nobody holds does not drag the mean to 0)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = np.asarray(y_true).astype(str)
    y_pred = np.asarray(y_pred).astype(str)
    if classes is None:
        classes = sorted(set(y_true) | set(y_pred))
    classes = [str(c) for c in classes]
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=classes, zero_division=0)
    present = s > 0
    macro = float(f[present].mean()) if present.any() else 0.0
    cm = confusion_matrix(y_true, y_pred, labels=classes)
    per = {
        c: {
            "precision": float(p[i]),
            "recall": float(r[i]),
            "f1": float(f[i]),
            "support": int(s[i]),
        }
        for i, c in enumerate(classes)
    }
    acc = float((y_true == y_pred).mean()) if len(y_true) else 0.0
    return ClassReport(
        classes=tuple(classes),
        accuracy=acc,
        macro_f1=macro,
        per_class=per,
        confusion=tuple(tuple(int(v) for v in row) for row in cm),
        n=int(len(y_true)),
    )


def save_confusion_png(report: ClassReport, path: str | Path, *, title: str = "") -> Path:
    """Write the confusion matrix as a PNG (matplotlib Agg, no display needed)."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    cm = np.asarray(report.confusion)
    n = len(report.classes)
    fig, ax = plt.subplots(figsize=(1.2 * n + 2.5, 1.1 * n + 2))
    ax.imshow(cm, cmap="Blues")
    ax.set_xticks(range(n), report.classes, rotation=35, ha="right")
    ax.set_yticks(range(n), report.classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("label")
    top = cm.max() if cm.size else 0
    for i in range(n):
        for j in range(n):
            ax.text(
                j,
                i,
                str(cm[i, j]),
                ha="center",
                va="center",
                color="white" if cm[i, j] > top / 2 else "black",
            )
    ax.set_title(title or f"macro-F1 {report.macro_f1:.3f}  acc {report.accuracy:.3f}")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
