"""Issue #30: what a killed or mistaken command leaves behind, on small real workspaces.

- ``labeler export --force`` replaces only a previous export (known by its export.json, its
  split folders holding only what its manifest lists); any other folder is refused, nothing
  deleted;
- kill -9 at many instants of ``labeler export --force`` over a previous export, of
  ``labeler train`` over a run of the same id and of a process saving cluster runs: the old or
  the new copy is complete every time, and the next run succeeds and cleans up;
- a damaged ``vectors.npy`` / ``knn.npz`` is one line naming the file and the fix;
- a refused pickle never suggests ``weights_only=False``;
- CSV cells a spreadsheet would run are escaped, and read back as written.

The kill instants are chosen from an uninterrupted run of the same command, timed by the
test: a few while the process starts, the rest spread over the span where it writes. The
export runs on a slow disk (each file copy and delete takes 4 ms more, as on a network
share; the real operation still runs), so the write and delete phases are long enough
for kills to land in them.
"""

from __future__ import annotations

import hashlib
import json
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
import tinyws
from click.testing import CliRunner

from labeler.cli import cli

PERSONS = ("--person-pattern", r"^(person_\d+)/")
SPLITS = ("train", "val", "test")

#: a slow disk for the child process: copies and deletes take 4 ms more (then run for real)
SLOW_DISK = (
    "import os, shutil, time\n"
    "_copy, _unlink = shutil.copyfile, os.unlink\n"
    "def copyfile(*a, **k):\n"
    "    time.sleep(0.004)\n"
    "    return _copy(*a, **k)\n"
    "def unlink(*a, **k):\n"
    "    time.sleep(0.004)\n"
    "    return _unlink(*a, **k)\n"
    "shutil.copyfile, os.unlink = copyfile, unlink\n"
)
MAIN = "from labeler.cli import main\nmain()\n"


def labeler_cmd(*args: str, preamble: str = "") -> list[str]:
    return [sys.executable, "-c", preamble + MAIN, *args]


def run(*args: str):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line(output: str) -> str:
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    assert "Traceback" not in output, output
    assert len(lines) == 1, output
    return lines[0]


def tree_digest(root: Path) -> dict[str, str]:
    return {
        p.relative_to(root).as_posix(): hashlib.sha1(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def kill_instants(total: float, start: float, n: int = 10, early: int = 2) -> list[float]:
    """``early`` instants while the process starts up (before ``start``), then ``n`` spread
    over [start, 1.05 total] (where it writes, switches and cleans up; a killed run is often
    a little slower than the timed one), in seconds after its start."""
    first = np.linspace(0.2, 0.8, early) * start if early else []
    return [round(float(t), 2) for t in (*first, *np.linspace(start, 1.05 * total, n))]


def kill_at(cmd: list[str], delay: float, **kw) -> int | None:
    """Start ``cmd``, SIGKILL it after ``delay`` s; the exit code when it ended before."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)
    try:
        try:
            return proc.wait(delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait(30)
            return None
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)


def kill_series(cmd, instants, *, reset, check, old: str, new: str) -> list[tuple]:
    """Kill ``cmd`` at each of ``instants`` (``reset`` before each run, ``check`` after it
    asserts a complete copy and names it: ``old`` or ``new``). A loaded machine shifts the
    timings, so when no kill landed after the switch (the new copy complete, the process
    still cleaning up), kill instants are bisected between the last kill before the switch
    and the first run that finished, up to 5 more. Returns (delay, exit code or None when
    killed, copy)."""
    outcomes = []

    def one(delay: float) -> tuple[int | None, str]:
        reset()
        code = kill_at(cmd, delay)
        outcomes.append((round(delay, 2), code, check()))
        return outcomes[-1][1:]

    for delay in instants:
        one(delay)
    lo = max([d for d, c, o in outcomes if c is None and o == old], default=0.0)
    hi = min([d for d, c, o in outcomes if c is not None or o == new], default=1.3 * instants[-1])
    for _ in range(5):
        if any(c is None and o == new for _, c, o in outcomes):
            break
        code, _ = one((lo + hi) / 2)
        lo, hi = (lo, (lo + hi) / 2) if code is not None else ((lo + hi) / 2, hi)
    return outcomes


def timed(cmd: list[str], **kw) -> tuple[float, float]:
    """(start, seconds) of an uninterrupted run of ``cmd`` (it must succeed)."""
    t0 = time.time()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, proc.stderr
    return t0, time.time() - t0


@pytest.fixture
def tiny(tmp_path) -> tinyws.TinyWorkspace:
    t = tinyws.build(tmp_path, {"correct": 40, "no_mask": 40, "on_chin": 20}, faces_per_person=2)
    tinyws.label_all(t)
    return t


# --- export --force replaces only an export ----------------------------------------------


def test_force_into_a_folder_that_is_not_an_export_is_refused_nothing_deleted(tiny, tmp_path):
    ws = str(tiny.ws.root)
    mine = tmp_path / "mine"
    (mine / "train" / "cats").mkdir(parents=True)
    (mine / "train" / "cats" / "my_only_copy.png").write_bytes(b"\x89PNG only copy")
    (mine / "notes.txt").write_text("mine")
    before = tree_digest(mine)
    for force in (("--force",), ()):
        res = run("export", "-w", ws, "--out", str(mine), *PERSONS, *force)
        assert res.exit_code == 1
        line = one_line(res.output)
        assert str(mine) in line and "not a labeler export" in line, line
        assert "nothing was deleted" in line and "--force" not in line, line
        assert tree_digest(mine) == before
    # an export.json that is not labeler's does not make a folder an export
    (mine / "export.json").write_text('{"name": "my dataset"}')
    res = run("export", "-w", ws, "--out", str(mine), *PERSONS, "--force")
    assert res.exit_code == 1 and "not written by labeler export" in one_line(res.output)
    assert (mine / "train" / "cats" / "my_only_copy.png").read_bytes() == b"\x89PNG only copy"

    # a previous export with a file added to train/ afterwards: refused, the file named
    out = tmp_path / "E"
    assert run("export", "-w", ws, "--out", str(out), *PERSONS).exit_code == 0
    added = out / "train" / "correct" / "extra_photo.jpg"
    added.write_bytes(b"user's")
    before = tree_digest(out)
    res = run("export", "-w", ws, "--out", str(out), *PERSONS, "--force", "--seed", "3")
    assert res.exit_code == 1
    assert str(added) in one_line(res.output) and "is not in its manifest" in res.output
    assert tree_digest(out) == before
    added.unlink()

    # a previous export: replaced with --force, what the user keeps beside it stays (a file
    # browser's .DS_Store in a class folder does not make it someone else's)
    (out / "notes.txt").write_text("about this dataset")
    (out / "train" / "correct" / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    res = run("export", "-w", ws, "--out", str(out), *PERSONS, "--force", "--seed", "3")
    assert res.exit_code == 0, res.output
    assert (out / "notes.txt").read_text() == "about this dataset"
    check_export(out)
    assert json.loads((out / "export.json").read_text())["config"]["seed"] == 3
    assert not [p for p in tmp_path.iterdir() if p.name.startswith((".E.", ".mine."))]


# --- kill -9: export --force over a previous export ---------------------------------------


def check_export(out: Path) -> dict[str, str]:
    """``out`` is one complete export: export.json rows == manifest rows == files present,
    each listed file there and nothing else in the split folders. Returns its digest."""
    from labeler._csv import read_csv

    meta = json.loads((out / "export.json").read_text())
    man = read_csv(out / "manifest.csv", dtype=str, keep_default_na=False)
    files = {
        p.relative_to(out).as_posix()
        for s in SPLITS
        if (out / s).is_dir()
        for p in (out / s).rglob("*")
        if p.is_file()
    }
    assert meta["rows"] == len(man) == len(files), (meta["rows"], len(man), len(files))
    assert set(man["file"]) == files
    return tree_digest(out)


def test_killed_export_force_leaves_the_old_or_the_new_export(tiny, tmp_path):
    ws = str(tiny.ws.root)
    old_ref, new_ref, out = tmp_path / "old", tmp_path / "new", tmp_path / "E"
    assert run("export", "-w", ws, "--out", str(old_ref), *PERSONS, "--seed", "0").exit_code == 0
    assert run("export", "-w", ws, "--out", str(new_ref), *PERSONS, "--seed", "1").exit_code == 0
    old, new = check_export(old_ref), check_export(new_ref)
    assert old != new
    cmd = labeler_cmd(
        "export", "-w", ws, "--out", str(out), *PERSONS, "--seed", "1", "--force",
        preamble=SLOW_DISK,
    )  # fmt: skip
    shutil.copytree(old_ref, out)
    t0, total = timed(cmd)
    assert check_export(out) == new
    writes = min(p.stat().st_mtime for p in (out / "train").rglob("*.jpg")) - t0

    def reset() -> None:
        shutil.rmtree(out)
        shutil.copytree(old_ref, out)

    def check() -> str:
        digest = check_export(out)
        assert digest in (old, new)
        return "old" if digest == old else "new"

    instants = kill_instants(total, max(0.0, writes - 0.1), n=9, early=2)
    outcomes = kill_series(cmd, instants, reset=reset, check=check, old="old", new="new")
    print(f"export: run {total:.2f} s, writes from {writes:.2f} s; kills: {outcomes}")
    killed = {o for _, c, o in outcomes if c is None}
    assert killed == {"old", "new"}  # kills landed before and after the switch
    # the next run succeeds and removes what the killed ones left
    shutil.rmtree(out)
    shutil.copytree(old_ref, out)
    timed(cmd)
    assert check_export(out) == new
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".E.")]


def dead_pid() -> int:
    proc = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True
    )
    return int(proc.stdout)


def test_switch_by_two_renames_is_recovered_after_a_kill_between_them(tiny, tmp_path):
    """Filesystems without RENAME_EXCHANGE: the previous folder is renamed aside, then the
    new one in. A kill between the two leaves the previous export whole under a hidden name;
    the next export puts it back before anything else, then replaces it."""
    from labeler import _swap

    ws = str(tiny.ws.root)
    out, new_ref = tmp_path / "E", tmp_path / "new"
    assert run("export", "-w", ws, "--out", str(out), *PERSONS).exit_code == 0
    assert run("export", "-w", ws, "--out", str(new_ref), *PERSONS, "--seed", "1").exit_code == 0
    old, new = check_export(out), check_export(new_ref)
    # the fallback itself: the new folder in place, the previous one returned to discard
    stage = _swap.make_stage(out)
    shutil.copytree(new_ref, stage, dirs_exist_ok=True)
    prev = _swap.publish_by_renames(stage, out)
    assert check_export(out) == new and check_export(prev) == old
    # what a process killed between the two renames leaves: no E, the old one hidden beside
    shutil.rmtree(out)
    os.rename(prev, tmp_path / f".E.{dead_pid()}.0123abcd.prev")
    half = tmp_path / f".E.{dead_pid()}.4567cdef.tmp"  # its stage, complete or not
    shutil.copytree(new_ref / "train", half / "train")
    assert _swap.recover(out) is not None and check_export(out) == old
    os.rename(out, tmp_path / f".E.{dead_pid()}.0123abcd.prev")
    res = run("export", "-w", ws, "--out", str(out), *PERSONS, "--seed", "1", "--force")
    assert res.exit_code == 0, res.output
    assert check_export(out) == new
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".E.")]


# --- kill -9: train over a run of the same id ---------------------------------------------


def check_models(ws, ref_heads: dict[str, str]) -> str:
    """Every run folder is complete (config, report, head that loads, confusion PNG) and its
    files belong together; current.json names one. Returns the kind of head of run r1."""
    from PIL import Image

    from labeler.train import load_model

    runs = [d for d in ws.models_dir.iterdir() if d.is_dir() and not d.name.startswith(".")]
    assert [d.name for d in runs] == ["r1"]
    d = runs[0]
    meta = json.loads((d / "config.json").read_text())
    assert json.loads((d / "report.json").read_text()) == meta["report"]
    digest = hashlib.sha1((d / "head.npz").read_bytes()).hexdigest()
    assert digest == ref_heads[meta["head"]], "head.npz of one training, config.json of another"
    with Image.open(d / "confusion.png") as im:
        im.load()
    model = load_model(ws, "r1")
    assert model.head is not None and model.meta["head"] == meta["head"]
    assert json.loads((ws.models_dir / "current.json").read_text()) == {"mask_state": "r1"}
    return meta["head"]


def test_killed_train_leaves_the_old_or_the_new_model(tiny, tmp_path):
    ws = tiny.ws
    base = ("train", "-w", str(ws.root), "--features", tinyws.FEATURE_KEY, "--folds", "2")
    base += (*PERSONS, "--no-label-errors", "--run", "r1")
    res = run(*base, "--head", "logreg")  # the old model, r1
    assert res.exit_code == 0, res.output

    def head_digest() -> str:
        return hashlib.sha1((ws.models_dir / "r1" / "head.npz").read_bytes()).hexdigest()

    ref_heads = {"logreg": head_digest()}
    keep = tmp_path / "models_old"
    shutil.copytree(ws.models_dir, keep)
    cmd = labeler_cmd(*base, "--head", "mlp")  # the new model trained again as r1
    t0, total = timed(cmd)
    ref_heads["mlp"] = head_digest()
    assert check_models(ws, ref_heads) == "mlp"
    writes = (ws.models_dir / "r1" / "head.npz").stat().st_mtime - t0

    def reset() -> None:
        shutil.rmtree(ws.models_dir)
        shutil.copytree(keep, ws.models_dir)

    instants = kill_instants(total, max(0.0, writes - 0.3), n=5, early=1)
    outcomes = kill_series(
        cmd,
        instants,
        reset=reset,
        check=lambda: check_models(ws, ref_heads),
        old="logreg",
        new="mlp",
    )
    print(f"train: run {total:.2f} s, writes from {writes:.2f} s; kills: {outcomes}")
    assert {o for _, c, o in outcomes if c is None} == {"logreg", "mlp"}
    # the next training succeeds; no stage is left
    timed(cmd)
    assert check_models(ws, ref_heads) == "mlp"
    assert not [p.name for p in ws.models_dir.iterdir() if p.name.startswith(".")]


# --- kill -9: cluster runs saved one after another ----------------------------------------

SAVE_RUNS = """
import sys
import numpy as np
from labeler.cluster.inputs import load_cluster_features
from labeler.cluster.knn import knn_graph
from labeler.cluster.store import save_run
from labeler.cluster.types import ClusterArtifacts, ClusterResult
from labeler.embeddings.store import l2_normalize
from labeler.workspace import Workspace

ws = Workspace.open(sys.argv[1])
ids, X, spec = load_cluster_features(ws, sys.argv[2])
V = l2_normalize(X)
graph = knn_graph(V, k=10)
n = len(ids)
for i in range(int(sys.argv[3])):
    labels = np.argmax(V[:, i % 4 : i % 4 + 3], axis=1).astype(np.int32)
    result = ClusterResult(ids, labels, np.zeros(n, np.float32), V[:, :2], labels,
                           {"feature_spec": spec, "iteration": i})
    save_run(ws, result, artifacts=ClusterArtifacts(ids, V, graph, np.arange(n), None))
"""


def check_cluster_runs(ws) -> str:
    """current.json names a run whose every file loads, rows agreeing; returns its id."""
    from labeler.cluster.store import current_run_id, load_artifacts, load_run

    run_id = current_run_id(ws)
    result, art = load_run(ws), load_artifacts(ws)
    n = len(ws.faces())
    assert len(result.face_ids) == len(art.vectors) == len(art.graph.indices) == n
    for d in ws.clusters_dir.iterdir():
        if d.is_dir() and not d.name.startswith("."):
            names = {"assignments.parquet", "clusters.parquet", "config.json", "vectors.npy"}
            assert names | {"knn.npz"} <= {p.name for p in d.iterdir()}, d
    return run_id


def test_killed_cluster_saves_leave_a_complete_current_run(tiny, tmp_path):
    ws = tiny.ws
    cmd = [sys.executable, "-c", SAVE_RUNS, str(ws.root), tinyws.FEATURE_KEY]
    t0, total = timed([*cmd, "1"])
    first = check_cluster_runs(ws)
    t0, total = timed([*cmd, "30"])
    made = [p.stat().st_ctime for p in ws.clusters_dir.iterdir() if p.stat().st_ctime >= t0]
    writes = min(made) - t0  # the first save of this run
    seen = {first, check_cluster_runs(ws)}
    outcomes = []
    for delay in kill_instants(total, writes, n=6, early=1):
        code = kill_at([*cmd, "30"], delay)
        run_id = check_cluster_runs(ws)
        outcomes.append((delay, code, "same" if run_id in seen else "new"))
        seen.add(run_id)
    print(f"cluster saves: run {total:.2f} s, saves from {writes:.2f} s; kills: {outcomes}")
    timed([*cmd, "1"])
    check_cluster_runs(ws)
    assert not [p.name for p in ws.clusters_dir.iterdir() if p.is_dir() and p.name[0] == "."]


# --- damaged cluster files -------------------------------------------------------------


def test_damaged_vectors_or_knn_is_one_line_naming_the_file(tiny, tmp_path):
    from labeler.cluster.inputs import load_cluster_features
    from labeler.cluster.knn import knn_graph
    from labeler.cluster.store import load_vectors, save_run
    from labeler.cluster.types import ClusterArtifacts, ClusterResult
    from labeler.embeddings.store import l2_normalize
    from labeler.errors import WorkspaceError

    ws = tiny.ws
    ids, X, spec = load_cluster_features(ws, tinyws.FEATURE_KEY)
    V = l2_normalize(X)
    labels = np.argmax(V[:, :3], axis=1).astype(np.int32)
    n = len(ids)
    result = ClusterResult(
        ids, labels, np.zeros(n, np.float32), V[:, :2], labels, {"feature_spec": spec}
    )
    run_id = save_run(
        ws, result, artifacts=ClusterArtifacts(ids, V, knn_graph(V, k=10), np.arange(n), None)
    )
    d = ws.clusters_dir / run_id
    good = {name: (d / name).read_bytes() for name in ("vectors.npy", "knn.npz")}
    damages = {
        "cut short": lambda b: b[: len(b) // 2],
        "empty": lambda b: b"",
        "overwritten": lambda b: b"\x00garbage" * 40,
    }
    for name in good:
        for how, damage in damages.items():
            (d / name).write_bytes(damage(good[name]))
            res = run("place", "-w", str(ws.root))
            assert res.exit_code == 1, (name, how, res.output)
            line = one_line(res.output)
            assert str(d / name) in line and "damaged" in line, line
            assert f"labeler cluster -w {ws.root}" in line, line
            assert "allow_pickle" not in line and "trust" not in line, line
            if name == "vectors.npy":  # the app's "more like this" loads them too
                with pytest.raises(WorkspaceError, match="labeler cluster -w"):
                    load_vectors(ws)
        (d / name).write_bytes(good[name])
    res = run("place", "-w", str(ws.root))
    assert res.exit_code == 0 and "no new faces" in res.output


# --- pickle refusal ------------------------------------------------------------------------


class _Payload:
    """Unpickling this object runs ``open(marker, 'w')`` (what a crafted checkpoint does)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_refusal_never_suggests_weights_only_false(tmp_path):
    import torch

    from labeler.embeddings import get_backbone
    from labeler.embeddings.types import BackboneError

    marker = tmp_path / "pwned"
    crafted, garbage = tmp_path / "crafted.pth", tmp_path / "garbage.pth"
    torch.save({"conv.weight": torch.zeros(1), "evil": _Payload(str(marker))}, crafted)
    garbage.write_bytes(b"\x00garbage" * 10)  # torch's refusal of this advises it as well
    for path in (crafted, garbage):
        with pytest.raises(BackboneError) as info:
            get_backbone("timm:test_efficientnet", weights=path, runtime="torch", device="cpu")
        msg = str(info.value)
        assert len(msg.splitlines()) == 1 and str(path) in msg, msg
        assert "weights_only" not in msg and "safe_globals" not in msg, msg
        assert "still be loaded" not in msg and "Weights only" not in msg, msg
        assert "trust" in msg and "torch.save(model.state_dict(), FILE)" in msg, msg
    with pytest.raises(BackboneError, match=r"code objects \(a pickled \w+\.open\)"):
        get_backbone("timm:test_efficientnet", weights=crafted, runtime="torch", device="cpu")
    assert not marker.exists()


# --- CSV cells a spreadsheet would run ------------------------------------------------------

FORMULA = '=HYPERLINK("https:example.com","open").jpg'  # no "/": one file name


def test_csv_formula_cells_are_escaped_and_read_back(tmp_path):
    from labeler._csv import read_csv
    from labeler.export.manifest import ExportConfig, labels_manifest
    from labeler.labels import LabelStore

    t = tinyws.build(tmp_path, {"correct": 6, "no_mask": 6}, faces_per_person=2)
    tinyws.label_all(t)
    ws = t.ws
    images = ws.images()
    # a photo named like a formula, at the top of the ingested folder
    first = images.index[0]
    src = t.source / images.loc[first, "path"]
    src.rename(t.source / FORMULA)
    images.loc[first, "path"] = FORMULA
    ws.write_images(images)
    faces = ws.faces()
    faces.loc[0, "x0"] = -3.5  # a number stays a number
    ws.write_faces(faces)
    fid = faces.loc[faces["image_id"] == images.loc[first, "image_id"], "face_id"].iloc[0]
    LabelStore(ws.labels_db).assign(
        [fid], "mask_state", "no_mask", annotator="@evil", source="single"
    )

    out = tmp_path / "m.csv"
    res = run(
        "export", "-w", str(ws.root), "--out", str(out), "--format", "csv", "--persons", "image"
    )
    assert res.exit_code == 0, res.output
    text = out.read_text()
    assert "\n'=HYPERLINK(" in text.replace('"', "") and ",'@evil," in text
    raw = pd.read_csv(out, keep_default_na=False)
    assert not raw["path"].str.startswith(("=", "+", "-", "@")).any()
    assert not raw["annotator"].str.startswith(("=", "+", "-", "@")).any()
    assert (raw["x0"] == -3.5).sum() == (faces["x0"] == -3.5).sum()  # numbers untouched
    # read back: the values written (the manifest labeler computes)
    back = read_csv(out, keep_default_na=False)
    want, _ = labels_manifest(ws, ExportConfig(persons="image"))
    for col in ("path", "annotator", "face_id", "mask_state"):
        assert back[col].astype(str).tolist() == want[col].astype(str).tolist(), col
    assert FORMULA in set(back["path"]) and "@evil" in set(back["annotator"])
    # labeler reads a manifest back as --person-csv: by face_id, every face covered
    res = run(
        "export", "-w", str(ws.root), "--out", str(tmp_path / "again.csv"), "--format", "csv",
        "--person-csv", str(out), "--persons", "column",
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    again = read_csv(tmp_path / "again.csv", keep_default_na=False)

    def groups(df: pd.DataFrame) -> set[frozenset]:
        return {frozenset(g) for _, g in df.groupby("person")["face_id"]}

    assert groups(again) == groups(back)  # the same persons, found by face_id
    # the ImageFolder export's manifest.csv is escaped the same way
    folder = tmp_path / "E"
    assert (
        run("export", "-w", str(ws.root), "--out", str(folder), "--persons", "image").exit_code == 0
    )
    assert "'=HYPERLINK(" in (folder / "manifest.csv").read_text().replace('"', "")
    check_export(folder)


def test_predict_csv_escapes_a_formula_file_name(tmp_path):
    from labeler._csv import read_csv
    from labeler.embeddings.embed import cues_workspace

    t = tinyws.build(tmp_path, {"correct": 8, "no_mask": 8})
    cues_workspace(t.ws)
    tinyws.label_all(t)
    res = run(
        "train",
        "-w",
        str(t.ws.root),
        "--features",
        "cues__face",
        "--folds",
        "2",
        "--persons",
        "image",
        "--no-label-errors",
    )
    assert res.exit_code == 0, res.output
    photos = tmp_path / "new"
    photos.mkdir()
    from PIL import Image

    Image.fromarray(tinyws.face_image("correct", np.random.default_rng(5))).save(photos / FORMULA)
    out = tmp_path / "pred.csv"
    res = run("predict", str(photos), "-w", str(t.ws.root), "--out", str(out), "--detector", "none")
    assert res.exit_code == 0, res.output
    raw = pd.read_csv(out, keep_default_na=False)
    assert raw["path"].tolist() == ["'" + FORMULA]
    assert read_csv(out, keep_default_na=False)["path"].tolist() == [FORMULA]
    assert os.path.getsize(out) > 0
