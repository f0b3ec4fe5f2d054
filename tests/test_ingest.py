"""Ingest and image decoding on files the tests write: good ones, odd modes, broken ones."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from labeler.cli import cli
from labeler.imageio import ImageDecodeError, decode_image, load_rgb
from labeler.ingest import ingest_folder
from labeler.workspace import IMAGES_SCHEMA, Workspace


def _photo(w: int = 96, h: int = 80, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    base = np.linspace(0, 255, w * h * 3).reshape(h, w, 3)
    return Image.fromarray((base * 0.7 + rng.integers(0, 70, (h, w, 3))).astype(np.uint8))


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 30000, height: int = 30000) -> bytes:
    """A tiny PNG whose header claims ``width x height`` RGB pixels."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    raw = height * (1 + 3 * width)  # filter byte + RGB per row
    idat = zlib.compress(b"\0" * (raw if raw < 1_000_000 else 1024))
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )


def _jpeg_bytes(img: Image.Image, **kw: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90, **kw)
    return buf.getvalue()


def _root_reads_everything(path: Path) -> bool:
    try:
        with open(path, "rb"):
            return True
    except PermissionError:
        return False


def write_zoo(folder: Path) -> dict[str, str]:
    """Write good and bad files; return {display path: expected status}."""
    folder.mkdir(parents=True, exist_ok=True)
    expect: dict[str, str] = {}

    def put(name: str, data: bytes, status: str) -> Path:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        expect[name] = status
        return path

    good = _jpeg_bytes(_photo())
    put("good.jpg", good, "ok")
    put("nested/deeper/UPPER.JPG", _jpeg_bytes(_photo(seed=1)), "ok")
    for fmt, ext in (("PNG", "png"), ("WEBP", "webp"), ("BMP", "bmp"), ("TIFF", "tif")):
        buf = io.BytesIO()
        _photo(seed=2).save(buf, fmt)
        put(f"formats/img.{ext}", buf.getvalue(), "ok")
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90: stored 96x80, shown 80x96
    put("rotated.jpeg", _jpeg_bytes(_photo(seed=3), exif=exif), "ok")
    put("good_copy.jpg", good, "duplicate")
    put("zero.jpg", b"", "error")
    put("truncated.jpg", _jpeg_bytes(_photo(300, 300, seed=4))[:1500], "error")
    put("text.jpg", b"this is not an image\n" * 20, "error")
    put("cmyk.jpg", _jpeg_bytes(_photo(seed=5).convert("CMYK")), "ok")
    buf = io.BytesIO()
    Image.fromarray((np.arange(64 * 48).reshape(48, 64) * 21).astype(np.uint16)).save(buf, "PNG")
    put("gray16.png", buf.getvalue(), "ok")
    rgba = np.zeros((40, 50, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 25:, 3] = 255  # left half transparent
    buf = io.BytesIO()
    Image.fromarray(rgba, "RGBA").save(buf, "PNG")
    put("rgba.png", buf.getvalue(), "ok")
    put("bomb.png", bomb_png(), "error")
    for ignored in ("notes.txt", "._good.jpg", ".hidden/x.jpg", "ws/crops/ab/c.jpg"):
        put(ignored, good, "ignored")  # not an image name / hidden / inside a workspace
        expect.pop(ignored)
    (folder / "ws" / "workspace.json").write_text("{}")

    # unreadable entries: a broken symlink and a FIFO always; chmod 000 only where it bites
    os.symlink(folder / "does-not-exist.jpg", folder / "broken_link.jpg")
    expect["broken_link.jpg"] = "error"
    if hasattr(os, "mkfifo"):
        os.mkfifo(folder / "pipe.jpg")
        expect["pipe.jpg"] = "error"
    locked = put("locked.jpg", _jpeg_bytes(_photo(seed=6)), "error")
    locked.chmod(0)
    if _root_reads_everything(locked):  # running as root: 000 is still readable
        locked.chmod(0o644)
        expect["locked.jpg"] = "ok"
    # a file name that is not UTF-8 (latin-1 "café.jpg"), with a valid image inside
    raw_name = os.fsencode(folder) + b"/caf\xe9.jpg"
    try:
        with open(raw_name, "wb") as fh:
            fh.write(_jpeg_bytes(_photo(seed=7)))
        expect["caf\\xe9.jpg"] = "error"
    except OSError:  # file systems that only allow UTF-8 names (APFS) cannot hold one
        pass
    return expect


@pytest.fixture
def zoo(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    folder = tmp_path / "photos"
    return folder, write_zoo(folder)


def test_zoo_every_file_recorded_with_reason(zoo, tmp_path):
    folder, expect = zoo
    ws = Workspace.open(tmp_path / "ws", create=True)
    res = ingest_folder(ws, folder, workers=3)
    images = ws.images()
    got = dict(zip(images["path"], images["status"], strict=True))
    assert got == expect
    assert res.scanned == len(expect) == res.new
    assert (res.ok, res.errors, res.duplicates) == (
        sum(v == "ok" for v in expect.values()),
        sum(v == "error" for v in expect.values()),
        1,
    )
    errors = images[images["status"] == "error"].set_index("path")["error"]
    assert errors.map(lambda e: isinstance(e, str) and e != "" and "\n" not in e).all()
    assert "empty" in errors["zero.jpg"]
    assert "truncated" in errors["truncated.jpg"]
    assert "not an image" in errors["text.jpg"]
    assert "900,000,000" in errors["bomb.png"] or "900000000" in errors["bomb.png"]
    assert "broken symlink" in errors["broken_link.jpg"]
    assert "not a regular file" in errors.get("pipe.jpg", "not a regular file")
    assert "UTF-8" in errors.get("caf\\xe9.jpg", "UTF-8")
    ok = images[images["status"] != "error"].set_index("path")
    assert (ok.loc["good.jpg", ["width", "height"]] == [96, 80]).all()
    assert (ok.loc["rotated.jpeg", ["width", "height"]] == [80, 96]).all()  # EXIF applied
    assert ok.loc["good_copy.jpg", "duplicate_of"] == "good.jpg"
    assert ok.loc["good_copy.jpg", "image_id"] == ok.loc["good.jpg", "image_id"]
    good_sha = hashlib.sha1((folder / "good.jpg").read_bytes()).hexdigest()[:16]
    assert ok.loc["good.jpg", "image_id"] == good_sha
    assert (images["root"] == 0).all() and ws.roots() == [folder.resolve()]
    assert ws.step_config_path("ingest").exists()
    # the table is valid against the schema (write_images validated it); ids are unique per path
    assert list(images.columns) == IMAGES_SCHEMA.names
    assert not images.duplicated(["root", "path"]).any()


def test_rerun_is_noop_and_new_files_only(zoo, tmp_path):
    folder, expect = zoo
    ws = Workspace.open(tmp_path / "ws", create=True)
    ingest_folder(ws, folder)
    before = ws.images()
    mtime = ws.images_path.stat().st_mtime_ns
    again = ingest_folder(ws, folder)
    assert (again.new, again.changed, again.skipped_unchanged) == (0, 0, len(expect))
    assert ws.images_path.stat().st_mtime_ns == mtime  # table not even rewritten
    shutil.copy(folder / "good.jpg", folder / "nested" / "another_copy.jpg")
    _photo(seed=9).save(folder / "new.png")
    third = ingest_folder(ws, folder)
    assert (third.new, third.ok, third.duplicates, third.skipped_unchanged) == (
        2,
        1,
        1,
        len(expect),
    )
    after = ws.images()
    assert after.iloc[: len(before)].equals(before)  # earlier rows keep their order and values
    assert after.set_index("path").loc["nested/another_copy.jpg", "duplicate_of"] == "good.jpg"


def test_changed_file_is_reread_in_place(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    _photo(seed=1).save(folder / "a.jpg")
    (folder / "b.jpg").write_bytes(b"broken")
    ws = Workspace.open(tmp_path / "ws", create=True)
    ingest_folder(ws, folder)
    _photo(120, 60, seed=2).save(folder / "b.jpg")  # fixed by the user
    os.utime(folder / "b.jpg", (1e9, 1e9))
    res = ingest_folder(ws, folder)
    assert (res.changed, res.ok, res.skipped_unchanged) == (1, 1, 1)
    images = ws.images().set_index("path")
    assert images.loc["b.jpg", "status"] == "ok" and images.loc["b.jpg", "width"] == 120
    assert list(images.index) == ["a.jpg", "b.jpg"]


def test_duplicate_promoted_when_first_copy_breaks(tmp_path):
    folder = tmp_path / "p"
    folder.mkdir()
    _photo().save(folder / "a.jpg")
    shutil.copy(folder / "a.jpg", folder / "b.jpg")
    ws = Workspace.open(tmp_path / "ws", create=True)
    ingest_folder(ws, folder)
    assert list(ws.images()["status"]) == ["ok", "duplicate"]
    (folder / "a.jpg").write_bytes(b"")
    ingest_folder(ws, folder)
    assert list(ws.images()["status"]) == ["error", "ok"]


def test_two_roots_and_missing_folder(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for i, folder in enumerate((a, b)):
        folder.mkdir()
        _photo(seed=i).save(folder / "x.jpg")
    ws = Workspace.open(tmp_path / "ws", create=True)
    assert ingest_folder(ws, a).root == 0
    assert ingest_folder(ws, b).root == 1
    assert list(ws.images()["root"]) == [0, 1]
    with pytest.raises(FileNotFoundError, match="not a folder"):
        ingest_folder(ws, tmp_path / "nope")


# --- decoding -------------------------------------------------------------------------------


def test_decode_modes_become_rgb(zoo):
    folder, _ = zoo
    gray16 = decode_image(folder / "gray16.png").rgb
    raw = np.asarray(Image.open(folder / "gray16.png")).astype(np.float64)
    assert gray16.dtype == np.uint8 and gray16.shape == (48, 64, 3)
    assert np.abs(gray16[..., 0] - raw / 257).max() <= 0.51  # scaled, not clipped at 255
    rgba = decode_image(folder / "rgba.png").rgb
    assert (rgba[:, :20] == 255).all()  # transparent -> white
    assert (rgba[:, 30:] == [255, 0, 0]).all()
    cmyk = decode_image(folder / "cmyk.jpg").rgb
    ref = np.asarray(Image.open(folder / "good.jpg").convert("RGB")).astype(int)
    assert cmyk.shape == (80, 96, 3) and np.abs(cmyk.astype(int) - ref).mean() < 40
    rot = decode_image(folder / "rotated.jpeg")
    assert rot.rgb.shape == (96, 80, 3) and (rot.width, rot.height) == (80, 96)


def test_draft_decode_scale_maps_back(tmp_path):
    path = tmp_path / "big.jpg"
    _photo(1000, 600).save(path, quality=95)
    full = decode_image(path)
    small = decode_image(path, max_side=250)
    assert max(small.rgb.shape[:2]) == 250 and small.rgb.shape[:2] == (150, 250)
    assert small.scale == pytest.approx((4.0, 4.0))
    cheap = decode_image(path, min_side=250)  # DCT 1/2 keeps >= 250 ... 1/4 gives 250
    assert cheap.rgb.shape[:2] == (150, 250)
    assert decode_image(path, min_side=300).rgb.shape[:2] == (300, 500)
    np.testing.assert_allclose(small.to_original([[10, 20]]), [[40, 80]])
    # the reduced decode is a faithful thumbnail of the full decode
    ref = np.asarray(Image.fromarray(full.rgb).resize((250, 150), Image.BILINEAR), dtype=float)
    assert np.abs(small.rgb - ref).mean() < 6
    assert load_rgb(path).shape == (600, 1000, 3)
    with pytest.raises(ValueError, match="not both"):
        decode_image(path, max_side=10, min_side=10)


def test_decode_errors_name_the_file(tmp_path):
    bomb = tmp_path / "bomb.png"
    bomb.write_bytes(bomb_png(15000, 15000))  # 225 Mpx: PIL itself would only warn
    with pytest.raises(ImageDecodeError, match=r"bomb\.png: refused"):
        decode_image(bomb)
    assert decode_image(bomb_png(30, 30), max_pixels=10_000).rgb.shape == (30, 30, 3)
    with pytest.raises(ImageDecodeError, match="refused"):
        decode_image(bomb_png(300, 300), max_pixels=10_000)
    with pytest.raises(ImageDecodeError, match="nope.jpg: file not found"):
        decode_image(tmp_path / "nope.jpg")
    with pytest.raises(ImageDecodeError, match="x.jpg: not an image"):
        decode_image(b"hello", name="x.jpg")


# --- CLI ------------------------------------------------------------------------------------


def test_cli_ingest(zoo, tmp_path):
    folder, expect = zoo
    runner = CliRunner()
    ws_dir = tmp_path / "ws"
    res = runner.invoke(cli, ["ingest", str(folder), "-w", str(ws_dir)])
    assert res.exit_code == 0, res.output
    n_ok = sum(v == "ok" for v in expect.values())
    assert f"{len(expect)} image files: {len(expect)} new" in res.output
    assert f"{n_ok} ok, 1 duplicates" in res.output
    assert "error: " in res.output and "zero.jpg: empty file" in res.output
    res = runner.invoke(cli, ["ingest", str(folder), "-w", str(ws_dir)])
    assert res.exit_code == 0 and f"0 new, 0 changed, {len(expect)} unchanged" in res.output
    res = runner.invoke(cli, ["ingest", str(tmp_path / "missing"), "-w", str(ws_dir)])
    assert res.exit_code != 0 and "does not exist" in res.output


def test_process_pool_reads_like_threads(zoo, tmp_path, monkeypatch):
    """Big machines read big folders in processes: same rows, same order, same reasons."""
    import labeler.ingest as ingest_mod

    folder, _ = zoo
    threads = Workspace.open(tmp_path / "threads", create=True)
    ingest_folder(threads, folder)
    monkeypatch.setattr(ingest_mod, "PROCESS_MIN_CORES", 1)
    monkeypatch.setattr(ingest_mod, "PROCESS_MIN_FILES", 1)
    procs = Workspace.open(tmp_path / "procs", create=True)
    ingest_folder(procs, folder)
    a, b = threads.images(), procs.images()
    cols = ["image_id", "path", "status", "error", "width", "height", "duplicate_of"]
    import pandas as pd

    pd.testing.assert_frame_equal(a[cols], b[cols])
