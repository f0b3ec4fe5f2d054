"""A head model classifies new faces from the blocks it was trained on, computed as
`labeler run` stored them: the box block from the box crop (not the aligned crop), each block
at its own input size (`--features fast`: 128 px). One path: `LoadedModel.predict_proba`,
`labeler predict` and the app's Try it all go through `labeler.predict.Classifier`.

The workspace: photos the test paints (tinyws faces, two classes), `labeler run` on them
(detector `none`: each photo is one face, so its box crop, the photo + 20 % grey margin, is
another picture than its aligned crop), heads trained on the stored blocks.
"""

from __future__ import annotations

import numpy as np
import pytest
import tinyws
from click.testing import CliRunner
from PIL import Image

from labeler.cli import cli

CLASSES = ("correct", "no_mask")
N_PER_CLASS = 8


def preset_keys(preset: str) -> list[str]:
    from labeler.embeddings.backbones import DEFAULT_BACKBONE
    from labeler.embeddings.store import embedding_key
    from labeler.features import PRESETS

    prefix = embedding_key(DEFAULT_BACKBONE, "face").rsplit("__", 1)[0]
    return [k.format(backbone=prefix) for k, _ in PRESETS[preset]]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    return build_trained(tmp_path_factory.mktemp("model_features"))


def build_trained(root):
    """(workspace, photos by face_id, {name: LoadedModel}) with heads on the default blocks
    (``auto``: cues + nose + mouth_chin + box at 224 px), on the ``fast`` blocks (128 px) and
    on blocks of the aligned crop only."""
    from labeler.labels import LabelStore
    from labeler.train import TrainConfig, load_model, train
    from labeler.workspace import Workspace

    photos = root / "photos"
    photos.mkdir()
    rng = np.random.default_rng(7)
    for label in CLASSES:
        for i in range(N_PER_CLASS):
            Image.fromarray(tinyws.face_image(label, rng)).save(
                photos / f"{label}_{i:02d}.jpg", quality=90
            )
    spec = "+".join(dict.fromkeys(preset_keys("auto") + preset_keys("fast")))
    res = CliRunner().invoke(
        cli,
        ["run", str(photos), "-w", str(root / "ws"), "--detector", "none"]
        + ["--features", spec, "--no-cluster"],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    ws = Workspace.open(root / "ws")
    faces = ws.faces().merge(ws.images()[["image_id", "path"]], on="image_id")
    assert len(faces) == 2 * N_PER_CLASS
    store = LabelStore(ws.labels_db)
    for label in CLASSES:
        ids = faces.loc[faces["path"].str.startswith(label), "face_id"].tolist()
        store.assign(ids, "mask_state", label, annotator="test", source="simulation")
    aligned_only = "+".join(k for k in preset_keys("auto") if not k.endswith("__box"))
    models = {}
    for name, features in (("auto", "auto"), ("fast", "fast"), ("aligned", aligned_only)):
        run_id = f"head-{name}"
        cfg = TrainConfig(feature_spec=features, folds=2, persons="image", run_id=run_id)
        train(ws, cfg, progress=False)
        models[name] = load_model(ws, run_id)
    # an ensemble: the default head and fine-tuned CNNs (tiny: 1 epoch at 64 px)
    from dataclasses import replace

    from labeler.train.data import FINETUNE_OF

    fc = replace(FINETUNE_OF["ensemble"], epochs=1, image_size=64, batch_size=8, device="cpu")
    cfg = TrainConfig(
        mode="ensemble", folds=2, finetune_folds=2, persons="image", run_id="ensemble", finetune=fc
    )
    train(ws, cfg, progress=False)
    models["ensemble"] = load_model(ws, "ensemble")
    photo_of = dict(zip(faces["face_id"], faces["path"].map(lambda p: photos / p), strict=True))
    return ws, photo_of, models


def stored_records(ws, face_ids):
    """FaceCrops of the faces from the crop files the workspace stores (aligned and box)."""
    from labeler.embeddings.embed import read_face_crops

    faces = ws.faces().set_index("face_id").loc[face_ids].reset_index()
    return read_face_crops(ws, faces, ("aligned", "box"))(list(face_ids))


def stored_proba(ws, model, face_ids):
    """The model's head on the features stored for ``face_ids`` (what it was trained on)."""
    from labeler.train import load_feature_matrix

    X, _ = load_feature_matrix(ws, model.meta["feature_spec"], face_ids, raw=True)
    return model.head.predict_proba(X)


def test_head_on_default_features_predicts_as_on_its_stored_features(trained):
    """(a) the default blocks include the box block: LoadedModel.predict_proba on the faces'
    crops (as stored, and cut again from the photos by cut_faces) gives the probabilities of
    the head on the stored features, and those of Classifier (labeler predict's path)."""
    from labeler.detect import get_detector
    from labeler.detect.pipeline import DetectConfig, cut_faces
    from labeler.predict import Classifier

    ws, photo_of, models = trained
    model = models["auto"]
    keys = [b["key"] for b in model.meta["feature_blocks"]]
    assert any(k.endswith("__box") for k in keys) and "cues__face" in keys, keys
    ids = list(photo_of)
    want = stored_proba(ws, model, ids)
    assert want.shape == (len(ids), 2)
    records = stored_records(ws, ids)
    got = model.predict_proba(records)
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(Classifier([model]).predict_proba(records)[0], got, atol=1e-6)
    det, cfg = get_detector("none"), DetectConfig(detector="none")
    cuts = [cut_faces(photo_of[f], det, cfg, box=True)[0] for f in ids]
    np.testing.assert_allclose(model.predict_proba(cuts), want, atol=1e-4)


def test_box_block_is_computed_from_the_box_crop_not_the_aligned_crop(trained):
    """(b) the box block of a new face equals the stored box embedding; the aligned crop's
    box region (what the removed features_for_crops embedded) is another picture and gives
    other features, and other probabilities than the model's, which are those of its head on
    the stored features."""
    from labeler.embeddings.embed import embed_crops
    from labeler.embeddings.store import load_embeddings
    from labeler.predict import Classifier

    ws, photo_of, models = trained
    ids = list(photo_of)
    (box_key,) = [b["key"] for b in models["auto"].meta["feature_blocks"] if b["region"] == "box"]
    _, stored = load_embeddings(ws, box_key, face_ids=np.asarray(ids))
    clf = Classifier([models["auto"]])
    records = stored_records(ws, ids)
    new = clf.blocks.compute(records)[box_key]
    np.testing.assert_allclose(new, stored, atol=1e-3)
    (backbone,) = [bb for bb, regions in clf.blocks.groups if "box" in regions]
    old = embed_crops(backbone, np.stack([r.aligned for r in records]), region="box")
    rel = np.linalg.norm(old - stored, axis=1) / np.linalg.norm(stored, axis=1)
    assert rel.min() > 0.3, rel  # measured: each face's vector moves by 63-73 % (L2)
    model = models["auto"]
    blocks = [
        old if b["key"] == box_key else load_embeddings(ws, b["key"], face_ids=np.asarray(ids))[1]
        for b in model.meta["feature_blocks"]
    ]
    old_proba = model.head.predict_proba(np.concatenate(blocks, 1).astype(np.float32))
    want = stored_proba(ws, model, ids)
    np.testing.assert_allclose(model.predict_proba(records), want, atol=1e-4)
    # measured: 0.018 on float features, 0.0006 on the int8 default (a saturated tiny head)
    assert np.abs(old_proba - want).max() > 1e-4


def test_aligned_crops_alone_for_a_box_model_is_one_clean_error(trained):
    """(c) a head with a box block refuses aligned crops alone (a one-line InputError naming
    what came and the fix); a head on aligned-crop blocks only still takes them."""
    from labeler.errors import InputError
    from labeler.faces.records import FaceCrops

    ws, photo_of, models = trained
    ids = list(photo_of)[:3]
    records = stored_records(ws, ids)
    aligned = np.stack([r.aligned for r in records])
    with pytest.raises(InputError) as err:
        models["auto"].predict_proba(aligned)
    msg = str(err.value)
    assert "\n" not in msg and "(3, 256, 256, 3)" in msg, msg
    assert "box crop" in msg and "cut_faces" in msg and "predict_image" in msg, msg
    no_box = [FaceCrops(r.face_id, r.aligned) for r in records]
    with pytest.raises(InputError, match=f"3 of 3 faces without a box crop .*{ids[0]}"):
        models["auto"].predict_proba(no_box)
    np.testing.assert_allclose(
        models["aligned"].predict_proba(aligned),
        stored_proba(ws, models["aligned"], ids),
        atol=1e-4,
    )


def test_fast_model_embeds_at_its_own_input_size(trained):
    """(d) a --features fast model (128 px) computes its blocks at 128 px: equal to the
    stored ones (the model's own 224 px gives other vectors), and predicts as its head on
    the stored features."""
    from labeler.embeddings.store import load_embeddings
    from labeler.predict import Classifier

    ws, photo_of, models = trained
    model = models["fast"]
    ids = list(photo_of)
    cnn = [b["key"] for b in model.meta["feature_blocks"] if not b["key"].startswith("cues")]
    assert len(cnn) == 3 and all("-128px__" in k for k in cnn), cnn
    clf = Classifier([model])
    assert [bb.input_size for bb, _ in clf.blocks.groups] == [128]
    records = stored_records(ws, ids)
    X = clf.blocks.compute(records)
    for key in cnn:
        _, stored = load_embeddings(ws, key, face_ids=np.asarray(ids))
        np.testing.assert_allclose(X[key], stored, atol=1e-3, err_msg=key)
        # the 224 px blocks of the default CPU engine (int8; no int8 model at 128 px)
        at224 = key.replace("-128px", "-int8")
        _, at_224 = load_embeddings(ws, at224, face_ids=np.asarray(ids))
        assert not np.allclose(at_224, stored, atol=1e-2), key
    np.testing.assert_allclose(
        model.predict_proba(records), stored_proba(ws, model, ids), atol=1e-4
    )


def test_ensemble_predicts_the_average_of_its_head_and_its_cnns(trained, tmp_path):
    """An ensemble run (``labeler train --mode ensemble``) goes through the one feature path:
    its head on the blocks computed from the faces' crops (as on its stored features) and
    its fine-tuned members on the aligned crops, averaged; ``labeler predict`` writes it."""
    import pandas as pd

    from labeler.predict import Classifier
    from labeler.train.finetune import predict_crops

    ws, photo_of, models = trained
    model = models["ensemble"]
    assert model.mode == "ensemble" and len(model.members) == 2
    ids = list(photo_of)
    records = stored_records(ws, ids)
    cnn = predict_crops(list(model.members), np.stack([r.aligned for r in records]))
    want = 0.5 * stored_proba(ws, model, ids) + 0.5 * cnn
    got = Classifier([model]).predict_proba(records)[0]
    np.testing.assert_allclose(got, want, atol=1e-4)
    np.testing.assert_allclose(model.predict_proba(records), got, atol=1e-6)
    out = tmp_path / "pred.csv"
    photos = sorted({p.parent for p in photo_of.values()})[0]
    res = CliRunner().invoke(
        cli,
        ["predict", str(photos), "-w", str(ws.root), "--model", "ensemble"]
        + ["--detector", "none", "--out", str(out)],
        catch_exceptions=False,
    )
    assert res.exit_code == 0, res.output
    table = pd.read_csv(out)
    assert len(table) == len(ids) and set(table.filter(like="mask_state").columns)
