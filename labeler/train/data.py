"""The inputs of training, suspects and suggestions: feature matrices in a given face
order, and the persons of faces (the human labels are :func:`labeler.labels.human_labels`).

Plain functions on a workspace; :mod:`labeler.train.runs` (``labeler train``) and the
learning loop (:mod:`labeler.loop`) call them.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from labeler.train.finetune import FinetuneConfig

if TYPE_CHECKING:
    from labeler.workspace import Workspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TrainConfig:
    """What ``labeler train`` does. ``mode``: head | finetune | ensemble (the head and
    fine-tuned CNNs, their probabilities averaged) | auto (the ensemble where it can learn
    and fits the time, else the head: :func:`labeler.train.runs.auto_mode`). ``folds``: K of the person-grouped
    K-fold (1 = a single model with a validation split); ``head``: logreg | mlp;
    ``feature_spec``: see ``labeler.features.load_features``; ``finetune``: the options of
    the fine-tune (default: the mode's, :data:`FINETUNE_OF`; its ``seed`` is replaced by
    this config's ``seed``); ``finetune_folds``: K of the ensemble's fine-tuned members
    (each trained without one fold; their soft vote is the CNN half of the ensemble).

    Saved runs hold ``asdict(config)`` (``train_config`` in ``config.json``) and load back
    with ``TrainConfig(**saved)``: a dict in ``finetune`` is read by
    :meth:`FinetuneConfig.from_dict`, so runs saved when it held only the changed options
    load too.
    """

    field: str = "mask_state"
    mode: str = "auto"
    folds: int = 5
    head: str = "logreg"
    C: float = 1.0
    feature_spec: str = "auto"
    persons: str = "auto"
    person_pattern: str | None = None
    person_csv: str | None = None
    val_fraction: float = 0.15
    seed: int = 0
    run_id: str | None = None
    finetune: FinetuneConfig | None = None  # None: the mode's own (see :data:`FINETUNE_OF`)
    finetune_folds: int = 3

    def __post_init__(self) -> None:
        if self.finetune is None:
            object.__setattr__(self, "finetune", finetune_for(self.mode))
        elif isinstance(self.finetune, Mapping):  # saved run JSON, or older callers
            object.__setattr__(self, "finetune", FinetuneConfig.from_dict(self.finetune))


#: The fine-tune of each mode. ``ensemble``'s CNN half is sized for a CPU: 128 px, the stem
#: and 2 first stages frozen (1.5x faster backward), 6 epochs, and the last epoch kept (its
#: out-of-fold scores are honest: no epoch is chosen on the faces they score). On realmasks
#: (scene folds) it adds to the head what the head lacks (``bench/bench_train_ensemble.py``).
_ENSEMBLE = FinetuneConfig(
    image_size=128,
    epochs=6,
    lr=5e-4,
    head_lr=2e-3,
    freeze_stages=2,
    select="last",
    patience=6,
    min_crop=0.7,
    eval_crop=0.93,
    rotation=10.0,
)
FINETUNE_OF: dict[str, FinetuneConfig] = {
    "finetune": FinetuneConfig(),
    "ensemble": _ENSEMBLE,
    "auto": _ENSEMBLE,  # auto trains the ensemble (enough labels) or the head (no fine-tune)
}


def finetune_for(mode: str) -> FinetuneConfig:
    """The fine-tune options ``mode`` trains with (a head alone: the plain defaults)."""
    return FINETUNE_OF.get(mode, FinetuneConfig())


def load_feature_matrix(
    ws: Workspace, spec: str, face_ids: Sequence[str], *, raw: bool = False
) -> tuple[np.ndarray, str]:
    """Features (N, D) float32 for ``face_ids`` in that order, and the resolved spec.

    ``raw=False``: ``labeler.features.load_features`` (blocks standardised, PCA-reduced and
    weighted on this workspace: good for propagation and label errors, but not reproducible
    on new photos). ``raw=True``: the stored blocks named by the spec, concatenated as stored,
    so the same features can be computed for new faces (:class:`labeler.predict.Classifier`).
    """
    from labeler.embeddings.store import list_embeddings, load_embeddings
    from labeler.errors import WorkspaceError
    from labeler.features import load_features, resolve_spec
    from labeler.workspace import align_to_faces

    def aligned(ids: np.ndarray, values: np.ndarray, what: str) -> np.ndarray:
        return align_to_faces(
            list(face_ids), np.asarray(ids), np.asarray(values), what=what,
            fix="re-run 'labeler embed'",
        )  # fmt: skip

    if not raw:
        ids, X = load_features(ws, spec)
        return np.asarray(aligned(ids, X, f"features {spec!r}"), dtype=np.float32), spec
    infos = list_embeddings(ws)
    keys = [k for k, _ in resolve_spec(spec, [str(k) for k in infos])]
    X: np.ndarray | None = None
    offset = 0
    for key in keys:  # each block written into one float32 matrix: no concatenated copy
        kid, kx = load_embeddings(ws, key, face_ids=np.asarray(face_ids))
        block = aligned(kid, kx, f"embedding {key}")
        del kid, kx
        if X is None:
            dims = [int(infos[k].dim) or block.shape[1] for k in keys]
            X = np.empty((len(face_ids), sum(dims)), np.float32)
        X[:, offset : offset + block.shape[1]] = block
        offset += block.shape[1]
        del block
    if X is None or offset != X.shape[1]:
        raise WorkspaceError(f"features {'+'.join(keys)}: stored dimensions changed while reading")
    return X, "+".join(keys)


def feature_blocks(ws: Workspace, spec: str) -> list[dict]:
    """How to recompute each block of a raw spec on new crops: key, backbone, region."""
    from labeler.embeddings.store import read_config, split_key

    out = []
    for key in spec.split("+"):
        cfg = (read_config(ws, key) or {}).get("config", {})
        backbone = cfg.get("backbone", {})
        out.append(
            {
                "key": key,
                "backbone": backbone.get("name") if isinstance(backbone, dict) else backbone,
                "region": cfg.get("region") or split_key(key)[1],
            }
        )
    return out


def persons_for(
    ws: Workspace, faces: pd.DataFrame, config: TrainConfig, *, progress: bool | None = None
) -> Any:
    """The persons of ``faces`` exactly as ``labeler export`` finds them with its default
    8:1:1 ratios (:func:`labeler.export.persons.find_persons`); the guard is one fold's share when
    that is smaller (more than 10 folds)."""
    from labeler.export.persons import DEFAULT_MAX_SHARE, find_persons

    return find_persons(
        ws,
        faces,
        method=config.persons,
        pattern=config.person_pattern,
        column_csv=config.person_csv,
        max_share=min(DEFAULT_MAX_SHARE, 1 / max(2, config.folds)),
        progress=progress,
    )
