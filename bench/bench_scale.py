"""The whole job after embedding, at full size (issue #29): every stage a user runs once the
photos are embedded, each as its own process through the real CLI, default options.

How the workspace is made (said again in the output):

1. A *base* workspace made by the shipped tool: ``labeler run PHOTOS -w BASE --no-cluster`` over
   real shared photos (``../shared/data/realmasks/images``: 2,009 real crops from web scenes;
   ``../shared/data/maskedfacenet_1024/images``: 200 photos of 1024x1024 like the user's
   133k). Cached under ``--work`` (default ``/tmp/labeler_scale``) and reused between runs.
2. For each size N a *replica* of it with N faces: the base's images repeated (replica r of
   image ``i`` is a new image id, ``sha1(i/r)[:16]``, whose photo is a hard link of the
   original under ``photos_N/rNNN/``), faces with new face ids, crops hard-linked, and every
   feature block replicated through the store's writer (``save_vectors``) with Gaussian noise
   of ``--noise`` (default 0.05) of each column's standard deviation on the copies (replica 0
   is the base itself), so copies are close but not exact duplicates; the base's
   ``config.json`` of each block is kept (same fingerprint). images, faces, detect_log and
   every block align to one face_id set (checked through the normal loaders).
3. Labels per case, written through ``LabelStore.assign``: **A** every face labeled with the
   truth of its source face (``labels.csv`` column ``state``; realmasks' ``incorrect`` becomes
   ``nose_exposed``), in events of at most 480 faces of one value, as bulk-labeling every
   group leaves a workspace; **B** 2,000 random faces labeled, in events of at most 100.
   Each case gets its own copy of the replica (``cp -al``: files shared until rewritten, and
   every labeler writer replaces files by rename).
4. The stages, in this order, each a child process (``python -c 'from labeler.cli import
   main; main()' STAGE -w WS ...``), timed with ``os.wait4``: wall, CPU (user+sys of the
   child and the children it reaped), peak RSS (the child's ``VmHWM`` polled, see
   :func:`_wait`; ``ru_maxrss`` is kept too but on Linux it includes the bench's own RSS at
   fork), exit code, the last lines of stderr, the load average before it. A stage past its timeout is killed and recorded
   as timed out.

   ``cluster``, ``suggest``, ``train``, ``train-noid`` (``train --persons image``: no dlib
   identity descriptors), ``export`` (``--out`` a fresh folder), ``export-noid``
   (``export --persons image``), ``predict`` (2,000 new photos: perturbed copies of the
   1024x1024 shared photos, made once and cached).

``--profile STAGE,...`` runs those stages once more under ``python -m cProfile`` (after the
timed run, never instead of it) and writes the top costs to ``bench/results/``.

Results merge into ``--json`` (default ``bench/results/scale.json``; rows with the same stage,
size and case are replaced) and ``--md`` (``scale.md``) is written from the merged rows, so
sizes and stages can be run in separate invocations.

    .venv/bin/python bench/bench_scale.py --sizes 3000,10000 --cases A,B
    .venv/bin/python bench/bench_scale.py --sizes 133000 --cases A --stages export \\
        --timeouts export=1200
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
RESULTS = ROOT / "bench" / "results"
BASE_SETS = (  # (folder name in the base photos, shared set, label mapping to MASK_STATES)
    ("realmasks", SHARED / "realmasks", {"incorrect": "nose_exposed"}),
    ("mfn1024", SHARED / "maskedfacenet_1024", {}),
)
STAGES = ("cluster", "suggest", "train", "train-noid", "export", "export-noid", "predict")
DEFAULT_STAGES = ("cluster", "suggest", "train", "export", "predict")
CASES = {"A": "every face labeled", "B": "2,000 faces labeled"}
CASE_B_LABELED = 2_000
PREDICT_PHOTOS = 2_000
TARGET_WALL_S = 30 * 60
TARGET_PEAK_GB = 8.0
LABELER = ("-c", "from labeler.cli import main; main()")

log = logging.getLogger("bench_scale")


# --- results ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class StageResult:
    """One stage run as a child process."""

    stage: str
    faces: int
    case: str
    command: str
    wall_s: float
    cpu_s: float
    user_s: float
    sys_s: float
    peak_gb: float  # polled VmHWM / group VmRSS (see _wait)
    ru_maxrss_gb: float  # os.wait4's, which on Linux includes the bench's RSS at fork
    exit_code: int | None  # None when killed at the timeout
    timed_out: bool
    timeout_s: float | None
    killed_rss_gb: float | None  # killed when its process group's RSS passed --max-rss-gb
    load_before: tuple[float, float, float]
    stderr_tail: tuple[str, ...]
    stdout_tail: tuple[str, ...]

    @property
    def status(self) -> str:
        if self.killed_rss_gb is not None:
            return f"killed at {self.killed_rss_gb:.1f} GB RSS after {self.wall_s:.0f} s"
        if self.timed_out:
            return f"timed out after {self.wall_s:.0f} s"
        return "ok" if self.exit_code == 0 else f"exit {self.exit_code}"


@dataclass(frozen=True)
class Replica:
    """A replicated workspace of ``faces`` faces (see the module doc)."""

    root: Path
    faces: int
    images: int
    base_faces: int
    replicas: int
    noise: float
    build_s: float


# --- the base workspace ----------------------------------------------------------------------


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def run_labeler(args: list[str], *, env: dict[str, str], cwd: Path | None = None) -> None:
    """Run the labeler CLI to completion (a set-up step, not a measured one)."""
    cmd = [sys.executable, *LABELER, *args]
    log.info("running %s", " ".join(args))
    proc = subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr[-2000:]}")


def build_base(work: Path, env: dict[str, str]) -> tuple[Path, dict]:
    """The base workspace (cached at ``work/base_ws``): ``labeler run --no-cluster`` over the
    shared sets. Returns its path and how it was made."""
    ws, photos = work / "base_ws", work / "base_photos"
    meta_path = work / "base_ws.json"
    if meta_path.is_file() and (ws / "faces.parquet").is_file():
        return ws, json.loads(meta_path.read_text())
    missing = [str(d) for _, d, _ in BASE_SETS if not (d / "images").is_dir()]
    if missing:
        raise SystemExit(f"shared data missing: {', '.join(missing)}")
    shutil.rmtree(ws, ignore_errors=True)
    shutil.rmtree(photos, ignore_errors=True)
    for name, data, _ in BASE_SETS:
        (photos / name).mkdir(parents=True)
        for f in sorted((data / "images").iterdir()):
            _link_or_copy(f, photos / name / f.name)
    t = time.perf_counter()
    run_labeler(["run", str(photos), "-w", str(ws), "--no-cluster", "--no-progress"], env=env)
    meta = {
        "command": f"labeler run {photos} -w {ws} --no-cluster",
        "sets": [str(d / "images") for _, d, _ in BASE_SETS],
        "build_s": round(time.perf_counter() - t, 1),
    }
    meta_path.write_text(json.dumps(meta, indent=1))
    return ws, meta


def base_truth(ws_root: Path) -> dict[str, str]:
    """``{face_id: mask_state}`` of the base faces: the truth of their source photo."""
    import pandas as pd

    from labeler.workspace import Workspace

    ws = Workspace.open(ws_root)
    images = ws.images().set_index("image_id")
    truth: dict[str, str] = {}
    for name, data, mapping in BASE_SETS:
        table = pd.read_csv(data / "labels.csv")
        for f, state in zip(table["file"], table["state"], strict=True):
            truth[f"{name}/{f}"] = mapping.get(state, state)
    faces = ws.faces()
    paths = faces["image_id"].map(images["path"])
    out = {fid: truth[p] for fid, p in zip(faces["face_id"], paths, strict=True) if p in truth}
    if len(out) != len(faces):
        log.warning("%d base faces have no truth label", len(faces) - len(out))
    return out


# --- replication -----------------------------------------------------------------------------


def replica_image_id(image_id: str, r: int) -> str:
    """The id of replica ``r`` of a base image (replica 0 is the image itself)."""
    return image_id if r == 0 else hashlib.sha1(f"{image_id}/{r}".encode()).hexdigest()[:16]


def replicate(
    base_root: Path, out: Path, n_faces: int, *, noise: float = 0.05, seed: int = 0
) -> Replica:
    """A workspace at ``out`` with ``n_faces`` faces replicated from the base (module doc).

    Replica ``r`` copies every base face in faces order; the first ``n_faces`` are kept.
    ``out/bench_source.parquet`` names the base face each face copies."""
    import pandas as pd

    from labeler.detect.pipeline import DETECT_LOG_SCHEMA, read_detect_log
    from labeler.embeddings.store import (
        CONFIG_NAME,
        embedding_dir,
        list_embeddings,
        load_embeddings,
        save_vectors,
    )
    from labeler.workspace import Workspace, write_table

    t0 = time.perf_counter()
    base = Workspace.open(base_root)
    b_faces, b_images, b_log = base.faces(), base.images(), read_detect_log(base)
    n_rep = math.ceil(n_faces / len(b_faces))
    shutil.rmtree(out, ignore_errors=True)
    photos = out.parent / f"{out.name}_photos"
    shutil.rmtree(photos, ignore_errors=True)
    ws = Workspace.open(out, create=True)
    ws.add_root(photos)
    b_roots = base.roots()

    parts = []
    for r in range(n_rep):
        fr = b_faces.copy()
        fr["image_id"] = [replica_image_id(i, r) for i in b_faces["image_id"]]
        fr["face_id"] = fr["image_id"] + "_" + fr["face_index"].astype(str)
        fr["crop_path"] = [f"crops/{f[:2]}/{f}.jpg" for f in fr["face_id"]]
        fr["_source"], fr["_replica"] = b_faces["face_id"].to_numpy(), r
        parts.append(fr)
    faces = pd.concat(parts, ignore_index=True).head(n_faces)
    source = faces[["face_id", "_source", "_replica"]].rename(
        columns={"_source": "source_face_id", "_replica": "replica"}
    )
    faces = faces.drop(columns=["_source", "_replica"])

    # images and detect_log rows of the kept faces' images, photos hard-linked
    per_image = faces.groupby("image_id", sort=False).size()
    img_src = dict(zip(faces["image_id"], source["source_face_id"].str.rsplit("_", n=1).str[0],
                       strict=False))  # fmt: skip
    rep_of = dict(zip(faces["image_id"], source["replica"], strict=False))
    b_img = b_images.drop_duplicates("image_id").set_index("image_id")
    rows = b_img.loc[[img_src[i] for i in per_image.index]].reset_index(drop=True)
    rows.insert(0, "image_id", per_image.index.to_numpy())
    rel = [f"r{rep_of[i]:03d}/{p}" for i, p in zip(rows["image_id"], rows["path"], strict=True)]
    for i, (root, path) in enumerate(zip(rows["root"], rows["path"], strict=True)):
        dst = photos / rel[i]
        dst.parent.mkdir(parents=True, exist_ok=True)
        _link_or_copy(b_roots[int(root)] / path, dst)
    rows["root"], rows["path"] = 0, rel
    ws.write_images(rows)
    ws.write_faces(faces)
    whole = faces.groupby("image_id", sort=False)["whole_image"].any()
    dlog = b_log.drop_duplicates("image_id").set_index("image_id")
    dlog = dlog.reindex([img_src[i] for i in per_image.index]).reset_index(drop=True)
    dlog["image_id"] = per_image.index.to_numpy()  # a base without a log gets one here
    dlog["n_faces"] = per_image.to_numpy().astype(np.int32)
    dlog["whole_image"] = whole.loc[per_image.index].to_numpy()
    write_table(ws.root / "detect_log.parquet", dlog, DETECT_LOG_SCHEMA)
    write_table(ws.root / "bench_source.parquet", source)
    for old, new in zip(source["source_face_id"], source["face_id"], strict=True):
        _link_crops(base, ws, old, new)

    pos = pd.Index(b_faces["face_id"]).get_indexer(source["source_face_id"])
    copies = source["replica"].to_numpy() > 0
    rng = np.random.default_rng(seed)
    ids = faces["face_id"].to_numpy(dtype=object)
    for key in list_embeddings(base):
        _, Xb = load_embeddings(base, key)
        X = Xb[pos]
        if noise > 0 and copies.any():
            std = Xb.std(0, keepdims=True).astype(np.float32)
            shape = (int(copies.sum()), X.shape[1])
            X[copies] += noise * std * rng.standard_normal(shape, np.float32)
        save_vectors(ws, key, ids, X, {})
        del X, Xb
        # the producer's own config.json (fingerprint included): as if embedded here
        shutil.copy2(embedding_dir(base, key) / CONFIG_NAME, embedding_dir(ws, key) / CONFIG_NAME)
    for step in (base.root / "steps").glob("*.json"):
        (ws.root / "steps").mkdir(exist_ok=True)
        shutil.copy2(step, ws.root / "steps" / step.name)
    rep_info = Replica(
        root=ws.root,
        faces=len(faces),
        images=len(rows),
        base_faces=len(b_faces),
        replicas=n_rep,
        noise=noise,
        build_s=round(time.perf_counter() - t0, 1),
    )
    (ws.root / "bench_scale.json").write_text(json.dumps(asdict(rep_info), default=str, indent=1))
    return rep_info


def _link_crops(base: object, ws: object, old: str, new: str) -> None:
    src, dst = base.crop_path(old), ws.crop_path(new)  # type: ignore[attr-defined]
    dst.parent.mkdir(parents=True, exist_ok=True)
    _link_or_copy(src, dst)
    box = base.box_crop_path(old)  # type: ignore[attr-defined]
    if box.is_file():
        _link_or_copy(box, ws.box_crop_path(new))  # type: ignore[attr-defined]


def check_replica(root: Path) -> dict:
    """Load the replica through the normal API; raise if ids or blocks disagree."""
    from labeler.embeddings.store import list_embeddings, load_embeddings
    from labeler.features import load_features
    from labeler.workspace import Workspace

    ws = Workspace.open(root)
    faces = ws.faces()
    if not faces["face_id"].is_unique:
        raise AssertionError("replica has duplicate face_ids")
    images = ws.images()
    if not faces["image_id"].isin(images["image_id"]).all():
        raise AssertionError("replica has faces whose image is not in images.parquet")
    dims = {}
    for key in list_embeddings(ws):
        ids, X = load_embeddings(ws, key)
        if list(ids) != faces["face_id"].tolist():
            raise AssertionError(f"{key} not aligned to faces")
        dims[key] = X.shape[1]
    ids, X = load_features(ws)
    if len(ids) != len(faces):
        raise AssertionError("features do not cover every face")
    return {"faces": len(faces), "images": len(images), "blocks": dims}


def get_replica(base_root: Path, work: Path, n_faces: int, *, noise: float) -> Replica:
    """The cached replica of ``n_faces`` under ``work`` (made when missing or different)."""
    root = work / f"ws_{n_faces}"
    meta = root / "bench_scale.json"
    base_mtime = (base_root / "faces.parquet").stat().st_mtime
    if meta.is_file():
        info = json.loads(meta.read_text())
        fresh = (root / "faces.parquet").stat().st_mtime >= base_mtime
        if info.get("faces") == n_faces and info.get("noise") == noise and fresh:
            return Replica(**{**info, "root": Path(info["root"])})
    log.info("replicating the base to %d faces at %s", n_faces, root)
    rep = replicate(base_root, root, n_faces, noise=noise)
    log.info("replica made in %.1f s: %s", rep.build_s, check_replica(root))
    return rep


def case_workspace(rep: Replica, dst: Path) -> Path:
    """A copy of the replica for one case: hard links (writers replace files by rename)."""
    shutil.rmtree(dst, ignore_errors=True)
    shutil.copytree(rep.root, dst, copy_function=os.link)
    return dst


# --- labels ----------------------------------------------------------------------------------


def write_labels(ws_root: Path, truth_of_source: np.ndarray, case: str, *, seed: int = 0) -> int:
    """Label case ``case`` (module doc) through ``LabelStore.assign``; returns the events.

    ``truth_of_source``: ``(N,)`` the truth label of each face (faces order)."""
    from labeler.labels import LabelStore
    from labeler.workspace import Workspace

    ws = Workspace.open(ws_root)
    ids = ws.faces()["face_id"].to_numpy(dtype=object)
    rng = np.random.default_rng(seed)
    if case == "A":
        rows, size, source = np.arange(len(ids)), 480, "cluster"
    else:
        rows, size, source = rng.choice(len(ids), CASE_B_LABELED, replace=False), 100, "selection"
    chunks = []
    for value in np.unique(truth_of_source[rows]):
        mine = rng.permutation(rows[truth_of_source[rows] == value])
        chunks += [(value, c) for c in np.array_split(mine, max(1, math.ceil(len(mine) / size)))]
    store = LabelStore(ws.labels_db)
    for i in rng.permutation(len(chunks)):
        value, c = chunks[i]
        store.assign(ids[c].tolist(), "mask_state", str(value), annotator="bench", source=source)
    return len(chunks)


def face_truth(ws_root: Path, base_truth_map: dict[str, str]) -> np.ndarray:
    """The truth label of each replica face (faces order): that of the base face it copies."""
    import pandas as pd

    from labeler.workspace import Workspace

    src = pd.read_parquet(ws_root / "bench_source.parquet").set_index("face_id")
    faces = Workspace.open(ws_root).faces()["face_id"]
    return np.asarray(
        [base_truth_map.get(f, "correct") for f in src.loc[faces, "source_face_id"]], dtype=object
    )


# --- predict photos --------------------------------------------------------------------------


def predict_photos(work: Path, n: int = PREDICT_PHOTOS) -> Path:
    """``n`` new photos: perturbed copies (flip, light, scale, JPEG quality) of the shared
    1024x1024 photos, made once and cached."""
    from PIL import Image, ImageEnhance

    out = work / f"predict_photos_{n}"
    if out.is_dir() and len(list(out.iterdir())) == n:
        return out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    src = sorted((SHARED / "maskedfacenet_1024" / "images").iterdir())
    rng = np.random.default_rng(0)
    for i in range(n):
        im = Image.open(src[i % len(src)]).convert("RGB")
        if rng.random() < 0.5:
            im = im.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        im = ImageEnhance.Brightness(im).enhance(float(rng.uniform(0.75, 1.25)))
        side = int(rng.uniform(0.8, 1.0) * im.width)
        x, y = rng.integers(0, im.width - side + 1, 2)
        im = im.crop((int(x), int(y), int(x) + side, int(y) + side))
        im.save(out / f"p{i:05d}.jpg", quality=int(rng.integers(70, 96)))
    return out


# --- running one stage -----------------------------------------------------------------------


def stage_args(stage: str, ws: Path, case_dir: Path, photos: Path) -> list[str]:
    """The CLI arguments of ``stage`` on workspace ``ws`` (default options)."""
    w = ["-w", str(ws)]
    return {
        "cluster": ["cluster", *w],
        "suggest": ["suggest", *w],
        "train": ["train", *w, "--mode", "head"],
        "train-noid": ["train", *w, "--mode", "head", "--persons", "image"],
        "export": ["export", *w, "--out", str(case_dir / "export")],
        "export-noid": ["export", *w, "--out", str(case_dir / "export_noid"), "--persons", "image"],
        "predict": ["predict", str(photos), *w, "--out", str(case_dir / "predict.csv"), "--force"],
    }[stage]


def _tail(path: Path, n: int = 8) -> tuple[str, ...]:
    text = path.read_text(errors="replace") if path.is_file() else ""
    lines = [ln.strip() for ln in text.replace("\r", "\n").splitlines() if ln.strip()]
    return tuple(ln[:300] for ln in lines[-n:])


def group_rss_gb(pgid: int) -> float:
    """Resident memory of every process in the group ``pgid`` now, GB (Linux /proc)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_text()
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                total += _status_kib(Path(entry.path, "status"), "VmRSS:")
        except (OSError, ValueError, IndexError):
            continue
    return total / 2**20


def _status_kib(path: Path, field: str) -> int:
    for line in path.read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1])
    return 0


@dataclass(frozen=True)
class Waited:
    wall_s: float
    status: int
    rusage: object
    timed_out: bool
    killed_rss_gb: float | None
    peak_gb: float  # the most the child's group held, polled (see _wait)


def run_stage(
    cmd: list[str],
    *,
    env: dict[str, str],
    timeout_s: float | None,
    logs: Path,
    max_rss_gb: float | None = None,
) -> tuple[Waited, int | None]:
    """Run ``cmd`` in its own session; returns how it ended and its exit code (None when
    stopped by the bench). ``rusage`` is the child's (``os.wait4``), which includes the
    children it reaped. A child past ``timeout_s`` or ``max_rss_gb`` is killed."""
    logs.mkdir(parents=True, exist_ok=True)
    with open(logs / "stdout.txt", "w") as out, open(logs / "stderr.txt", "w") as err:
        t = time.perf_counter()
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=err, start_new_session=True)
        try:
            w = _wait(proc.pid, t, timeout_s=timeout_s, max_rss_gb=max_rss_gb)
        except BaseException:  # the bench itself stopped: the stage must not run on alone
            os.killpg(proc.pid, signal.SIGKILL)
            os.waitpid(proc.pid, 0)
            proc.returncode = -9
            raise
        proc.returncode = os.waitstatus_to_exitcode(w.status)  # Popen must not wait again
    stopped = w.timed_out or w.killed_rss_gb is not None
    return w, None if stopped else proc.returncode


def _wait(child: int, t: float, *, timeout_s: float | None, max_rss_gb: float | None) -> Waited:
    """Wait for ``child``; at the timeout or the memory cap stop its group (SIGTERM, then
    SIGKILL 10 s later).

    Peak memory is polled, not taken from ``ru_maxrss``: Linux keeps in a child's
    ``ru_maxrss`` the resident size of the process it was forked from (the bench, GBs after
    making a replica) across ``exec``. The child's own ``VmHWM`` (the high-water mark of the
    program it runs, read every 0.2 s) and the group's summed ``VmRSS`` (every 1 s, for any
    processes it starts) give the peak."""
    timed_out, killed_gb, kill_at, ticks, peak_kib = False, None, None, 0, 0
    status_file = Path(f"/proc/{child}/status")
    while True:
        try:
            peak_kib = max(peak_kib, _status_kib(status_file, "VmHWM:"))
        except (OSError, ValueError):
            pass
        pid, status, ru = os.wait4(child, os.WNOHANG)
        if pid:
            wall = time.perf_counter() - t
            return Waited(wall, status, ru, timed_out, killed_gb, round(peak_kib / 2**20, 3))
        now, ticks = time.perf_counter(), ticks + 1
        rss = group_rss_gb(child) if ticks % 5 == 0 else 0.0
        peak_kib = max(peak_kib, int(rss * 2**20))
        if kill_at is None and killed_gb is None and not timed_out:
            if timeout_s is not None and now - t > timeout_s:
                timed_out = True
                log.warning("timed out after %.0f s: stopping %d", timeout_s, child)
            elif max_rss_gb is not None and rss > max_rss_gb:
                killed_gb = round(rss, 2)
                log.warning("%.1f GB RSS > %.1f GB: stopping %d", rss, max_rss_gb, child)
            if timed_out or killed_gb is not None:
                kill_at = now + 10
                os.killpg(child, signal.SIGTERM)
        elif kill_at is not None and now > kill_at:
            os.killpg(child, signal.SIGKILL)
            kill_at = float("inf")
        time.sleep(0.2)


def measure(
    stage: str,
    *,
    faces: int,
    case: str,
    ws: Path,
    case_dir: Path,
    photos: Path,
    env: dict[str, str],
    timeout_s: float | None,
    max_rss_gb: float | None = None,
) -> StageResult:
    args = stage_args(stage, ws, case_dir, photos)
    load = tuple(round(x, 2) for x in os.getloadavg())
    log.info("%s at %d faces, case %s (load %.2f): labeler %s", stage, faces, case, load[0],
             " ".join(args))  # fmt: skip
    logs = case_dir / "logs" / stage
    w, code = run_stage(
        [sys.executable, *LABELER, *args],
        env=env,
        timeout_s=timeout_s,
        logs=logs,
        max_rss_gb=max_rss_gb,
    )
    ru = w.rusage
    res = StageResult(
        stage=stage,
        faces=faces,
        case=case,
        command="labeler " + " ".join(args),
        wall_s=round(w.wall_s, 2),
        cpu_s=round(ru.ru_utime + ru.ru_stime, 2),
        user_s=round(ru.ru_utime, 2),
        sys_s=round(ru.ru_stime, 2),
        peak_gb=w.peak_gb,
        ru_maxrss_gb=round(ru.ru_maxrss / 2**20, 3),  # KiB; includes the bench's RSS at fork
        exit_code=code,
        timed_out=w.timed_out,
        timeout_s=timeout_s,
        killed_rss_gb=w.killed_rss_gb,
        load_before=load,  # type: ignore[arg-type]
        stderr_tail=_tail(logs / "stderr.txt"),
        stdout_tail=_tail(logs / "stdout.txt", 4),
    )
    log.info("%s: %s, wall %.1f s, CPU %.1f s, peak %.2f GB", stage, res.status, res.wall_s,
             res.cpu_s, res.peak_gb)  # fmt: skip
    return res


def profile(
    stage: str, *, tag: str, ws: Path, case_dir: Path, photos: Path, env: dict[str, str],
    timeout_s: float | None, top: int = 25,
) -> dict:  # fmt: skip
    """Run ``stage`` once more under cProfile; write the top costs to bench/results/."""
    import pstats

    args = stage_args(stage, ws, case_dir, photos)
    if stage.startswith("export"):
        args[args.index("--out") + 1] += "_profile"
    prof = case_dir / f"{stage}.prof"
    entry = case_dir / "labeler_entry.py"
    entry.write_text("from labeler.cli import main\nmain()\n")
    cmd = [sys.executable, "-m", "cProfile", "-o", str(prof), str(entry), *args]
    w, code = run_stage(
        cmd, env=env, timeout_s=timeout_s, logs=case_dir / "logs" / f"{stage}_profile"
    )
    wall, timed_out = w.wall_s, w.timed_out
    out = RESULTS / f"scale_profile_{tag}.txt"
    if not prof.is_file():
        return {"stage": stage, "tag": tag, "error": "no profile written (killed?)", "wall_s": wall}
    with open(out, "w") as fh:
        fh.write(f"labeler {' '.join(args)}\nwall {wall:.1f} s under cProfile, exit {code}\n\n")
        for order in ("cumulative", "tottime"):
            st = pstats.Stats(str(prof), stream=fh)
            st.strip_dirs().sort_stats(order).print_stats(top)
    st = pstats.Stats(str(prof))
    rows = sorted(st.stats.items(), key=lambda kv: kv[1][2], reverse=True)[:12]  # tottime
    tops = [
        {
            "function": f"{Path(f).name}:{line}({fn})",
            "tottime_s": round(tt, 2),
            "cumtime_s": round(ct, 2),
            "calls": int(nc),
        }  # fmt: skip
        for (f, line, fn), (_, nc, tt, ct, _) in rows
    ]
    return {"stage": stage, "tag": tag, "wall_s": round(wall, 1), "exit_code": code,
            "timed_out": timed_out, "file": str(out.relative_to(ROOT)), "top_tottime": tops}  # fmt: skip


# --- report ----------------------------------------------------------------------------------


def merge_results(path: Path, new: list[StageResult], meta: dict) -> dict:
    """The results file with ``new`` rows replacing rows of the same stage, size and case."""
    old = json.loads(path.read_text()) if path.is_file() else {}
    rows = {(r["stage"], r["faces"], r["case"]): r for r in old.get("results", [])}
    for r in new:
        rows[(r.stage, r.faces, r.case)] = {**asdict(r), "status": r.status}
    order = {s: i for i, s in enumerate(STAGES)}
    merged = sorted(rows.values(), key=lambda r: (r["faces"], r["case"], order.get(r["stage"], 99)))
    runs = [*old.get("runs", []), meta]
    profiles = {p["tag"]: p for p in old.get("profiles", [])}
    profiles |= {p["tag"]: p for p in meta.pop("profiles", [])}
    return {"results": merged, "runs": runs[-20:], "profiles": list(profiles.values())}


def _exponent(rows: list[dict], stage: str, case: str, what: str) -> str:
    """How ``what`` (wall_s or cpu_s) grows with faces between the two largest sizes:
    t ~ N^k. CPU is the steadier of the two on a shared machine."""
    pts = sorted((r["faces"], r[what]) for r in rows
                 if r["stage"] == stage and r["case"] == case and r["status"] == "ok")  # fmt: skip
    if len(pts) < 2 or pts[-2][0] == pts[-1][0]:
        return ""
    (n1, t1), (n2, t2) = pts[-2], pts[-1]
    return f"{math.log(t2 / t1) / math.log(n2 / n1):.2f}"


def table_lines(data: dict) -> list[str]:
    rows = data["results"]
    out = [
        "| stage | faces | case | status | wall s | CPU s | peak GB | wall s / 1k faces "
        "| CPU s / 1k faces | load before |",
        "|---|---:|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        per = 1000 / r["faces"]
        stopped = r["timed_out"] or r.get("killed_rss_gb")
        wall = f"{'>=' if stopped else ''}{r['wall_s']:.1f}"
        # rows measured before peaks were polled hold ru_maxrss: an upper bound (see _wait)
        peak = f"{r['peak_gb']:.2f}" + ("" if "ru_maxrss_gb" in r else "*")
        out.append(
            f"| {r['stage']} | {r['faces']:,} | {r['case']} | {r['status']} | {wall} "
            f"| {r['cpu_s']:.1f} | {peak} | {r['wall_s'] * per:.2f} "
            f"| {r['cpu_s'] * per:.2f} | {r['load_before'][0]:.2f} |"
        )
    if any("ru_maxrss_gb" not in r for r in rows):
        out += ["", "\\* peak from ru_maxrss (an early version of this bench): it includes the "
                "bench's own RSS when the stage was forked, so it is an upper bound; exact only "
                "where above the bench's RSS (about 2.1 GB when it had just made the replica)"]  # fmt: skip
    return out


def growth_lines(data: dict) -> list[str]:
    rows = data["results"]
    keys = sorted({(r["stage"], r["case"]) for r in rows}, key=lambda k: (STAGES.index(k[0]), k[1]))
    out = ["| stage | case | k of wall | k of CPU |", "|---|---|---:|---:|"]
    for stage, case in keys:
        k_wall, k_cpu = (_exponent(rows, stage, case, w) for w in ("wall_s", "cpu_s"))
        if k_wall:
            out.append(f"| {stage} | {case} | {k_wall} | {k_cpu} |")
    return out


def total_lines(data: dict, faces: int) -> list[str]:
    """The stages after embedding at ``faces``, summed, against the issue's target."""
    rows = [r for r in data["results"] if r["faces"] == faces]
    out = []
    for case in sorted({r["case"] for r in rows}):
        mine = {r["stage"]: r for r in rows if r["case"] == case}
        # predict does not depend on the labels: any case's run at this size stands in
        other = [r for r in rows if r["stage"] == "predict"]
        if "predict" not in mine and other:
            mine["predict"] = other[0]
        for label, stages in (
            ("default stages", ("cluster", "suggest", "train", "export", "predict")),
            ("identity skipped (train/export --persons image)",
             ("cluster", "suggest", "train-noid", "export-noid", "predict")),
        ):  # fmt: skip
            have = [mine[s] for s in stages if s in mine]
            if len(have) < len(stages):
                missing = [s for s in stages if s not in mine]
                out.append(
                    f"- case {case}, {label}: not all measured (missing {', '.join(missing)})"
                )
                continue
            wall = sum(r["wall_s"] for r in have)
            peak = max(r["peak_gb"] for r in have)
            lower = any(r["timed_out"] or r.get("killed_rss_gb") for r in have)
            verdict = (
                "meets"
                if wall <= TARGET_WALL_S and peak <= TARGET_PEAK_GB and not lower
                else "misses"
            )
            out.append(
                f"- case {case}, {label}: wall {'>= ' if lower else ''}{wall / 60:.1f} min "
                f"(target 30), peak {peak:.2f} GB (target 8): {verdict} the target"
            )
    return out


def write_markdown(path: Path, data: dict, how: list[str]) -> None:
    last = data["runs"][-1] if data["runs"] else {}
    biggest = max((r["faces"] for r in data["results"]), default=0)
    lines = [
        "# The whole job after embedding, at full size (bench/bench_scale.py)",
        "",
        f"Machine: {last.get('cores')} CPU cores, {last.get('ram_gb')} GB RAM, no GPU; "
        f"labeler {last.get('commit', '')}; {last.get('date', '')}. Each stage is its own "
        "process through the real CLI with default options; CPU = user+sys of the process and "
        "the children it reaped; peak = the stage's own high-water RSS (VmHWM, polled), not "
        "ru_maxrss, which on Linux carries over the bench's RSS at fork.",
        "",
        "How the workspaces were made:",
        "",
        *[f"- {h}" for h in how],
        "",
        *table_lines(data),
        "",
        "Growth with size between the two largest sizes measured, t ~ N^k (k = 1 is linear; "
        "predict always classifies the same 2,000 photos):",
        "",
        *growth_lines(data),
        "",
        f"The stages after embedding at {biggest:,} faces vs the issue's target "
        "(30 min wall, 8 GB):",
        "",
        *total_lines(data, biggest),
    ]
    if data.get("profiles"):
        lines += ["", "Profiles (cProfile, separate run; top by own time):", ""]
        for p in data["profiles"]:
            if "top_tottime" not in p:
                lines.append(f"- {p['tag']}: {p.get('error')}")
                continue
            tops = "; ".join(
                f"{t['function']} {t['tottime_s']:.1f} s" for t in p["top_tottime"][:6]
            )
            lines.append(f"- {p['tag']} ({p['wall_s']} s under cProfile, {p['file']}): {tops}")
    path.write_text("\n".join(lines) + "\n")


def how_made(base_meta: dict, reps: list[Replica]) -> list[str]:
    out = [
        f"base: `{base_meta['command']}` over {', '.join(base_meta['sets'])} "
        f"({base_meta.get('build_s', '?')} s)",
    ]
    for rep in reps:
        out.append(
            f"{rep.faces:,} faces: the base's {rep.base_faces:,} faces replicated {rep.replicas}x "
            f"(new image and face ids, photos and crops hard-linked, feature blocks through "
            f"save_vectors with noise {rep.noise} x column std on copies), {rep.images:,} images"
        )
    out.append(
        f"labels: A every face (truth of its source face, events of <= 480 faces), "
        f"B {CASE_B_LABELED:,} random faces (events of <= 100); predict: {PREDICT_PHOTOS:,} "
        "perturbed copies of the 1024x1024 shared photos"
    )
    return out


# --- main ------------------------------------------------------------------------------------


def _parse_timeouts(text: str) -> dict[str, float]:
    out = {}
    for part in filter(None, text.split(",")):
        stage, _, secs = part.partition("=")
        if stage not in STAGES:
            raise SystemExit(f"--timeouts: unknown stage {stage!r} (stages: {', '.join(STAGES)})")
        out[stage] = float(secs)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="33000,133000", help="faces per workspace, comma-separated")
    ap.add_argument("--cases", default="A,B", help="A: every face labeled; B: 2,000 labeled")
    ap.add_argument("--stages", default=",".join(DEFAULT_STAGES),
                    help=f"comma-separated, in run order, of {', '.join(STAGES)}")  # fmt: skip
    ap.add_argument("--timeout", type=float, default=3600, help="seconds per stage (all)")
    ap.add_argument("--timeouts", default="", help="per stage, e.g. export=1200,train=1200")
    ap.add_argument("--max-rss-gb", type=float, default=12.0,
                    help="stop a stage whose processes pass this resident memory")  # fmt: skip
    ap.add_argument("--noise", type=float, default=0.05, help="noise on copies, x column std")
    ap.add_argument("--work", type=Path, default=Path("/tmp/labeler_scale"),
                    help="cache of the base workspace, replicas and predict photos")  # fmt: skip
    ap.add_argument("--keep", type=Path, default=None,
                    help="put the case workspaces here and keep them (default: under --work, "
                    "removed at the end)")  # fmt: skip
    ap.add_argument("--profile", default="", help="stages to run once more under cProfile")
    ap.add_argument("--json", type=Path, default=RESULTS / "scale.json")
    ap.add_argument("--md", type=Path, default=RESULTS / "scale.md")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    stages = [s for s in args.stages.split(",") if s]
    bad = [s for s in stages if s not in STAGES]
    if bad:
        raise SystemExit(f"unknown stages {bad}; choose from {', '.join(STAGES)}")
    timeouts = _parse_timeouts(args.timeouts)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    cases = [c for c in args.cases.split(",") if c]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args.work.mkdir(parents=True, exist_ok=True)

    base_root, base_meta = build_base(args.work, env)
    truth_map = base_truth(base_root)
    photos = predict_photos(args.work)
    cases_root = args.keep or args.work / "cases"
    results, reps, profiles = [], [], []
    for n in sizes:
        rep = get_replica(base_root, args.work, n, noise=args.noise)
        reps.append(rep)
        truth = face_truth(rep.root, truth_map)
        for case in cases:
            case_dir = cases_root / f"{n}_{case}"
            shutil.rmtree(case_dir, ignore_errors=True)
            case_dir.mkdir(parents=True)
            ws = case_workspace(rep, case_dir / "ws")
            t = time.perf_counter()
            events = write_labels(ws, truth, case)
            log.info("case %s: %d label events in %.1f s", case, events, time.perf_counter() - t)
            for stage in stages:
                res = measure(stage, faces=n, case=case, ws=ws, case_dir=case_dir,
                              photos=photos, env=env,
                              timeout_s=timeouts.get(stage, args.timeout),
                              max_rss_gb=args.max_rss_gb)  # fmt: skip
                results.append(res)
            for stage in [s for s in args.profile.split(",") if s]:
                log.info("profiling %s at %d faces, case %s", stage, n, case)
                profiles.append(profile(stage, tag=f"{stage}_{n}_{case}", ws=ws, case_dir=case_dir,
                                        photos=photos, env=env,
                                        timeout_s=timeouts.get(stage, args.timeout)))  # fmt: skip
            if args.keep is None:
                shutil.rmtree(case_dir, ignore_errors=True)

    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                            capture_output=True, text=True).stdout.strip()  # fmt: skip
    meta = {
        "date": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
        "commit": commit,
        "cores": os.cpu_count(),
        "ram_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
        "argv": sys.argv[1:],
        "base": base_meta,
        "replicas": [{**asdict(r), "root": str(r.root)} for r in reps],
        "how": how_made(base_meta, reps),
        "profiles": profiles,
    }
    data = merge_results(args.json, results, meta)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(data, indent=1) + "\n")
    how = list(dict.fromkeys(h for run in data["runs"] for h in run.get("how", [])))
    write_markdown(args.md, data, how)
    print("\n".join(["", *meta["how"], "", *table_lines(data), "", *total_lines(data, max(sizes))]))


if __name__ == "__main__":
    main()
