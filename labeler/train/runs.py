"""``labeler train``: fit a classifier on the human labels, save it as a run, load it back.

Three modes (``TrainConfig.mode``, see :mod:`labeler.train`); runs live under
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
    temper,
)
from labeler.train.report import ClassReport, classification_report, save_confusion_png
from labeler.workspace import new_run_id

if TYPE_CHECKING:
    from labeler.detect.pipeline import FaceCut
    from labeler.faces.records import FaceCrops
    from labeler.predict import Classifier
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)

MODES = ("head", "finetune", "ensemble")
#: the CNN half's weight in an ensemble's probabilities (the head's: 1 - it)
CNN_WEIGHT = 0.5
#: labels from which ``--mode auto`` trains the ensemble (below: the head alone)
ENSEMBLE_MIN_LABELS = 300
#: labels above which ``--mode auto`` trains the head alone when there is no GPU
ENSEMBLE_MAX_CPU_LABELS = 2500


#: the out-of-fold probabilities a run keeps of the faces it was trained on: the Suggest
#: step's vote reads them (labeler.loop.vote)
OOF_FILE = "oof.parquet"


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
    if config.mode not in (*MODES, "auto"):
        raise InputError(f"--mode {config.mode!r} is not one of auto, {', '.join(MODES)}")
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
    if config.mode == "auto":
        config = replace(config, mode=auto_mode(y, groups, config))
        log.info("--mode auto: %s for %d labels", config.mode, len(y))
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
    stage = _open_stage(ws, run_id, resume=True) if config.mode != "head" else None
    if config.mode in ("head", "ensemble"):
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
        del X
        head, calibration = calibrate(full, oof, y)
        meta |= {
            "calibration": calibration,
            "feature_spec": spec,
            "feature_blocks": feature_blocks(ws, spec),
            "head": config.head,
            "n_features": int(len(head.mean)),
        }
        y_eval = y
        meta["evaluated_on"] = (
            f"out-of-fold predictions ({max(2, config.folds)}-fold, grouped by person)"
        )
        if config.mode == "ensemble":
            # the head's out-of-fold probabilities at its fitted temperature, as it predicts
            scaled = temper(oof, head.temperature)
            cnn, fmeta = _train_finetune(
                ws,
                face_ids,
                y,
                groups,
                classes,
                stage,
                config,
                folds=max(2, config.finetune_folds),
                progress=progress,
            )
            oof = (1 - CNN_WEIGHT) * scaled + CNN_WEIGHT * cnn
            meta |= fmeta | {
                "cnn_weight": CNN_WEIGHT,
                "scores": {
                    "head": _scores(y, classes, scaled),
                    "cnn": _scores(y, classes, cnn),
                    "ensemble": _scores(y, classes, oof),
                },
                "evaluated_on": (
                    f"out-of-fold predictions (head {max(2, config.folds)}-fold, CNNs "
                    f"{max(2, config.finetune_folds)}-fold, grouped by person; the last "
                    "epoch, none chosen on the faces scored)"
                ),
            }
        if config.mode == "head":
            oof = temper(oof, head.temperature)  # as the saved head predicts
        pred = np.asarray(classes, dtype=object)[oof.argmax(1)]
    else:
        probs, fmeta = _train_finetune(
            ws, face_ids, y, groups, classes, stage, config, folds=config.folds, progress=progress
        )
        seen = ~np.isnan(probs[:, 0])
        pred = np.asarray(classes, dtype=object)[probs[seen].argmax(1)]
        y_eval = y[seen]
        meta |= fmeta
        oof = probs
    report = classification_report(y_eval, pred, classes=classes)
    meta |= {
        "report": asdict(report),
        "train_seconds": round(time.time() - t0, 2),
        "created": time.time(),
    }
    if stage is None:
        stage = _open_stage(ws, run_id, resume=False)
    try:
        if head is not None:
            save_head(head, stage / "head.npz")
        save_oof(stage, face_ids, classes, oof)  # the Suggest step's vote (labeler.loop.vote)
        save_confusion_png(report, stage / "confusion.png", title=f"{config.field} ({config.mode})")
        write_json(stage / "config.json", meta)
        write_json(stage / "report.json", asdict(report))
        _publish_run(stage, run_dir)
    except BaseException:
        if config.mode == "head":  # a head's stage: nothing in it to resume
            from labeler import _swap

            _swap.discard(stage)
        raise
    current = current_runs(ws)
    current[config.field] = run_id
    write_json(ws.models_dir / "current.json", current)
    ws.save_step_config("train", meta)
    log.info("trained %s in %.1fs: macro-F1 %.3f", run_id, meta["train_seconds"], report.macro_f1)
    return TrainResult(run_id=run_id, run_dir=run_dir, report=report, config=meta)


def save_oof(
    run_dir: Path, face_ids: np.ndarray, classes: Sequence[str], proba: np.ndarray
) -> Path:
    """Write a run's out-of-fold probabilities (face_id + one column per class; rows no
    model held out, NaN, are left out)."""
    from labeler._io import atomic_path

    keep = ~np.isnan(np.asarray(proba, np.float64)).any(1)
    tab = pd.DataFrame(np.asarray(proba)[keep].astype(np.float32), columns=list(classes))
    tab.insert(0, "face_id", np.asarray(face_ids).astype(str)[keep])
    path = Path(run_dir) / OOF_FILE
    with atomic_path(path) as tmp:
        tab.to_parquet(tmp, index=False)
    return path


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


def auto_mode(y: np.ndarray, groups: np.ndarray, config: TrainConfig) -> str:
    """``--mode auto``: the ensemble once there are :data:`ENSEMBLE_MIN_LABELS` labels and
    every class has a person in each of the CNNs' folds; the head below (CNNs fine-tuned on
    a few dozen faces add nothing the head lacks, and cost minutes). Without a GPU, above
    :data:`ENSEMBLE_MAX_CPU_LABELS` labels the head too: the CNNs' time grows with the
    labels (about 14 min for 2,000 on 2 cores), the head's stays in seconds; a log line
    says so and ``--mode ensemble`` asks for it anyway."""
    if len(y) < ENSEMBLE_MIN_LABELS:
        return "head"
    if len(y) > ENSEMBLE_MAX_CPU_LABELS:
        from labeler.embeddings.backbones import resolve_device

        if not resolve_device(config.finetune.device).startswith("cuda"):
            log.warning(
                "--mode auto: %d labels and no GPU: training the head only (the ensemble's "
                "CNNs would take about %.0f min here); ask for them with --mode ensemble",
                len(y),
                14 * len(y) / 2000,
            )
            return "head"
    k = max(2, config.finetune_folds)
    for c in np.unique(y):
        if len(np.unique(groups[y == c])) < k:
            return "head"
    return "ensemble"


def _train_finetune(
    ws: Workspace,
    face_ids: np.ndarray,
    y: np.ndarray,
    groups: np.ndarray,
    classes: list[str],
    run_dir: Path,
    config: TrainConfig,
    *,
    folds: int,
    progress: bool | None = None,
) -> tuple[np.ndarray, dict]:
    """Fine-tuned CNNs on the aligned crops: one per fold of a person-grouped ``folds``-fold
    (or one with a validation split when ``folds`` is 1) under ``run_dir/fold*``. Returns
    their out-of-fold probabilities (N, C; NaN rows: faces no model held out) and the run's
    meta (the members are the soft-voting model)."""
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
    splits: list[tuple[np.ndarray, np.ndarray]] = []
    if folds >= 2:
        k = int(min(folds, np.bincount(yc).min(), len(np.unique(groups))))
        if k < 2:
            raise InputError(
                f"{folds}-fold needs at least 2 labeled faces (persons) per class; got counts {np.bincount(yc).tolist()}"
            )
        splitter = StratifiedGroupKFold(n_splits=k, shuffle=True, random_state=config.seed)
        splits = [(tr, te) for tr, te in splitter.split(yc, yc, groups)]
    else:
        split = assign_splits(
            y, groups, ratios=(1 - config.val_fraction, config.val_fraction), seed=config.seed
        )
        splits = [(np.flatnonzero(split == "train"), np.flatnonzero(split == "test"))]
    oof = np.full((len(y), len(classes)), np.nan)
    fold_meta = []
    # one bar for every fold: rate and time left of the whole training (epochs a fold does
    # not run, early-stopped or resumed, are taken off its total)
    with progress_bar(
        sum(len(tr) for tr, _ in splits) * fc.epochs,
        desc=f"finetune {len(splits)} fold{'s' * (len(splits) > 1)}",
        enabled=progress,
    ) as bar:
        for i, (tr, va) in enumerate(splits):
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
    how = (
        f"out-of-fold predictions ({len(splits)}-fold)"
        if len(splits) > 1
        else "the validation split"
    )
    if fc.select == "best":
        how += " (used for early stopping too, so slightly optimistic)"
    meta = {
        "backbone": fc.backbone,
        "finetune": asdict(fc),
        "folds": fold_meta,
        "members": [f"fold{i}/best.pt" for i in range(len(splits))],
        "evaluated_on": how,
    }
    return oof, meta


def _scores(y: np.ndarray, classes: list[str], probs: np.ndarray) -> dict:
    """Accuracy and macro-F1 of ``probs`` (N, C) against ``y`` (N,): one part's scores."""
    report = classification_report(
        y, np.asarray(classes, dtype=object)[probs.argmax(1)], classes=classes
    )
    return {"accuracy": report.accuracy, "macro_f1": report.macro_f1}


# --- loading ---------------------------------------------------------------------------------


def current_runs(ws: Workspace) -> dict:
    """``models/current.json``: the current run of each field (empty before any training)."""
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
        box block raises :class:`InputError` for them. An ensemble averages its head's and its
        fine-tuned members' probabilities (``meta["cnn_weight"]``).
        """
        if len(faces) == 0:
            return np.zeros((0, len(self.classes)))
        if self.mode == "finetune":
            from labeler.train.finetune import predict_crops

            crops = faces if isinstance(faces, np.ndarray) else np.stack([f.aligned for f in faces])
            return predict_crops(list(self.members), crops, device=self.device)
        return self._classifier.predict_proba(faces)[0]

    def combine(self, head_probs: np.ndarray, crops: np.ndarray) -> np.ndarray:
        """An ensemble's probabilities (N, C): its head's ``head_probs`` and its fine-tuned
        members' soft vote on the aligned ``crops`` (N, S, S, 3) uint8, weighted by
        ``meta["cnn_weight"]``."""
        from labeler.train.finetune import predict_crops

        w = float(self.meta.get("cnn_weight", CNN_WEIGHT))
        cnn = predict_crops(list(self.members), crops, device=self.device)
        return (1 - w) * head_probs + w * cnn

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
        run = current_runs(ws).get(field)
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
    head = load_head(run_dir / "head.npz") if meta["mode"] in ("head", "ensemble") else None
    members: tuple[dict, ...] = ()
    dev = "cpu"
    if meta["mode"] != "head":
        from labeler.embeddings.backbones import resolve_device
        from labeler.train.finetune import load_finetuned

        dev = resolve_device(device)
        members = tuple(load_finetuned(run_dir / m, device=dev) for m in meta["members"])
    return LoadedModel(
        meta["run_id"],
        meta["field"],
        meta["mode"],
        tuple(meta["classes"]),
        meta,
        head=head,
        members=members,
        device=dev,
    )
