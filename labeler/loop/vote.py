"""A trained model's vote in the Suggest step (issue #32).

``labeler train`` fits a better model than the Suggest step's ridge head can while labels
come in: its ensemble fine-tunes CNNs on the aligned crops. This module gives the Suggest
step that model's class probabilities for every face of the workspace, through the same
features the model was trained on (the stored blocks, as ``labeler run`` wrote them, and the
cached aligned crops: what ``labeler predict`` computes for new photos):

- faces the model was trained on get its **out-of-fold** probabilities (``oof.parquet`` of
  the run), so the Suggest step's measured precision still comes from faces no model saw;
- every other face gets the saved model's probabilities, computed once per run and kept in
  ``WS/cache/vote-<run>/`` in parts of ``chunk`` faces: an interrupted pass resumes where it
  stopped, and faces added later are scored on the next call.

The Suggest step mixes it with its own calibrated probabilities, ``(1 - w) P_ridge + w
P_model`` (``SuggestConfig.vote_weight``), the way the ensemble mixes its head and CNNs.

>>> vote = model_vote(ws, face_ids, field="mask_state")          # doctest: +SKIP
>>> P = vote.aligned(["correct", "nose_exposed", "no_mask"])     # doctest: +SKIP
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from labeler.errors import InputError
from labeler.train.runs import OOF_FILE, current_runs

if TYPE_CHECKING:
    from labeler.train.runs import LoadedModel
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

#: faces per cached part of a run's predictions
CHUNK = 1024


@dataclass(frozen=True)
class ModelVote:
    """A trained run's class probabilities for ``face_ids``.

    classes: the run's classes, the columns of ``proba`` (N, C). trained_on: (N,) True for
    the faces the run was trained on, whose ``proba`` is out-of-fold; the others' is the
    saved model's. Either way no model that saw the face scored it."""

    run_id: str
    classes: tuple[str, ...]
    face_ids: np.ndarray = field(repr=False)
    proba: np.ndarray = field(repr=False)
    trained_on: np.ndarray = field(repr=False)

    def aligned(self, names: Sequence[str]) -> np.ndarray:
        """Probabilities (N, len(names)) in the order of ``names`` (the Suggest step's
        classes): a class the run does not know gets 0, and each row sums to 1 over
        ``names`` (a face the run gives only unknown classes gets equal shares)."""
        from labeler.loop.suggest import rows_sum_to_one

        col = {c: i for i, c in enumerate(self.classes)}
        P = np.zeros((len(self.proba), len(names)), np.float64)
        for j, name in enumerate(names):
            if name in col:
                P[:, j] = self.proba[:, col[name]]
        return rows_sum_to_one(P)


def votable_run(ws: Workspace, field: str) -> dict | None:
    """The current run of ``field`` when it can vote (it kept its out-of-fold
    probabilities): its config (``run_id``, ``mode``, ``report``...), else None. Cheap: two
    small JSON reads."""
    from labeler.workspace import read_json

    run = current_runs(ws).get(field)
    if not run or not all((ws.models_dir / run / f).exists() for f in (OOF_FILE, "config.json")):
        return None
    return dict(read_json(ws.models_dir / run / "config.json"))


def model_proba(
    model: LoadedModel, ws: Workspace, face_ids: Sequence[str], head: np.ndarray | None = None
) -> np.ndarray:
    """The saved model's probabilities (N, C) for workspace faces, from what the workspace
    stores: a head reads the stored blocks it was trained on, fine-tuned members the cached
    aligned crops, an ensemble mixes both by its ``cnn_weight``. ``head``: the head's
    probabilities of these faces when the caller has them (:func:`head_proba`)."""
    from labeler.train.finetune import predict_crops

    ids = np.asarray(face_ids).astype(str)
    if model.head is not None and head is None:
        head = head_proba(model, ws, ids)
    if model.mode == "head":
        return head
    paths = [ws.crop_path(f) for f in ids]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise InputError(
            f"{len(missing)} aligned crops are missing (e.g. {missing[0]}); re-run 'labeler detect'"
        )
    cnn = predict_crops(list(model.members), paths, device=model.device)
    if head is None:
        return cnn
    w = float(model.meta.get("cnn_weight", 0.5))
    return (1 - w) * head + w * cnn


def head_proba(model: LoadedModel, ws: Workspace, face_ids: Sequence[str]) -> np.ndarray:
    """A run's head's probabilities (N, C) from the stored blocks it was trained on (read
    once for all ``face_ids``)."""
    from labeler.train.data import load_feature_matrix

    X, _ = load_feature_matrix(ws, model.meta["feature_spec"], np.asarray(face_ids), raw=True)
    return model.head.predict_proba(X)


def _cache_dir(ws: Workspace, model: LoadedModel) -> Path:
    created = str(model.meta.get("created", "")).replace(".", "_")
    return ws.root / "cache" / f"vote-{model.run_id}-{created}"


def _read_parts(folder: Path, n_classes: int) -> pd.DataFrame:
    parts = []
    for p in sorted(folder.glob("part-*.parquet")):
        try:
            tab = pd.read_parquet(p)
        except (OSError, ValueError) as exc:
            log.warning("vote cache %s unreadable (%s); scoring its faces again", p, exc)
            p.unlink(missing_ok=True)
            continue
        if tab.shape[1] == n_classes + 1:
            parts.append(tab)
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()


def model_vote(
    ws: Workspace,
    face_ids: Sequence[str],
    *,
    field: str = "mask_state",
    run: str | None = None,
    device: str = "auto",
    chunk: int = CHUNK,
    progress: bool | None = None,
) -> ModelVote:
    """Run ``run``'s (default: the current run of ``field``) probabilities for ``face_ids``.

    Out-of-fold for the faces it was trained on; the saved model's, cached per run, for the
    others. A run trained before runs kept their out-of-fold probabilities is refused with
    the fix (train it again): its own training faces would look certain."""
    from labeler._io import atomic_path, progress_bar
    from labeler.train.runs import load_model

    model = load_model(ws, run, field=field, device=device)
    if model.field != field:
        raise InputError(f"run {model.run_id} was trained for {model.field!r}, not {field!r}")
    run_dir = ws.models_dir / model.run_id
    oof_path = run_dir / OOF_FILE
    if not oof_path.exists():
        raise InputError(
            f"run {model.run_id} has no {OOF_FILE} (trained before runs kept their out-of-fold "
            f"probabilities); train again: 'labeler train -w {ws.root} --field {field}'"
        )
    classes = tuple(model.classes)
    ids = np.asarray(face_ids).astype(str)
    oof = pd.read_parquet(oof_path).set_index("face_id")
    trained_on = pd.Index(oof.index).get_indexer(ids) >= 0
    proba = np.full((len(ids), len(classes)), np.nan)
    proba[trained_on] = oof.loc[ids[trained_on], list(classes)].to_numpy(np.float64)

    folder = _cache_dir(ws, model)
    for old in folder.parent.glob(f"vote-{model.run_id}-*"):
        if old != folder:  # a run of the same name trained again: its old scores are stale
            shutil.rmtree(old, ignore_errors=True)
    have = _read_parts(folder, len(classes)) if folder.is_dir() else pd.DataFrame()
    if len(have):
        have = have.drop_duplicates("face_id", keep="last").set_index("face_id")
        hit = ~trained_on & (pd.Index(have.index).get_indexer(ids) >= 0)
        proba[hit] = have.loc[ids[hit], list(classes)].to_numpy(np.float64)
    todo = np.flatnonzero(np.isnan(proba[:, 0]))
    if len(todo):
        log.info("vote of %s: scoring %d faces (%d cached)", model.run_id, len(todo),
                 len(ids) - len(todo))  # fmt: skip
        names = [p.stem.split("-")[-1] for p in folder.glob("part-*.parquet")]
        start = 1 + max((int(n) for n in names if n.isdigit()), default=-1)
        # the head's part from one read of the blocks; the CNNs' (the slow part) in parts
        H = head_proba(model, ws, ids[todo]) if model.head is not None else None
        with progress_bar(len(todo), desc=f"vote {model.run_id}", enabled=progress) as bar:
            for i, s in enumerate(range(0, len(todo), chunk)):
                rows = todo[s : s + chunk]
                P = model_proba(model, ws, ids[rows], None if H is None else H[s : s + chunk])
                proba[rows] = P
                tab = pd.DataFrame(P.astype(np.float32), columns=list(classes))
                tab.insert(0, "face_id", ids[rows])
                try:
                    with atomic_path(folder / f"part-{start + i:06d}.parquet") as tmp:
                        tab.to_parquet(tmp, index=False)
                except OSError as exc:
                    log.warning("vote cache %s not written (%s)", folder, exc)
                bar.update(len(rows))
    return ModelVote(model.run_id, classes, ids, proba, trained_on)
