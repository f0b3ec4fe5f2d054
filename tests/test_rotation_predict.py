"""`labeler predict` keeps a face's label when its photo is turned 90/180/270 degrees.

The faces `labeler run` finds on shared-set photos as stored, a head model trained on their
labels, then `labeler predict` on the photos as stored and on copies turned by 90, 180 and
270 degrees (lossless PNG, no EXIF): each face of the stored photo must get the same label
in the turned copies (matched by its box mapped back to the stored photo). The bench on all
sets: bench/bench_rotation.py --predict.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from conftest import shared_dataset
from PIL import Image

from labeler.cli import cli

TURNS = (90, 180, 270)


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of boxes ``a`` (N, 4) against ``b`` (M, 4) -> (N, M)."""
    x0 = np.maximum(a[:, None, 0], b[None, :, 0])
    y0 = np.maximum(a[:, None, 1], b[None, :, 1])
    x1 = np.minimum(a[:, None, 2], b[None, :, 2])
    y1 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def labels_by_run_face(
    run_faces: pd.DataFrame, preds: pd.DataFrame, turn: int, sizes: dict[str, tuple[int, int]]
) -> dict[str, str | None]:
    """face_id (of the run, on the stored photo) -> the label predicted for the face whose box
    (mapped back from the photo turned ``turn`` degrees) overlaps it most (IoU >= 0.3)."""
    from labeler.detect import unrotate_points

    out: dict[str, str | None] = {}
    for name, faces in run_faces.groupby("stem"):
        got = preds[preds["stem"] == name]
        w, h = sizes[name]
        boxes = []
        for r in got.itertuples():
            c = unrotate_points(np.array([[r.x0, r.y0], [r.x1, r.y1]]), turn, w, h)
            boxes.append([*c.min(0), *c.max(0)])
        ref = faces[["x0", "y0", "x1", "y1"]].to_numpy(np.float64)
        iou = box_iou(ref, np.array(boxes, np.float64).reshape(-1, 4))
        for i, fid in enumerate(faces["face_id"]):
            j = int(iou[i].argmax()) if iou.shape[1] else -1
            out[fid] = got["mask_state"].iloc[j] if j >= 0 and iou[i, j] >= 0.3 else None
    return out


def rotation_agreement(set_name: str, tmp: Path, *, n_train: int, n_eval: int) -> dict:
    """Train on ``n_train`` photos of a shared set, predict ``n_eval`` others as stored and
    turned; returns counts (see the module docstring)."""
    from labeler.labels import LabelStore
    from labeler.workspace import Workspace

    root = shared_dataset(set_name)
    labels = pd.read_csv(root / "labels.csv")
    rng = np.random.default_rng(0)
    pick = labels.iloc[rng.permutation(len(labels))[: n_train + n_eval]]
    train_dir, eval_dir = tmp / "train", tmp / "eval"
    for d, rows in ((train_dir, pick[:n_train]), (eval_dir, pick[n_train:])):
        d.mkdir(parents=True)
        for f in rows["file"]:
            shutil.copy(root / "images" / f, d / f)
    runner = CliRunner()
    ws_dir = tmp / "ws"
    for folder in (train_dir, eval_dir):
        res = runner.invoke(cli, ["run", str(folder), "-w", str(ws_dir), "--no-cluster"])
        assert res.exit_code == 0, res.output
    ws = Workspace.open(ws_dir)
    faces = ws.faces().merge(ws.images()[["image_id", "path", "width", "height"]], on="image_id")
    state = dict(zip(labels["file"], labels["state"], strict=True))
    train_faces = faces[faces["path"].isin(set(pick["file"][:n_train]))]
    store = LabelStore(ws.labels_db)
    for label, ids in train_faces.groupby(train_faces["path"].map(state))["face_id"]:
        store.add_value("mask_state", label)  # sets with their own classes (mfr2: masked)
        store.assign(ids.tolist(), "mask_state", label, annotator="test", source="simulation")
    res = runner.invoke(
        cli, ["train", "-w", str(ws_dir), "--folds", "2", "--no-label-errors", "--seed", "0"]
    )
    assert res.exit_code == 0, res.output

    turned = {0: eval_dir}
    for t in TURNS:
        turned[t] = tmp / f"turned_{t}"
        turned[t].mkdir()
        for f in eval_dir.iterdir():
            rgb = np.asarray(Image.open(f).convert("RGB"))
            Image.fromarray(np.rot90(rgb, k=-(t // 90) % 4)).save(turned[t] / f"{f.stem}.png")
    preds = {}
    for t, folder in turned.items():
        out = tmp / f"pred_{t}.csv"
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("labeler")), "predict", str(folder)]
            + ["-w", str(ws_dir), "--out", str(out)],
            capture_output=True,
            text=True,
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        # the TFLite runtime's start-up lines stay off stderr
        assert "Feedback manager" not in proc.stderr and "XNNPACK" not in proc.stderr
        df = pd.read_csv(out)
        df["stem"] = df["path"].map(lambda p: Path(p).stem)
        preds[t] = df
    run_faces = faces[faces["path"].isin(set(pick["file"][n_train:]))].copy()
    run_faces["stem"] = run_faces["path"].map(lambda p: Path(p).stem)
    sizes = {
        s: (int(w), int(h))
        for s, w, h in zip(run_faces["stem"], run_faces["width"], run_faces["height"], strict=True)
    }
    upright = labels_by_run_face(run_faces, preds[0], 0, sizes)
    same = {t: 0 for t in TURNS}
    for t in TURNS:
        got = labels_by_run_face(run_faces, preds[t], t, sizes)
        same[t] = sum(upright[f] is not None and got[f] == upright[f] for f in upright)
    return {
        "faces": len(run_faces),
        "found_upright_by_predict": sum(v is not None for v in upright.values()),
        **{f"same_at_{t}": same[t] for t in TURNS},
    }


@pytest.mark.slow
def test_predict_keeps_the_label_of_turned_photos(tmp_path):
    got = rotation_agreement("maskedfacenet", tmp_path, n_train=48, n_eval=20)
    n = got["faces"]
    assert n >= 18, got
    assert got["found_upright_by_predict"] == n, got  # predict finds run's faces as stored
    # >= 95 % of the faces keep their label over the three turns together (a sample of 20
    # photos: one miss in a turn is 5 %; the bench reports every turn on all sets)
    assert sum(got[f"same_at_{t}"] for t in TURNS) >= 0.95 * 3 * n, got
    for t in TURNS:
        assert got[f"same_at_{t}"] >= 0.9 * n, (t, got)
