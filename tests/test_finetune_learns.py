"""A fine-tune learns: on real faces, the CNN fine-tuned on labeled crops beats the frozen
head it started from (the same ImageNet backbone, its pooled features, a logistic head) on
faces neither saw.

The faces: maskedfacenet (FFHQ photos with masks pasted over the mouth and nose, or under the
nose), ``correct`` vs ``nose_exposed``, whole photos at 96 px: the frozen ImageNet features
of the whole face follow identity, pose and light more than where the mask sits, which is
what fine-tuning has to learn. The recipe is ``labeler train --mode ensemble``'s CNN half
(stem and 2 stages frozen, the last epoch kept: nothing chosen on the faces scored).
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_labels

pytestmark = pytest.mark.slow

MARGIN = 0.05  # accuracy points the fine-tune must add to its frozen start on held-out faces
SIZE = 96


def _faces(n_per_class: int) -> tuple[np.ndarray, np.ndarray]:
    from conftest import shared_dataset
    from PIL import Image

    root = shared_dataset("maskedfacenet") / "images"
    table = shared_labels("maskedfacenet")
    rows = pd_rows(table, n_per_class)
    crops = []
    for f in rows["file"]:
        with Image.open(root / f) as im:
            crops.append(np.asarray(im.convert("RGB").resize((SIZE, SIZE), Image.BILINEAR)))
    return np.stack(crops), rows["state"].to_numpy().astype(str)


def pd_rows(table, n_per_class: int):
    import pandas as pd

    parts = [
        table[table["state"] == c].sample(n_per_class, random_state=0)
        for c in ("correct", "nose_exposed")
    ]
    return pd.concat(parts).sample(frac=1.0, random_state=1).reset_index(drop=True)


def test_finetune_beats_the_frozen_head_it_started_from(tmp_path, torch_threads_restored):
    from dataclasses import replace

    import torch
    from sklearn.metrics import accuracy_score

    from labeler.train.data import FINETUNE_OF
    from labeler.train.finetune import (
        MEAN,
        STD,
        create_model,
        finetune,
    )
    from labeler.train.head import fit_head

    torch.set_num_threads(2)
    crops, y = _faces(130)
    classes = sorted(set(y))
    yc = np.searchsorted(classes, y)
    tr, te = np.arange(180), np.arange(180, len(y))
    # the frozen start: the shipped ImageNet weights, pooled features, a logistic head
    model = create_model("efficientnet_lite0", len(classes)).eval()
    x = torch.from_numpy(crops).permute(0, 3, 1, 2).float() / 255
    x = (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    with torch.no_grad():
        feats = model.forward_head(model.forward_features(x), pre_logits=True).numpy()
    head = fit_head(feats[tr], y[tr])
    frozen = accuracy_score(y[te], head.predict(feats[te]))
    cfg = replace(FINETUNE_OF["ensemble"], image_size=SIZE, device="cpu")
    res = finetune(
        crops, yc, classes=classes, train_idx=tr, val_idx=te, out_dir=tmp_path / "ft", config=cfg
    )
    tuned = accuracy_score(yc[te], res.val_probs.argmax(1))
    assert tuned >= frozen + MARGIN, (tuned, frozen)
