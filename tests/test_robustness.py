"""Nothing lost, nothing executed (issue #12): each case on files the test makes (face photos
drawn by ``tinyws.face_image``: no shared data needed).

- a crafted ``last.pt`` is refused by ``finetune`` and its code never runs;
- huge files are refused before they are read (peak memory stays small);
- a 1,000-level folder, a GIF, a workspace inside / equal to the photo folder;
- a 0-byte, garbage or truncated ``labels.db``: one line naming the file and the fix, the
  file left as it was; backups and ``labeler labels restore``;
- a full disk (RLIMIT_FSIZE in a subprocess: EFBIG, as on a full disk) during export: one
  line, ``--out`` and the workspace as they were, no ``.tmp`` litter;
- a killed export leaves no half-written ImageFolder.
"""

from __future__ import annotations

import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tinyws
from click.testing import CliRunner
from PIL import Image

from labeler.cli import cli


def labeler_cmd(*args: str) -> list[str]:
    """The ``labeler`` console command run in a fresh interpreter (what a user types)."""
    return [sys.executable, "-c", "from labeler.cli import main; main()", *args]


def run_cli(*args: str):
    return CliRunner().invoke(cli, list(args))


def face_image(path: Path, seed: int = 0, label: str = "correct") -> Path:
    """A face photo the test draws (MediaPipe finds it: score 0.6-0.7), saved at ``path``."""
    Image.fromarray(tinyws.face_image(label, np.random.default_rng(seed))).save(path)
    return path


def one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def tree(root: Path) -> dict[str, int]:
    return {
        p.relative_to(root).as_posix(): p.stat().st_size
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


# --- a workspace with labels, made from drawn faces ------------------------------------------


@pytest.fixture(scope="module")
def labeled_ws(tmp_path_factory) -> Path:
    """12 drawn face photos (6 masked, 6 not) ingested and detected by the CLI, every face
    labeled."""
    from labeler.labels import LabelStore
    from labeler.workspace import Workspace

    base = tmp_path_factory.mktemp("robust")
    photos = base / "photos"
    photos.mkdir()
    truth = pd.DataFrame(
        {"file": [f"face_{i:02d}.png" for i in range(12)], "state": ["masked", "no_mask"] * 6}
    )
    for i, (f, state) in enumerate(zip(truth["file"], truth["state"], strict=True)):
        face_image(photos / f, seed=i, label="correct" if state == "masked" else "no_mask")
    ws_dir = base / "ws"
    for args in (["ingest", str(photos), "-w", str(ws_dir)], ["detect", "-w", str(ws_dir)]):
        res = run_cli(*args)
        assert res.exit_code == 0, res.output
    ws = Workspace.open(ws_dir)
    faces = ws.require_faces()
    names = [Path(p).name for p in ws.face_image_paths(faces)]
    assert sorted(set(names)) == sorted(truth["file"]), names  # a face found in every photo
    state = truth.set_index("file").loc[names, "state"].to_numpy()
    store = LabelStore(ws.labels_db)
    for s, value in (("masked", "correct"), ("no_mask", "no_mask")):
        ids = faces.loc[state == s, "face_id"].tolist()
        store.assign(ids, "mask_state", value, annotator="t", source="import")
    return ws_dir


def copy_ws(ws_dir: Path, dst: Path) -> Path:
    shutil.copytree(ws_dir, dst)
    return dst


# --- nothing executed ------------------------------------------------------------------------


class _Payload:
    """Unpickling this object runs ``open(marker, 'w')`` (what a crafted checkpoint does)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_crafted_last_pt_is_refused_and_never_runs(tmp_path):
    import torch

    from labeler.train.finetune import FinetuneConfig, finetune

    marker = tmp_path / "pwned"
    out = tmp_path / "fold0"
    out.mkdir()
    torch.save({"key": "x", "evil": _Payload(str(marker))}, out / "last.pt")
    # the file really is a code-running pickle: plain pickle would create the marker
    rng = np.random.default_rng(0)
    crops = rng.integers(0, 255, (8, 64, 64, 3), dtype=np.uint8)
    y = np.array([0, 1] * 4)
    cfg = FinetuneConfig(epochs=1, batch_size=4, image_size=64, device="cpu")
    with pytest.raises(ValueError, match="last.pt is not a plain training checkpoint"):
        finetune(
            crops,
            y,
            classes=["a", "b"],
            train_idx=np.arange(6),
            val_idx=np.arange(6, 8),
            out_dir=out,
            config=cfg,
        )
    assert not marker.exists()
    with open(out / "last.pt", "rb") as fh:  # control: the payload is live
        head = fh.read(2)
    assert head == b"PK"  # a torch zip archive holding the pickle
    assert pickle.loads(pickle.dumps(_Payload(str(marker)))) is not None
    assert marker.exists()  # the control ran it; labeler did not


# --- ingest: memory, depth, formats, workspace placement -------------------------------------


def test_huge_files_are_refused_before_reading(tmp_path):
    photos = tmp_path / "S"
    photos.mkdir()
    face_image(photos / "face.png")
    for name in ("a.jpg", "b.jpg"):
        with open(photos / name, "wb") as fh:
            fh.truncate(3 * 2**30)  # sparse: 3 GiB of zeros, no disk used
    # a wrapper process runs the command and reports its child's peak resident memory
    probe = (
        "import resource, subprocess, sys; r = subprocess.run(sys.argv[1:]); "
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(r.returncode)"
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            probe,
            *labeler_cmd("ingest", str(photos), "-w", str(tmp_path / "W")),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    peak_kib = int(proc.stdout.strip().splitlines()[-1])
    assert peak_kib < 1_000_000, f"peak {peak_kib} KiB"  # was 6.4 GB: files read whole
    images = pd.read_parquet(tmp_path / "W" / "images.parquet").set_index("path")
    assert images.loc["face.png", "status"] == "ok"
    for name in ("a.jpg", "b.jpg"):
        assert images.loc[name, "status"] == "error"
        assert "limit" in images.loc[name, "error"]
    # with the limit raised, the header check still refuses them without reading 3 GiB
    env = {**os.environ, "LABELER_MAX_FILE_MB": "4000"}
    proc = subprocess.run(
        labeler_cmd("ingest", str(photos), "-w", str(tmp_path / "W2")),
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    images = pd.read_parquet(tmp_path / "W2" / "images.parquet").set_index("path")
    assert "not an image" in images.loc["a.jpg", "error"]


def remove_chain(top: Path) -> None:
    """Delete a folder chain too deep for shutil.rmtree (recursive in Python 3.11)."""
    levels = [top]
    while (levels[-1] / "d").is_dir():
        levels.append(levels[-1] / "d")
    for level in reversed(levels):
        for f in level.iterdir():
            if not f.is_dir():
                f.unlink()
        level.rmdir()


@pytest.fixture
def deep_photos(tmp_path):
    photos = tmp_path / "S"
    photos.mkdir()
    deep = photos
    for _ in range(1000):  # os.makedirs itself recurses: build it level by level
        deep = deep / "d"
        deep.mkdir()
    yield photos, deep
    if (photos / "d").exists():
        remove_chain(photos / "d")  # pytest's own cleanup could not


def test_thousand_levels_deep_gif_and_workspace_placement(deep_photos, tmp_path):
    photos, deep = deep_photos
    face_image(deep / "deep.png")
    Image.open(face_image(tmp_path / "g.png", 3)).save(photos / "anim.gif")
    res = run_cli("ingest", str(photos), "-w", str(photos / "ws"))  # workspace inside photos
    assert res.exit_code == 0, res.output
    images = pd.read_parquet(photos / "ws" / "images.parquet").set_index("path")
    assert images.loc["d/" * 1000 + "deep.png", "status"] == "ok"
    assert images.loc["anim.gif", "status"] == "ok"
    assert len(images) == 2
    # the workspace's own crops are never ingested, also after detect wrote some
    assert run_cli("detect", "-w", str(photos / "ws")).exit_code == 0
    res = run_cli("ingest", str(photos), "-w", str(photos / "ws"))
    assert res.exit_code == 0 and len(pd.read_parquet(photos / "ws" / "images.parquet")) == 2
    # a workspace that IS the photo folder is refused, not a silent no-op
    res = run_cli("ingest", str(photos), "-w", str(photos))
    assert res.exit_code != 0
    assert "is the photo folder itself" in res.output


# --- the label store -------------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["empty", "garbage", "truncated"])
def test_damaged_label_store_is_refused_not_recreated(labeled_ws, tmp_path, damage):
    ws = copy_ws(labeled_ws, tmp_path / "ws")
    db = ws / "labels.db"
    data = db.read_bytes()
    bad = {"empty": b"", "garbage": b"not a database " * 100, "truncated": data[: len(data) // 3]}
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    db.write_bytes(bad[damage])
    before = tree(ws)
    for args in (
        ["export", "-w", str(ws), "--out", str(tmp_path / "E"), "--persons", "image"],
        ["train", "-w", str(ws)],
    ):
        proc = subprocess.run(labeler_cmd(*args), capture_output=True, text=True, timeout=300)
        assert proc.returncode == 1
        line = one_line_error(proc.stderr)
        assert str(db) in line and "labeler labels restore" in line
    assert db.read_bytes() == bad[damage]  # nothing silently re-created
    assert tree(ws) == before
    assert not (tmp_path / "E").exists()


def test_backups_rotate_and_restore_brings_labels_back(labeled_ws, tmp_path):
    from labeler.labels import LabelStore
    from labeler.labels.backup import EVERY_EVENTS, KEEP, list_backups

    ws = copy_ws(labeled_ws, tmp_path / "ws")
    db = ws / "labels.db"
    store = LabelStore(db)
    n0 = len(store.current("mask_state"))
    face = store.current("mask_state")["face_id"].iloc[0]
    for _ in range(EVERY_EVENTS * (KEEP + 2)):
        store.assign([face], "mask_state", "correct", annotator="t", source="single")
    backups = list_backups(db)
    assert len(backups) == KEEP  # rotated
    assert backups[0].last_event >= backups[-1].last_event
    assert not list((ws / "backups").glob(".*"))  # no temporary files left
    db.write_bytes(b"")  # all labels "gone"
    for suffix in ("-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    res = run_cli("labels", "restore", "-w", str(ws))
    assert res.exit_code == 0, res.output
    assert len(LabelStore(db).current("mask_state")) == n0
    assert list(ws.glob("labels.db.damaged-*"))  # the damaged file is kept aside
    res = run_cli("labels", "list", "-w", str(ws))
    assert res.exit_code == 0 and "up to event" in res.output


# --- full disk, killed export ----------------------------------------------------------------


def _limited(limit_bytes: int) -> object:
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_export_on_a_full_disk_is_one_line_and_leaves_nothing(labeled_ws, tmp_path):
    ws = copy_ws(labeled_ws, tmp_path / "ws")
    # one crop made big (noise at JPEG quality 100): copying it passes the file-size limit
    crop = sorted((ws / "crops").rglob("*.jpg"))[-1]
    noise = np.random.default_rng(0).integers(0, 255, (256, 256, 3), dtype=np.uint8)
    Image.fromarray(noise).save(crop, quality=100)
    assert crop.stat().st_size > 100_000
    out = tmp_path / "E"
    before = tree(ws)
    cases = (
        (4_000, "labels.db"),  # SQLite cannot even make its WAL index: the store is named
        (64_000, "File too large"),  # the store opens; the big crop's copy fails (EFBIG)
    )
    for limit, expect in cases:
        proc = subprocess.run(
            labeler_cmd("export", "-w", str(ws), "--out", str(out), "--persons", "image"),
            capture_output=True,
            text=True,
            timeout=300,
            preexec_fn=_limited(limit),
        )
        assert proc.returncode == 1
        line = one_line_error(proc.stderr)
        assert expect in line and "free disk space" in line, line
        assert not out.exists()
        assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
        # SQLite's own WAL index files may stay (empty WAL): they hold no data and SQLite
        # re-creates them on every open; everything else is exactly as it was
        after = {k: v for k, v in tree(ws).items() if k not in ("labels.db-shm", "labels.db-wal")}
        assert after == before
        assert tree(ws).get("labels.db-wal", 0) == 0


def test_read_only_workspace_export_and_app(labeled_ws, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("running as root: chmod does not stop root from writing")
    ws = copy_ws(labeled_ws, tmp_path / "ws")
    out_parent = tmp_path / "ro"
    out_parent.mkdir()
    os.chmod(out_parent, 0o555)
    try:
        proc = subprocess.run(
            labeler_cmd(
                "export", "-w", str(ws), "--out", str(out_parent / "E"), "--persons", "image"
            ),
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 1
        assert "writable" in one_line_error(proc.stderr)
        os.chmod(ws, 0o555)
        proc = subprocess.run(
            labeler_cmd("app", "-w", str(ws)), capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 1 and "read-only" in one_line_error(proc.stderr)
    finally:
        os.chmod(out_parent, 0o755)
        os.chmod(ws, 0o755)


def test_killed_export_leaves_no_half_written_tree(labeled_ws, tmp_path):
    ws = copy_ws(labeled_ws, tmp_path / "ws")
    out = tmp_path / "E"
    # slow the copy down so the kill lands mid-way: every crop copy sleeps 0.2 s
    code = (
        "import shutil, time\n"
        "orig = shutil.copyfile\n"
        "def slow(*a, **k):\n"
        "    time.sleep(0.2)\n"
        "    return orig(*a, **k)\n"
        "shutil.copyfile = slow\n"
        "from labeler.cli import main\n"
        "main()\n"
    )
    args = ["export", "-w", str(ws), "--out", str(out), "--persons", "image"]
    proc = subprocess.Popen([sys.executable, "-c", code, *args])
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            staged = [p for p in tmp_path.iterdir() if p.name.startswith(".E.")]
            if staged and list(staged[0].rglob("*.jpg")):
                break
            time.sleep(0.05)
        else:
            pytest.fail("the export never started writing")
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
    assert not out.exists()  # no half-written ImageFolder where the user looks
    # the next export (a leftover hidden stage folder does not get in its way) is complete
    res = run_cli(*args)
    assert res.exit_code == 0, res.output
    man = pd.read_csv(out / "manifest.csv")
    assert all((out / f).is_file() for f in man["file"])
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".E.")]
