"""Ingest hashes and header-checks every file by streaming it (issue #22): a big file costs
no more memory than a small one, and its id is still the hash of all of its bytes."""

from __future__ import annotations

import hashlib
import io
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from labeler.ingest import _read_one, ingest_folder
from labeler.workspace import Workspace

SIZE = 64 * 2**20


def sha16(path: Path) -> str:
    h = hashlib.sha1()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:16]


def jpeg_bytes(seed: int = 0) -> bytes:
    rgb = np.random.default_rng(seed).integers(0, 255, (96, 128, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=90)
    return buf.getvalue()


@pytest.fixture
def big_files(tmp_path) -> Path:
    """A folder with: a 64 MiB junk file that starts like a JPEG (random bytes), a real
    JPEG followed by 64 MiB of zeros after its end marker (a usable photo), a small photo."""
    folder = tmp_path / "photos"
    folder.mkdir()
    rng = np.random.default_rng(1)
    (folder / "junk.jpg").write_bytes(b"\xff\xd8\xff" + rng.bytes(SIZE - 3))
    with open(folder / "padded.jpg", "wb") as fh:
        fh.write(jpeg_bytes(1))
        fh.truncate(SIZE)  # sparse zeros after the JPEG's end marker
    (folder / "small.jpg").write_bytes(jpeg_bytes(2))
    return folder


def test_big_files_are_hashed_whole_and_junk_is_recorded_as_bad(big_files, tmp_path):
    for verify_side in (0, 128):  # header only (labeler run) and a small decode (ingest)
        ws = Workspace.open(tmp_path / f"ws{verify_side}", create=True)
        ingest_folder(ws, big_files, verify_side=verify_side)
        images = ws.images().set_index("path")
        assert images.loc["junk.jpg", "status"] == "error"
        assert "junk.jpg" in images.loc["junk.jpg", "error"]
        assert images.loc["junk.jpg", "size_bytes"] == SIZE
        for name in ("padded.jpg", "small.jpg"):
            assert images.loc[name, "status"] == "ok", images.loc[name, "error"]
            assert (images.loc[name, "width"], images.loc[name, "height"]) == (128, 96)
        for name in ("junk.jpg", "padded.jpg", "small.jpg"):
            assert images.loc[name, "image_id"] == sha16(big_files / name), name


@pytest.mark.parametrize("name", ["junk.jpg", "padded.jpg"])
def test_hashing_a_big_file_uses_bounded_memory(big_files, name):
    """Python-level allocations while one 64 MiB file is hashed and checked stay a few MiB
    (reading it whole, as before, allocated its size twice)."""
    _read_one(big_files, 0, "small.jpg", 128)  # imports and decoder set-up out of the way
    tracemalloc.start()
    try:
        row = _read_one(big_files, 0, name, 128)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert row["image_id"] == sha16(big_files / name)
    assert peak < 8 * 2**20, f"peak {peak / 2**20:.1f} MiB while reading a 64 MiB file"


def test_gpu_reader_leaves_big_files_to_the_cpu_path(big_files, monkeypatch):
    """The fused GPU pass reads a photo whole for nvJPEG only when it is small; a bigger one
    goes to the CPU path, which decodes from the file."""
    from labeler.detect import fused

    small = big_files / "small.jpg"
    got = fused.read_for_gpu(small)
    assert got.data == small.read_bytes() and got.gpu_ok
    got = fused.read_for_gpu(big_files / "padded.jpg")  # 64 MiB: at the limit, still read
    assert got.data is not None
    monkeypatch.setattr(fused, "GPU_READ_MAX_BYTES", 2**20)
    got = fused.read_for_gpu(big_files / "padded.jpg")
    assert got.data is None and not got.gpu_ok
