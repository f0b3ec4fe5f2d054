"""``labeler train``: fit a classifier on the human labels, save it as a run, load it back.

Two modes (``TrainConfig.mode``, see :mod:`labeler.train`); runs live under
``ws.models_dir/<run_id>/`` and ``ws.models_dir/current.json`` maps each field to its latest.

A run is written in ``models/.<run_id>.partial/`` and switched in by one atomic step when it
is complete (:mod:`labeler._swap`: a rename, or an exchange with the run of the same id
trained before); only then does ``current.json`` name it. So a killed ``labeler train``
never leaves a model folder that ``labeler predict`` would load half-written: the previous
run stays current and whole. A killed fine-tune resumes from its stage with the same
``--run`` (its folds' ``last.pt``).
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labeler.errors import InputError, NotFoundError
from labeler.labels import human_labels
from labeler.train.data import (
    TrainConfig,
    feature_blocks,
    load_feature_matrix,
    persons_for,
)
from labeler.train.head import (
    Head,
    HeadConfig,
    calibrate,
    cross_val_proba,
    fit_head,
    load_head,
    save_head,
)
from labeler.train.report import ClassReport, classification_report, save_confusion_png
from labeler.workspace import new_run_id

if TYPE_CHECKING:
    from labeler.detect.pipeline import FaceCut
    from labeler.faces.records import FaceCrops
    from labeler.predict import Classifier
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainResult:
    run_id: str
    run_dir: Path
    report: ClassReport
    config: dict


# --- training --------------------------------------------------------------------------------


def train(
    ws: Workspace, config: TrainConfig | None = None, *, progress: bool | None = None
) -> TrainResult:
    """Train a classifier for ``config.field`` on the human labels; save it as a new run.

    progress: a bar of faces trained on, with rate and time left, on stderr (None: only on
    a terminal); a fine-tune also logs each epoch at INFO with its losses and time left.
    """
    from labeler._io import progress_bar
    from labeler.labels import LabelStore
    from labeler.workspace import write_json

    config = config or TrainConfig()
    if config.mode not in ("head", "finetune"):
        raise InputError(f"--mode {config.mode!r} is not head or finetune")
    faces = ws.require_faces()
    labels = human_labels(ws, config.field, faces)
    if labels.empty:
        raise InputError(
            f"no human labels for field {config.field!r} in {ws.labels_db}; label faces in the app first"
        )
    schema_classes = list(LabelStore(ws.labels_db).schema().values(config.field))
    classes = [c for c in schema_classes if c in set(labels["value"])] or sorted(
        set(labels["value"])
    )
    counts = labels["value"].value_counts()
    if len(classes) < 2:
        raise InputError(
            f"field {config.field!r} has labels of one class only ({counts.to_dict()}); label more classes"
        )
    face_ids = labels["face_id"].to_numpy()
    y = labels["value"].to_numpy().astype(str)
    sub_faces = faces.set_index("face_id").loc[face_ids].reset_index()
    persons = persons_for(ws, sub_faces, config, progress=progress)
    groups = persons.ids
    run_id = config.run_id or new_run_id(f"{config.field}-{config.mode}")
    if not run_id or "/" in run_id or "\\" in run_id or run_id.startswith("."):
        raise InputError(
            f"--model {run_id!r} is not a run name; give a name without '/' or a leading '.'"
        )
    run_dir = ws.models_dir / run_id
    head = None
    t0 = time.time()
    meta: dict[str, Any] = {
        "run_id": run_id,
        "field": config.field,
        "mode": config.mode,
        "classes": classes,
        "n_labels": int(len(y)),
        "label_counts": {str(k): int(v) for k, v in counts.items()},
        "persons": persons.as_dict(),
        "train_config": asdict(config),
    }
    if config.mode == "head":
        X, spec = load_feature_matrix(ws, config.feature_spec, face_ids, raw=True)
        hc = HeadConfig(kind=config.head, C=config.C, seed=config.seed)
        # one bar of faces trained on: the K-fold's heads, then the head on all labels
        with progress_bar(len(y), desc=f"train {config.head} head", enabled=progress) as bar:
            oof = cross_val_proba(
                X,
                y,
                groups=groups,
                folds=max(2, config.folds),
                config=hc,
                classes=classes,
                seed=config.seed,
                bar=bar,
            )
            full = fit_head(X, y, config=hc, classes=classes)
            bar.update(len(y))
        head, calibration = calibrate(full, oof, y)
        meta |= {
            "calibration": calibration,
            "feature_spec": spec,
            "feature_blocks": feature_blocks(ws, spec),
            "head": config.head,
            "n_features": int(X.shape[1]),
        }
        pred = np.asarray(classes, dtype=object)[oof.argmax(1)]
        y_eval = y
        meta["evaluated_on"] = (
            f"out-of-fold predictions ({max(2, config.folds)}-fold, grouped by person)"
        )
    else:
        stage = _open_stage(ws, run_id, resume=True)
        pred, y_eval, fmeta = _train_finetune(
            ws, face_ids, y, groups, classes, stage, config, progress=progress
        )
        meta |= fmeta
    report = classification_report(y_eval, pred, classes=classes)
    meta |= {
        "report": asdict(report),
        "train_seconds": round(time.time() - t0, 2),
        "created": time.time(),
    }
    if head is not None:
        stage = _open_stage(ws, run_id, resume=False)
    try:
        if head is not None:
            save_head(head, stage / "head.npz")
        save_confusion_png(report, stage / "confusion.png", title=f"{config.field} ({config.mode})")
        write_json(stage / "config.json", meta)
        write_json(stage / "report.json", asdict(report))
        _publish_run(stage, run_dir)
    except BaseException:
        if head is not None:  # a head's stage: nothing in it to resume
            from labeler import _swap

            _swap.discard(stage)
        raise
    current = _read_current(ws)
    current[config.field] = run_id
    write_json(ws.models_dir / "current.json", current)
    ws.save_step_config("train", meta)
    log.info("trained %s in %.1fs: macro-F1 %.3f", run_id, meta["train_seconds"], report.macro_f1)
    return TrainResult(run_id=run_id, run_dir=run_dir, report=report, config=meta)


def _open_stage(ws: Workspace, run_id: str, *, resume: bool) -> Path:
    """Where run ``run_id`` is written until :func:`_publish_run` switches it in.

    A head: a new hidden ``models/.RUN.<pid>.<hex>.tmp`` (what killed trainings left is
    removed first). A fine-tune (``resume``): ``models/.RUN.partial``, kept when killed so the
    same ``--run`` resumes its folds from ``last.pt`` (when their config matches); the folds
    of a finished run of the same id are linked in, so training a run again resumes it as
    before."""
    from labeler import _swap

    run_dir = ws.models_dir / run_id
    _swap.recover(run_dir)
    _swap.remove_stale_stages(ws.models_dir)
    if not resume:
        return _swap.make_stage(run_dir)
    stage = ws.models_dir / f".{run_id}.partial"
    stage.mkdir(parents=True, exist_ok=True)
    if run_dir.is_dir():
        for fold in sorted(run_dir.glob("fold*")):
            if fold.is_dir() and not (stage / fold.name).exists():
                _link_files(fold, stage / fold.name)
    others = [p.name for p in ws.models_dir.glob(".*.partial") if p != stage]
    if others:
        log.warning(
            "%s holds %d killed fine-tune run(s) (e.g. %s): resume one with "
            "'labeler train --mode finetune --model NAME' or delete its folder",
            ws.models_dir,
            len(others),
            others[0],
        )
    return stage


def _link_files(src: Path, dst: Path) -> None:
    """``dst`` with hard links to the files of ``src`` (copies where links fail). Checkpoints
    are replaced by rename, never written in place, so the linked run stays as it was."""
    dst.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file():
            try:
                os.link(f, dst / f.name)
            except OSError:
                shutil.copy2(f, dst / f.name)


def _publish_run(stage: Path, run_dir: Path) -> None:
    """Switch the complete ``stage`` in as ``run_dir`` in one atomic step (flushed to disk
    first); a run of the same id trained before is swapped out and removed."""
    from labeler import _swap

    _swap.fsync_tree(stage)
    _swap.discard(_swap.publish(stage, run_dir))


def _train_finetune(
    ws: Workspace,
    face_ids: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    classes: list[str],
    run_dir: Path,
    config: TrainConfig,
    *,
    progress: bool | None = None,
) -> tuple[np.ndarray, np.ndarray, dict]:
    from sklearn.model_selection import StratifiedGroupKFold

    from labeler._io import progress_bar
    from labeler.export.splits import assign_splits
    from labeler.train.finetune import finetune

    fc = replace(config.finetune, seed=config.seed)
    paths = [ws.crop_path(f) for f in face_ids]
    missing = [p for p in paths if not p.exists()]
    if missing:
        raise NotFoundError(
            f"{len(missing)} aligned crops are missing (e.g. {missing[0]}); re-run 'labeler detect'"
        )
    code = {c: i for i, c in enumerate(classes)}
    yc = np.array([code[v] for v in y])
    folds: list[tuple[np.ndarray, np.ndarray]] = []
    if config.folds >= 2:
        k = int(min(config.folds, np.bincount(yc).min(), len(np.unique(groups))))
        if k < 2:
            raise InputError(
                f"{config.folds}-fold needs at least 2 labeled faces (persons) per class; got counts {np.bincount(yc).tolist()}"
            )
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=config.seed)
        folds = [(tr, te) for tr, te in splitter.split(yc, yc, groups)]
    else:
        split = assign_splits(
            y, groups, ratios=(1 - config.val_fraction, config.val_fraction), seed=config.seed
        )
        folds = [(np.flatnonzero(split == "train"), np.flatnonzero(split == "test"))]
    oof = np.full((len(y), len(classes)), np.nan)
    fold_meta = []
    # one bar for every fold: rate and time left of the whole training (epochs a fold does
    # not run, early-stopped or resumed, are taken off its total)
    with progress_bar(
        sum(len(tr) for tr, _ in folds) * fc.epochs,
        desc=f"finetune {len(folds)} fold{'s' * (len(folds) > 1)}",
        enabled=progress,
    ) as bar:
        for i, (tr, va) in enumerate(folds):
            res = finetune(
                paths,
                yc,
                classes=classes,
                train_idx=tr,
                val_idx=va,
                out_dir=run_dir / f"fold{i}",
                config=fc,
                bar=bar,
            )
            oof[va] = res.val_probs
            fold_meta.append(
                {
                    "fold": i,
                    "best_epoch": res.best_epoch,
                    "val_macro_f1": res.best_f1,
                    "device": res.device,
                }
            )
    seen = ~np.isnan(oof[:, 0])
    pred = np.asarray(classes, dtype=object)[oof[seen].argmax(1)]
    how = (
        f"out-of-fold predictions ({len(folds)}-fold)" if len(folds) > 1 else "the validation split"
    )
    meta = {
        "backbone": fc.backbone,
        "finetune": asdict(fc),
        "folds": fold_meta,
        "members": [f"fold{i}/best.pt" for i in range(len(folds))],
        "evaluated_on": how + " (used for early stopping too, so slightly optimistic)",
    }
    return pred, y[seen], meta


# --- loading ---------------------------------------------------------------------------------


def _read_current(ws: Workspace) -> dict:
    from labeler.workspace import read_json

    path = ws.models_dir / "current.json"
    return dict(read_json(path)) if path.exists() else {}


def list_runs(ws: Workspace) -> pd.DataFrame:
    """Saved model runs: run_id, field, mode, macro_f1, n_labels, created (newest first)."""
    from labeler.workspace import read_json

    rows = []
    for cfg in sorted(ws.models_dir.glob("*/config.json")):
        if cfg.parent.name.startswith("."):  # a run being written, or swapped out
            continue
        m = read_json(cfg)
        rows.append(
            {
                "run_id": m["run_id"],
                "field": m["field"],
                "mode": m["mode"],
                "macro_f1": m["report"]["macro_f1"],
                "n_labels": m["n_labels"],
                "created": m.get("created", 0.0),
            }
        )
    df = pd.DataFrame(rows, columns=["run_id", "field", "mode", "macro_f1", "n_labels", "created"])
    return df.sort_values("created", ascending=False).reset_index(drop=True)


@dataclass(frozen=True, eq=False)
class LoadedModel:
    """A trained run ready to predict on faces (see :meth:`predict_proba`)."""

    run_id: str
    field: str
    mode: str
    classes: tuple[str, ...]
    meta: dict
    head: Head | None = None
    members: tuple[dict, ...] = ()
    device: str = "cpu"

    def predict_proba(self, faces: Sequence[FaceCrops | FaceCut] | np.ndarray) -> np.ndarray:
        """Class probabilities (N, C) of ``faces``: :class:`~labeler.faces.records.FaceCrops`
        records, or the cuts of :func:`labeler.detect.pipeline.cut_faces` (``box=True``), with
        the crops as the workspace stores them.

        A head model computes the blocks it was trained on exactly as ``labeler run`` stored
        them, through :class:`labeler.predict.Classifier` (each block's crop, aligned or box,
        its region and its input size). Aligned crops alone (N, 256, 256, 3) uint8 do for a
        fine-tuned model and for a head whose blocks all read the aligned crop; a head with a
        box block raises :class:`InputError` for them.
        """
        if len(faces) == 0:
            return np.zeros((0, len(self.classes)))
        if self.mode == "finetune":
            from labeler.train.finetune import predict_crops

            crops = faces if isinstance(faces, np.ndarray) else np.stack([f.aligned for f in faces])
            return predict_crops(list(self.members), crops, device=self.device)
        return self._classifier.predict_proba(faces)[0]

    @cached_property
    def _classifier(self) -> Classifier:
        """The one feature path of new faces, built on first use (its backbones loaded once)."""
        from labeler.predict import Classifier

        return Classifier([self])


def load_model(
    ws: Workspace, run: str | None = None, *, field: str = "mask_state", device: str = "cpu"
) -> LoadedModel:
    """Load run ``run`` (default: the current run of ``field``) from ``ws.models_dir``."""
    from labeler.workspace import read_json

    if run is None:
        run = _read_current(ws).get(field)
        if run is None:
            raise NotFoundError(
                f"no trained model for field {field!r} in {ws.models_dir}; run 'labeler train -w {ws.root}'"
            )
    run_dir = Path(run) if Path(run).is_dir() else ws.models_dir / run
    if not run_dir.exists():
        from labeler import _swap

        try:  # a training killed between the two renames of a filesystem without exchange
            _swap.recover(run_dir)
        except OSError:
            pass
    if not (run_dir / "config.json").exists():
        raise NotFoundError(f"{run_dir}/config.json not found; list runs in {ws.models_dir}")
    meta = read_json(run_dir / "config.json")
    if meta["mode"] == "head":
        return LoadedModel(
            meta["run_id"],
            meta["field"],
            "head",
            tuple(meta["classes"]),
            meta,
            head=load_head(run_dir / "head.npz"),
        )
    from labeler.embeddings.backbones import resolve_device
    from labeler.train.finetune import load_finetuned

    dev = resolve_device(device)
    members = tuple(load_finetuned(run_dir / m, device=dev) for m in meta["members"])
    return LoadedModel(
        meta["run_id"],
        meta["field"],
        "finetune",
        tuple(meta["classes"]),
        meta,
        members=members,
        device=dev,
    )
