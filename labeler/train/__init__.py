"""Train classifiers from the workspace's human labels, and load them back for prediction.

Modes (``TrainConfig.mode``):

- ``auto`` (the default): ``ensemble`` from 300 labels (up to 2,500 without a GPU), else
  ``head`` (:func:`labeler.train.runs.auto_mode`).
- ``head``: logistic regression or a small MLP on stored features (``labeler.features``);
  seconds on CPU. Reported scores are out-of-fold (K-fold grouped by person).
- ``ensemble``: the head and CNNs fine-tuned on the aligned crops at 128 px (one per fold of
  a person-grouped 3-fold, the last epoch kept), their probabilities averaged; scored on the
  out-of-fold predictions of both (``bench/results/train_ensemble.md``).
- ``finetune``: a timm backbone fine-tuned on the aligned crops (:mod:`.finetune`). With
  ``folds >= 2`` one model per fold (StratifiedGroupKFold by person), reported on the
  out-of-fold predictions, and the saved model is their soft-voting ensemble; otherwise one
  model with a person-grouped 15 % validation split for early stopping.

Saved under ``ws.models_dir/<run_id>/``: ``config.json`` (mode, field, classes, feature spec
or backbone, scores), ``head.npz`` and/or ``fold*/best.pt``, ``report.json``, ``confusion.png``.
``ws.models_dir/current.json`` maps each field to its latest run.

Modules: :mod:`.data` (feature matrices and persons: inputs the learning loop shares;
the human labels are :func:`labeler.labels.human_labels`), :mod:`.runs` (train, list and load runs),
:mod:`.head`, :mod:`.finetune`, :mod:`.report`. This package re-exports their public names.
"""

from __future__ import annotations

from labeler.train.data import (
    TrainConfig,
    feature_blocks,
    load_feature_matrix,
    persons_for,
)
from labeler.train.head import Head, HeadConfig, cross_val_proba, fit_head
from labeler.train.report import ClassReport, classification_report
from labeler.train.runs import (
    LoadedModel,
    TrainResult,
    list_runs,
    load_model,
    train,
)

__all__ = [
    "ClassReport",
    "Head",
    "HeadConfig",
    "LoadedModel",
    "TrainConfig",
    "TrainResult",
    "classification_report",
    "cross_val_proba",
    "feature_blocks",
    "fit_head",
    "list_runs",
    "load_feature_matrix",
    "load_model",
    "persons_for",
    "train",
]
