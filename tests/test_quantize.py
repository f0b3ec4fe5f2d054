"""The int8 model (labeler.embeddings.quantize): close to the float features on real face
crops, stored under its own keys, and the float path untouched."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import shared_dataset

# measured on 3,072 real nose/mouth-chin/box crops of the four shared sets: mean cosine per
# block 0.994-0.997, the worst single crop 0.939
# (bench/FEATURES.md "A cheaper model"); the test checks 48 realmasks box crops
MIN_MEAN_COSINE = 0.99
MIN_ROW_COSINE = 0.93
# an x86 CPU without VNNI gets 7-bit weights (labeler.embeddings.quantize.needs_reduce_range):
# measured on 96 realmasks crops, mean 0.989, worst 0.967 (8-bit weights there: 0.974 / 0.915)
MIN_MEAN_COSINE_7BIT = 0.985
MIN_ROW_COSINE_7BIT = 0.95


def _real_crops(n: int = 48, size: int = 224) -> np.ndarray:
    import cv2
    from PIL import Image

    folder = shared_dataset("realmasks") / "images"
    files = sorted(folder.iterdir())[:n]
    return np.stack(
        [
            cv2.resize(np.asarray(Image.open(f).convert("RGB")), (size, size), cv2.INTER_AREA)
            for f in files
        ]
    )


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("onnx")


def test_int8_features_stay_close_to_float_on_real_crops(cache):
    from labeler.embeddings import get_backbone

    crops = _real_crops()
    fp32 = get_backbone(device="cpu", runtime="onnx", precision="fp32", cache_dir=cache)
    int8 = get_backbone(device="cpu", runtime="onnx", precision="int8", cache_dir=cache)
    assert fp32.config.precision == "fp32" and int8.config.precision == "int8"
    assert int8.path != fp32.path and int8.path.name.startswith(fp32.path.stem + "-int8-")
    a, b = fp32.embed(crops), int8.embed(crops)
    assert a.shape == b.shape == (len(crops), 1280) and b.dtype == np.float32
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    from labeler.embeddings.quantize import needs_reduce_range

    seven = needs_reduce_range()
    min_mean = MIN_MEAN_COSINE_7BIT if seven else MIN_MEAN_COSINE
    min_row = MIN_ROW_COSINE_7BIT if seven else MIN_ROW_COSINE
    assert cos.mean() >= min_mean and cos.min() >= min_row, (
        cos.mean(),
        cos.min(),
    )
    assert not np.allclose(a, b, atol=1e-3)  # it is another model, not the float one again
    # the float path is the float path: the same numbers as torch
    torch_bb = get_backbone(device="cpu", runtime="torch")
    np.testing.assert_allclose(torch_bb.embed(crops[:4]), a[:4], atol=2e-3, rtol=1e-3)
    # a second build reuses the cached int8 file
    again = get_backbone(device="cpu", runtime="onnx", precision="int8", cache_dir=cache)
    assert again.path == int8.path
    np.testing.assert_array_equal(again.embed(crops[:4]), b[:4])


def test_int8_keys_never_mix_with_float_keys():
    from dataclasses import replace

    from labeler.embeddings.store import embedding_key, parse_key
    from labeler.embeddings.types import BackboneConfig

    c = BackboneConfig("timm:efficientnet_lite0", "tf_efficientnet_lite0", "offline:x", "ab",
                       224, (0.5,) * 3, (0.5,) * 3, 1280, runtime="onnx")  # fmt: skip
    q = replace(c, precision="int8")
    assert embedding_key(c.key_name, "nose") == "efficientnet_lite0__nose"
    assert embedding_key(q.key_name, "nose") == "efficientnet_lite0-int8__nose"
    small = replace(q, input_size=128, resized=True)
    assert parse_key(embedding_key(small.key_name, "box")) == (
        "efficientnet_lite0-int8",
        128,
        "box",
    )
    assert q.fingerprint() != c.fingerprint()
    assert replace(c, precision="bf16").fingerprint() == c.fingerprint()  # rounding only


def test_int8_refuses_what_it_cannot_do(tmp_path, cache):
    from labeler.embeddings import BackboneError, get_backbone
    from labeler.embeddings.onnx_runtime import ensure_int8
    from labeler.embeddings.quantize import QuantizeError, quantize_onnx

    with pytest.raises(BackboneError, match="onnxruntime on the CPU only"):
        get_backbone(device="cpu", runtime="torch", precision="int8")
    with pytest.raises(QuantizeError, match="at 224 px, not tf_efficientnet_lite0 at 128 px"):
        get_backbone(
            device="cpu", runtime="onnx", precision="int8", input_size=128, cache_dir=cache
        )
    # ranges of another export: refused with the fix, never a half-quantized model
    fp32 = get_backbone(device="cpu", runtime="onnx", precision="fp32", cache_dir=cache)
    with pytest.raises(QuantizeError, match="do not cover"):
        quantize_onnx(fp32.path, tmp_path / "q.onnx", {"images": (0.0, 255.0)})
    assert not (tmp_path / "q.onnx").exists()
    assert ensure_int8(fp32.path, fp32.config).is_file()


def test_shipped_ranges_file_is_complete():
    from labeler.embeddings.quantize import RANGES_FILE, read_ranges

    table = read_ranges()
    assert table["arch"] == "tf_efficientnet_lite0" and table["input_size"] == 224
    assert len(table["ranges"]) > 80 and len(table["keep_float"]) == 10
    assert all(lo <= 0.0 < hi for lo, hi in table["ranges"].values())
    assert "realmasks" in table["measured_on"] and RANGES_FILE.suffix == ".py"


def test_presets_read_the_int8_blocks_of_a_workspace(monkeypatch):
    from labeler.embeddings import backbones
    from labeler.features import resolve_spec

    bb, q = "efficientnet_lite0", "efficientnet_lite0-int8"
    int8 = ["cues__face", f"{q}__nose", f"{q}__mouth_chin", f"{q}__box"]
    floats = ["cues__face", f"{bb}__nose", f"{bb}__mouth_chin", f"{bb}__box"]
    assert backbones.CPU_AUTO_PRECISION == "int8"  # the CPU default
    assert [k for k, _ in resolve_spec("auto", int8)] == int8
    assert [k for k, _ in resolve_spec("auto", int8 + floats[1:])] == int8  # the engine's own
    assert [k for k, _ in resolve_spec("auto", floats)] == floats  # e.g. embedded on a GPU
    monkeypatch.setattr(backbones, "CPU_AUTO_PRECISION", "fp32")
    assert [k for k, _ in resolve_spec("auto", int8 + floats[1:])] == floats
    assert [k for k, _ in resolve_spec("auto", int8)] == int8  # a workspace's own kind
    # a block stored at another size is the last resort, after the other engine's
    mixed = [*int8[:2], f"{bb}-128px__mouth_chin", f"{bb}__mouth_chin", int8[3]]
    assert [k for k, _ in resolve_spec("auto", mixed)][2] == f"{bb}__mouth_chin"


def test_seven_bit_weights_only_on_x86_without_vnni(monkeypatch):
    import platform

    from labeler.embeddings.quantize import needs_reduce_range

    avx2 = "processor\t: 0\nflags\t\t: fpu sse4_2 avx avx2 fma\n"
    vnni = "flags\t\t: fpu avx2 avx512f avx512_vnni\n"
    avx_vnni = "flags\t\t: fpu avx2 avx_vnni\n"
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert needs_reduce_range(avx2)
    assert not needs_reduce_range(vnni) and not needs_reduce_range(avx_vnni)
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert not needs_reduce_range(avx2)


def test_the_int8_cache_key_holds_the_weight_bits(monkeypatch, tmp_path):
    import labeler.embeddings.quantize as quantize
    from labeler.embeddings.onnx_runtime import int8_cache_path

    fp32 = tmp_path / "m.onnx"
    monkeypatch.setattr(quantize, "needs_reduce_range", lambda cpuinfo=None: True)
    seven = int8_cache_path(fp32, "ranges")
    monkeypatch.setattr(quantize, "needs_reduce_range", lambda cpuinfo=None: False)
    assert int8_cache_path(fp32, "ranges") != seven
