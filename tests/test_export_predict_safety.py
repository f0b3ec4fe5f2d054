"""The smaller items of issue #22, each on files the test writes:

- ``labeler predict`` on a planted bad ``head.npz`` / ``best.pt``: one line naming the file,
  no traceback, nothing executed;
- the export folder gets the normal umask-derived mode (not 0700);
- a read-only workspace can be exported (export only reads it; nothing is written into it);
- a full disk during export names the target file in ``--out``, not the source crop.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tinyws
from click.testing import CliRunner
from PIL import Image

from labeler.cli import cli

#: capabilities that let root write where the mode bits say no (dropped to make root honest)
ROOT_OVERRIDES = "-dac_override,-dac_read_search,-fowner,-linux_immutable"


def labeler_cmd(*args: str) -> list[str]:
    return [sys.executable, "-c", "from labeler.cli import main; main()", *args]


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(stderr: str) -> str:
    lines = [ln for ln in stderr.strip().splitlines() if ln.strip()]
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1, stderr
    return lines[0]


def tree(root: Path) -> dict[str, tuple[int, int, int]]:
    return {
        p.relative_to(root).as_posix(): (p.stat().st_size, p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(root.rglob("*"))
    }


@pytest.fixture
def labeled(tmp_path) -> tinyws.TinyWorkspace:
    t = tinyws.build(tmp_path, {"correct": 8, "no_mask": 8})
    tinyws.label_all(t)
    return t


# --- predict: a planted bad model file ------------------------------------------------------


class _Payload:
    """Unpickling this object runs ``open(marker, 'w')`` (what a crafted checkpoint does)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture
def trained(tmp_path) -> tinyws.TinyWorkspace:
    from labeler.embeddings.embed import cues_workspace

    t = tinyws.build(tmp_path, {"correct": 12, "no_mask": 12})
    cues_workspace(t.ws)
    tinyws.label_all(t)
    res = run("train", "-w", str(t.ws.root), "--features", "cues__face", "--folds", "3")
    assert res.exit_code == 0, res.output
    return t


def _finetune_run(ws, run_id: str, best: bytes | None = None) -> Path:
    """A fine-tune run folder (config.json naming one member ``best.pt``)."""
    head_meta = json.loads(next(ws.models_dir.glob("*/config.json")).read_text())
    run_dir = ws.models_dir / run_id
    run_dir.mkdir()
    meta = {**head_meta, "run_id": run_id, "mode": "finetune", "members": ["best.pt"]}
    (run_dir / "config.json").write_text(json.dumps(meta))
    if best is not None:
        (run_dir / "best.pt").write_bytes(best)
    return run_dir


def test_predict_on_bad_model_files_is_one_line(trained, tmp_path):
    import torch

    ws = trained.ws
    photo = tmp_path / "new.jpg"
    Image.fromarray(tinyws.face_image("correct", np.random.default_rng(5))).save(photo)
    head_run = json.loads((ws.models_dir / "current.json").read_text())["mask_state"]
    head = ws.models_dir / head_run / "head.npz"
    marker = tmp_path / "pwned"

    crafted = _finetune_run(ws, "ft_crafted")
    torch.save({"config": {}, "classes": ["a"], "evil": _Payload(str(marker))}, crafted / "best.pt")
    _finetune_run(ws, "ft_garbage", b"PK\x03\x04 this is not a checkpoint" * 50)
    _finetune_run(ws, "ft_empty", b"")
    foreign = _finetune_run(ws, "ft_foreign")
    torch.save({"weights": torch.zeros(3)}, foreign / "best.pt")  # plain, but not ours

    def predict(model: str) -> subprocess.CompletedProcess:
        out = tmp_path / f"{model}.csv"
        args = ("predict", str(photo), "-w", str(ws.root), "--out", str(out))
        return subprocess.run(
            labeler_cmd(*args, "--model", model, "--detector", "none"),
            capture_output=True,
            text=True,
            timeout=300,
        )

    for run_id in ("ft_crafted", "ft_garbage", "ft_empty", "ft_foreign"):
        proc = predict(run_id)
        assert proc.returncode == 1, proc.stderr
        line = one_line_error(proc.stderr)
        assert str(ws.models_dir / run_id / "best.pt") in line and "labeler train" in line, line
        assert "weights_only" not in line and "safe_globals" not in line, line  # no unsafe advice
    assert not marker.exists()  # the crafted pickle never ran

    good = head.read_bytes()
    np.savez(head, classes=np.array([{"x": 1}], dtype=object))  # a pickled object array
    bad_heads = (head.read_bytes(), b"not a zip at all", good[: len(good) // 2])
    for bad in bad_heads:
        head.write_bytes(bad)
        proc = predict(head_run)
        assert proc.returncode == 1, proc.stderr
        line = one_line_error(proc.stderr)
        assert str(head) in line and "labeler train" in line, line
    head.write_bytes(good)  # control: the good file predicts
    assert predict(head_run).returncode == 0


# --- export: folder mode, read-only workspace, full disk --------------------------------------


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_export_folder_gets_the_umask_mode(labeled, tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "E"
        res = run("export", "-w", str(labeled.ws.root), "--out", str(out), "--persons", "image")
        assert res.exit_code == 0, res.output
        (tmp_path / "control").mkdir()
    finally:
        os.umask(old)
    want = (tmp_path / "control").stat().st_mode & 0o777
    assert want == 0o777 & ~umask
    assert out.stat().st_mode & 0o777 == want  # was 0700 (tempfile.mkdtemp)
    assert (out / "train").stat().st_mode & 0o777 == want


def _read_only_runner(probe_dir: Path) -> list[str]:
    """The command prefix that runs a process the workspace's read-only mode applies to:
    nothing as a normal user; as root, ``setpriv`` dropping the capabilities that override
    file modes (verified on ``probe_dir``), else the test is skipped."""
    if os.geteuid() != 0:
        return []
    setpriv = shutil.which("setpriv")
    if setpriv is None:
        pytest.skip("running as root without setpriv: chmod does not stop root from writing")
    prefix = [setpriv, "--bounding-set", ROOT_OVERRIDES]
    probe = subprocess.run([*prefix, "touch", str(probe_dir / "probe")], capture_output=True)
    if probe.returncode == 0 or (probe_dir / "probe").exists():
        pytest.skip("running as root and cannot drop CAP_DAC_OVERRIDE: chmod is not enforced")
    return prefix


def test_read_only_workspace_can_be_exported(labeled, tmp_path):
    import sqlite3

    from labeler.labels import LabelStore

    src = labeled.ws.root
    n_labeled = len(labeled.truth)
    # a store whose newest event is only in its WAL (copied while another connection held
    # the store open, as an unclean shutdown leaves it)
    flip = labeled.truth.index[0]
    holder = sqlite3.connect(src / "labels.db")
    try:
        holder.execute("SELECT COUNT(*) FROM events").fetchone()
        LabelStore(src / "labels.db").assign(
            [flip], "mask_state", "no_mask", annotator="x", source="single"
        )
        ws = tmp_path / "ro_ws"
        shutil.copytree(src, ws)
    finally:
        holder.close()
    Path(f"{ws}/labels.db-shm").unlink(missing_ok=True)
    assert Path(f"{ws}/labels.db-wal").stat().st_size > 0
    main_only = tmp_path / "main_only.db"
    shutil.copyfile(ws / "labels.db", main_only)
    assert LabelStore(main_only).current_values("mask_state")[flip] == "correct"
    paths = [ws, *ws.rglob("*")]
    modes = {p: p.stat().st_mode for p in paths}
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    out = tmp_path / "E"
    try:
        for p in paths:
            os.chmod(p, modes[p] & ~0o222)
        before = tree(ws)
        prefix = _read_only_runner(ws)
        proc = subprocess.run(
            [
                *prefix,
                *labeler_cmd("export", "-w", str(ws), "--out", str(out), "--persons", "image"),
            ],
            capture_output=True,
            text=True,
            timeout=300,
            env={**os.environ, "TMPDIR": str(tmpdir)},
        )
        assert proc.returncode == 0, proc.stderr
        assert tree(ws) == before  # nothing written into the workspace
    finally:
        for p in reversed(paths):
            os.chmod(p, modes[p])
    man = pd.read_csv(out / "manifest.csv")
    assert len(man) == n_labeled
    assert man.set_index("face_id").loc[flip, "mask_state"] == "no_mask"  # the WAL's event
    assert all((out / f).is_file() for f in man["file"])
    assert list(tmpdir.iterdir()) == []  # the private copy of the store is gone


def _fsize_limit(limit_bytes: int):
    def apply() -> None:
        import resource

        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return apply


def test_export_on_a_full_disk_names_the_target(labeled, tmp_path):
    ws = labeled.ws.root
    crop = sorted((ws / "crops").rglob("*.jpg"))[-1]
    noise = np.random.default_rng(0).integers(0, 255, (320, 320, 3), dtype=np.uint8)
    Image.fromarray(noise).save(crop, quality=100)
    assert crop.stat().st_size > 150_000
    out = tmp_path / "E"
    proc = subprocess.run(
        labeler_cmd("export", "-w", str(ws), "--out", str(out), "--persons", "image"),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_fsize_limit(100_000),
    )
    assert proc.returncode == 1
    line = one_line_error(proc.stderr)
    assert "File too large" in line and "free disk space" in line, line
    assert str(crop) not in line  # not the source it read
    assert f"{out}/" in line and f"{crop.stem}.jpg" in line, line  # the file it was writing
    assert ".tmp" not in line  # the hidden stage folder is an internal name
    assert not out.exists()
