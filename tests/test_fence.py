"""The photo folder is a fence (issue 30, point 5): ingest, ``export --source-images``, the
app's photo reader and ``predict`` apply one rule (:mod:`labeler.fence`) and never open what
it refuses: a symlink out of the folder (unless ``--follow-links``), a device, a FIFO.

"Never opened" is shown by an open probe, not assumed: the ``open`` audit event (PEP 578)
that ``builtins.open``, ``io.open`` and ``os.open`` raise before the system call. Every read
of a photo in labeler goes through one of them (the fence's ``os.open``; PIL's and
``shutil``'s ``open``). The probe aborts a forbidden open (so a bug fails the test instead of
blocking on a FIFO or reading ``/dev/zero`` forever) and records it. One more test runs ingest
under ``strace`` where it is installed, to see the system calls themselves.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tinyws
from click.testing import CliRunner
from PIL import Image

from labeler.cli import cli
from labeler.fence import Fence, FenceError, open_inside, resolve_inside
from labeler.ingest import ingest_folder, scan_images
from labeler.workspace import Workspace

HAS_FIFO = hasattr(os, "mkfifo")
DEVICE = "/dev/zero"
needs_posix = pytest.mark.skipif(
    not (os.path.exists(DEVICE) and os.path.exists("/etc/passwd") and HAS_FIFO),
    reason="needs /dev/zero, /etc/passwd and FIFOs (POSIX)",
)
pytestmark = needs_posix


# --- the open probe -----------------------------------------------------------------------------


class OpenProbe:
    """Records every open of a watched file in this process (any thread); ``forbid``: abort
    that open with ``PermissionError`` too."""

    def __init__(self) -> None:
        self.rules: dict[str, bool] = {}  # real path -> forbidden
        self.opened: list[str] = []  # every open of a watched file
        self.refused: list[str] = []  # the opens aborted: forbidden when tried

    def watch(self, *paths: str | os.PathLike[str], forbid: bool = True) -> None:
        for p in paths:
            self.rules[os.path.realpath(p)] = forbid

    def forbidden_opened(self) -> list[str]:
        return list(self.refused)

    def __call__(self, event: str, args: tuple) -> None:
        if event != "open" or not self.rules:
            return
        path = args[0]
        if not isinstance(path, (str, bytes, os.PathLike)):
            return  # an open of a file descriptor (os.fdopen): its path was probed already
        real = os.path.realpath(os.fsdecode(path))
        if real in self.rules:
            self.opened.append(real)
            if self.rules[real]:
                self.refused.append(real)
                raise PermissionError(f"open probe: {real} must not be opened")


_ACTIVE: list[OpenProbe] = []


def _dispatch(event: str, args: tuple) -> None:
    if _ACTIVE:
        _ACTIVE[-1](event, args)


_HOOKED: list[bool] = []


@pytest.fixture
def probe():
    """An :class:`OpenProbe` active for the test (the audit hook is added once per process:
    hooks cannot be removed; it does nothing while no probe is active)."""
    if not _HOOKED:
        sys.addaudithook(_dispatch)
        _HOOKED.append(True)
    p = OpenProbe()
    _ACTIVE.append(p)
    try:
        yield p
    finally:
        _ACTIVE.remove(p)


def test_the_probe_sees_the_opens_that_read_photos(probe, tmp_path):
    """The probe itself: open(), os.open(), PIL.Image.open(path) and shutil.copyfile are
    seen, and a forbidden open is aborted before the system call."""
    f = tmp_path / "a.png"
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(f)
    probe.watch(f, forbid=False)
    open(f, "rb").close()
    os.close(os.open(f, os.O_RDONLY))
    Image.open(f).close()
    shutil.copyfile(f, tmp_path / "b.png")
    assert probe.opened == [str(f.resolve())] * 4
    probe.watch(f)
    with pytest.raises(PermissionError, match="open probe"):
        f.read_bytes()


# --- a photo folder with links out of it ----------------------------------------------------------


def face_png(path: Path, seed: int) -> bytes:
    """A face picture (skin, eyes, a coloured lower face) written as PNG; its bytes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = tinyws.face_image("no_mask", np.random.default_rng(seed), size=96)
    Image.fromarray(rgb).save(path)
    return path.read_bytes()


def sha16(data: bytes) -> str:
    return hashlib.sha1(data).hexdigest()[:16]


class Zoo:
    """``photos/`` with a face inside, links in and out of it, a device link and a FIFO;
    ``elsewhere/`` outside it with a face and a folder of faces."""

    def __init__(self, tmp_path: Path) -> None:
        self.photos = tmp_path / "photos"
        self.elsewhere = tmp_path / "elsewhere"
        self.inside = face_png(self.photos / "inside.png", 1)
        self.outside_face = self.elsewhere / "face.png"
        self.outside = face_png(self.outside_face, 2)
        self.outside_dir_face = self.elsewhere / "album" / "face2.png"
        face_png(self.outside_dir_face, 3)
        face_png(self.photos / "sub" / "real.png", 4)
        (self.photos / "in_link.png").symlink_to(self.photos / "sub" / "real.png")
        (self.photos / "out_face.png").symlink_to(self.outside_face)
        (self.photos / "passwd.jpg").symlink_to("/etc/passwd")
        (self.photos / "zero.jpg").symlink_to(DEVICE)
        (self.photos / "dir_out.jpg").symlink_to(self.elsewhere / "album")  # a folder link
        (self.photos / "album_link").symlink_to(self.elsewhere / "album")
        (self.photos / "loop").symlink_to(self.photos)  # back into the folder: never entered
        os.mkfifo(self.photos / "pipe.jpg")
        self.ws = Workspace.open(tmp_path / "ws", create=True)

    #: what reads nothing but a device or FIFO, whatever the options
    def never(self) -> list[Path]:
        return [Path(DEVICE), self.photos / "pipe.jpg"]

    def outside_files(self) -> list[Path]:
        return [self.outside_face, self.outside_dir_face, Path("/etc/passwd")]


@pytest.fixture
def zoo(tmp_path) -> Zoo:
    return Zoo(tmp_path)


def _rows(ws: Workspace) -> pd.DataFrame:
    return ws.images().set_index("path")


def test_links_out_of_the_folder_devices_and_fifos_are_recorded_and_never_opened(zoo, probe):
    probe.watch(*zoo.never(), *zoo.outside_files())
    probe.watch(zoo.photos / "inside.png", zoo.photos / "sub" / "real.png", forbid=False)
    res = ingest_folder(zoo.ws, zoo.photos, workers=3)
    assert probe.forbidden_opened() == []
    # the probe saw ingest read the photos it accepts (hash + decode): it watches the right call
    assert str((zoo.photos / "inside.png").resolve()) in probe.opened

    rows = _rows(zoo.ws)
    assert set(rows.index) == {
        "inside.png",
        "in_link.png",
        "sub/real.png",
        "out_face.png",
        "passwd.jpg",
        "zero.jpg",
        "pipe.jpg",
    }  # folder links (album_link, dir_out.jpg, loop) are not entered
    assert rows.loc["inside.png", "status"] == "ok"
    assert rows.loc["inside.png", "image_id"] == sha16(zoo.inside)
    assert rows.loc["in_link.png", "status"] in ("ok", "duplicate")  # a link inside: read
    assert rows.loc["in_link.png", "image_id"] == rows.loc["sub/real.png", "image_id"]
    errors = rows.loc[rows["status"] == "error", "error"]
    assert sorted(errors.index) == ["out_face.png", "passwd.jpg", "pipe.jpg", "zero.jpg"]
    assert res.errors == 4
    out = str(zoo.outside_face.resolve())
    assert errors["out_face.png"] == (
        f"out_face.png: symlink to a file outside the photo folder ({out}); "
        "pass --follow-links to read it"
    )
    assert "(/etc/passwd); pass --follow-links" in errors["passwd.jpg"]
    assert errors["zero.jpg"] == (
        f"zero.jpg: symlink to a character device outside the photo folder ({DEVICE}); never opened"
    )
    assert errors["pipe.jpg"] == "pipe.jpg: not a regular file (FIFO); never opened"
    assert not errors.str.contains("\n").any()
    # not hashed: the ids are hashes of the path, not of the bytes behind the link
    refused = rows.loc[errors.index]
    assert refused["image_id"].str.startswith("path:").all()
    assert sha16(zoo.outside) not in set(rows["image_id"])
    assert (refused[["width", "height"]] == 0).all().all()
    assert json.loads(zoo.ws.step_config_path("ingest").read_text())["follow_links"] is False

    # a re-run reads nothing again, and still opens nothing it refused
    again = ingest_folder(zoo.ws, zoo.photos, workers=3)
    assert again.skipped_unchanged == 7 and again.new == again.changed == 0
    assert probe.forbidden_opened() == []


def test_follow_links_reads_links_to_files_but_never_a_device_or_fifo(zoo, probe):
    probe.watch(*zoo.never())
    probe.watch(*zoo.outside_files(), forbid=False)
    ingest_folder(zoo.ws, zoo.photos, workers=2, follow_links=True)
    assert probe.forbidden_opened() == []
    assert str(zoo.outside_face.resolve()) in probe.opened  # read, as asked
    rows = _rows(zoo.ws)
    assert rows.loc["out_face.png", "status"] == "ok"
    assert rows.loc["out_face.png", "image_id"] == sha16(zoo.outside)
    # the outside folder is entered through its link, once (dir_out.jpg names the same one)
    assert rows.loc["album_link/face2.png", "status"] == "ok"
    assert "not an image" in rows.loc["passwd.jpg", "error"]  # a text file, read as asked
    assert "character device" in rows.loc["zero.jpg", "error"]
    assert "FIFO" in rows.loc["pipe.jpg", "error"]
    assert not any(p.startswith("loop/") for p in rows.index)  # a link back inside: not entered
    cfg = json.loads(zoo.ws.step_config_path("ingest").read_text())
    assert cfg["follow_links"] is True and zoo.ws.follows_links(0)

    # no option: as recorded (nothing re-read); --no-follow-links: every file checked again
    assert ingest_folder(zoo.ws, zoo.photos).changed == 0
    probe.watch(*zoo.outside_files())
    off = ingest_folder(zoo.ws, zoo.photos, follow_links=False)
    assert off.changed == len(rows) and probe.forbidden_opened() == []
    rows = _rows(zoo.ws)
    assert rows.loc["out_face.png", "status"] == "error"
    assert rows.loc["album_link/face2.png", "status"] == "error"  # kept, now refused
    assert "outside the photo folder" in rows.loc["album_link/face2.png", "error"]
    assert not zoo.ws.follows_links(0)
    assert ingest_folder(zoo.ws, zoo.photos).changed == 0  # refused once, then left alone
    assert probe.forbidden_opened() == []


def test_a_link_swapped_out_after_ingest_is_read_again_and_refused(zoo, probe):
    ingest_folder(zoo.ws, zoo.photos)
    assert _rows(zoo.ws).loc["in_link.png", "status"] in ("ok", "duplicate")
    (zoo.photos / "in_link.png").unlink()
    (zoo.photos / "in_link.png").symlink_to(zoo.outside_face)
    probe.watch(*zoo.outside_files(), *zoo.never())
    res = ingest_folder(zoo.ws, zoo.photos)
    assert res.changed == 1 and probe.forbidden_opened() == []
    assert "outside the photo folder" in _rows(zoo.ws).loc["in_link.png", "error"]


def test_detect_never_opens_a_photo_swapped_for_a_link_out_after_ingest(zoo, probe):
    """Between ingest and detect (or a resumed run), a photo replaced by a link out of the
    folder (or by a FIFO) is recorded as detect's error for that image, never opened; the
    other photos are detected as before."""
    from labeler.detect.pipeline import detect_workspace, read_detect_log

    for seed, name in enumerate(("a.png", "b.png", "c.png"), start=6):
        face_png(zoo.photos / "new" / name, seed)
    ingest_folder(zoo.ws, zoo.photos)
    ids = _rows(zoo.ws)["image_id"]
    new = zoo.photos / "new"
    (new / "a.png").unlink()
    (new / "a.png").symlink_to(zoo.outside_face)
    (new / "b.png").unlink()
    os.mkfifo(new / "b.png")
    probe.watch(*zoo.outside_files(), *zoo.never(), new / "b.png")
    detect_workspace(zoo.ws, detector="none", progress=False)
    assert probe.forbidden_opened() == []
    log = read_detect_log(zoo.ws).set_index("image_id")
    assert "outside the photo folder" in log.loc[ids["new/a.png"], "error"]
    assert "never opened" in log.loc[ids["new/b.png"], "error"]
    for name in ("new/c.png", "inside.png"):
        assert pd.isna(log.loc[ids[name], "error"]) and log.loc[ids[name], "n_faces"] == 1


def test_one_rule_for_ingest_the_app_and_predict(zoo, probe):
    """For every file, with and without --follow-links: ingest refuses it exactly when the
    workspace's check (the app's reader, export) and predict's listing refuse it."""
    from labeler.predict import list_images

    probe.watch(*zoo.never())
    for follow in (False, True):
        ingest_folder(zoo.ws, zoo.photos, follow_links=follow)
        root = zoo.ws.roots()[0]
        listed = {shown for _, shown in list_images([zoo.photos], follow_links=follow)}
        for path, row in _rows(zoo.ws).iterrows():
            try:
                zoo.ws.resolve_inside(root / path)
                app_ok = True
            except PermissionError:
                app_ok = False
            fenced = row["status"] == "error" and "never opened" in row["error"]
            fenced |= row["status"] == "error" and "--follow-links" in row["error"]
            assert app_ok == (not fenced), (follow, path, row["error"])
            assert (path in listed) == (not fenced), (follow, path)
    assert probe.forbidden_opened() == []


def test_fence_function_cases(tmp_path, zoo):
    root = zoo.photos
    assert resolve_inside(root, "inside.png") == (root / "inside.png").resolve()
    assert resolve_inside(root, "in_link.png") == (root / "sub" / "real.png").resolve()
    with pytest.raises(FenceError, match="--follow-links"):
        resolve_inside(root, "out_face.png")
    assert resolve_inside(root, "out_face.png", follow_links=True) == zoo.outside_face.resolve()
    for name, kind in (("zero.jpg", "character device"), ("dir_out.jpg", "folder")):
        for follow in (False, True):
            with pytest.raises(FenceError, match=f"{kind} outside the photo folder"):
                resolve_inside(root, name, follow_links=follow)
    for rel in ("../elsewhere/face.png", str(zoo.outside_face)):  # never a path out
        with pytest.raises(FenceError, match="not a path inside"):
            resolve_inside(root, rel, follow_links=True)
    with pytest.raises(FileNotFoundError):
        resolve_inside(root, "missing.png")
    (root / "gone.png").symlink_to(tmp_path / "nowhere.png")
    with pytest.raises(FenceError, match="broken symlink to a path outside"):
        resolve_inside(root, "gone.png")
    # a FenceError is a user's problem (one line in the CLI) and a PermissionError
    assert issubclass(FenceError, PermissionError)
    with open_inside(root, "inside.png") as fh:
        assert fh.read() == zoo.inside
    # a folder link on the way out counts as a link out
    with pytest.raises(FenceError, match="folder symlink to a file outside"):
        Fence(root).resolve("album_link/face2.png")


def test_scan_follows_folder_links_only_when_asked_and_ends_loops(tmp_path):
    photos, out = tmp_path / "photos", tmp_path / "out"
    face_png(photos / "a.png", 1)
    face_png(out / "b.png", 2)
    (out / "self").symlink_to(out)  # a loop outside
    (out / "back").symlink_to(photos)  # a link back into the folder
    (photos / "o1").symlink_to(out)
    (photos / "o2").symlink_to(out)  # the same folder twice
    assert list(scan_images(photos)) == ["a.png"]
    assert list(scan_images(photos, follow_links=True)) == ["a.png", "o1/b.png"]


# --- export --source-images and the app's photo reader -------------------------------------------

PERSONS = ("--person-pattern", r"^(person_\d+)/", "--ratios", "1:1")  # 6 persons, 2 splits


@pytest.fixture
def tiny(tmp_path):
    t = tinyws.build(tmp_path, {"correct": 6, "no_mask": 6}, faces_per_person=2)
    tinyws.label_all(t)
    return t


def _swap_out(tiny, tmp_path: Path, target: Path | None = None) -> tuple[str, Path, bytes]:
    """Move the first face's photo out of the folder and leave a link to it (or to
    ``target``) in its place: a link swapped after ingest. Returns the face id, the
    photo's path in the folder and its bytes."""
    face_id = str(tiny.ws.faces()["face_id"].iloc[0])
    images = tiny.ws.images().set_index("image_id")
    rel = images.loc[face_id.rsplit("_", 1)[0], "path"]
    photo = tiny.source / rel
    data = photo.read_bytes()
    moved = tmp_path / "moved" / photo.name
    moved.parent.mkdir(exist_ok=True)
    shutil.move(photo, moved)
    photo.symlink_to(target or moved)
    return face_id, photo, data


def _export(ws: Workspace, out: Path):
    args = ["export", "-w", str(ws.root), "--out", str(out), "--source-images", *PERSONS]
    return CliRunner().invoke(cli, args)


def test_export_source_images_refuses_a_link_that_now_leads_out(tiny, tmp_path, probe):
    face_id, photo, data = _swap_out(tiny, tmp_path)
    outside = photo.resolve()
    probe.watch(outside)
    res = _export(tiny.ws, tmp_path / "out")
    assert res.exit_code == 1, res.output
    msg = res.output.strip()
    assert "\n" not in msg and "Traceback" not in msg
    assert f"source image of face {face_id}" in msg and "not exported" in msg
    assert f"symlink to a file outside the photo folder ({outside})" in msg
    assert not (tmp_path / "out").exists()  # nothing written
    assert probe.forbidden_opened() == []

    # the workspace says links may lead out of this folder (ingest --follow-links): copied
    tiny.ws.set_follow_links(0, True)
    probe.watch(outside, forbid=False)
    res = _export(tiny.ws, tmp_path / "out")
    assert res.exit_code == 0, res.output
    man = pd.read_csv(tmp_path / "out" / "manifest.csv", keep_default_na=False)
    row = man.set_index("face_id").loc[face_id]
    assert (tmp_path / "out" / row["file"]).read_bytes() == data


def test_export_never_copies_a_device_even_when_following_links(tiny, tmp_path, probe):
    _swap_out(tiny, tmp_path, Path(DEVICE))
    tiny.ws.set_follow_links(0, True)
    probe.watch(DEVICE)
    res = _export(tiny.ws, tmp_path / "out")
    assert res.exit_code == 1 and "character device" in res.output and "never opened" in res.output
    assert probe.forbidden_opened() == [] and not (tmp_path / "out").exists()


def test_app_photo_reader_shows_nothing_the_fence_refuses(tiny, tmp_path, probe):
    from labeler.ui import data, photos

    kept = str(tiny.ws.faces()["face_id"].iloc[1])
    face_id, photo, data_bytes = _swap_out(tiny, tmp_path)
    outside = photo.resolve()
    os.mkfifo(tiny.source / "pipe.jpg")
    probe.watch(outside, tiny.source / "pipe.jpg", DEVICE)
    data._read_inside.cache_clear()
    photos._source_photo.clear()
    assert data.image_bytes(tiny.ws, photo) is None
    assert data.image_bytes(tiny.ws, tiny.source / "pipe.jpg") is None  # and did not block
    shown = photos.source_photo(tiny.ws, face_id)
    assert shown is not None and shown.jpeg is None  # the face's dialog: no photo
    assert photos.source_photo(tiny.ws, kept).jpeg is not None  # the others still show
    with pytest.raises(FenceError, match="outside the photo folder"):
        tiny.ws.resolve_inside(photo)
    assert probe.forbidden_opened() == []

    tiny.ws.set_follow_links(0, True)  # as ingest --follow-links records it
    probe.watch(outside, forbid=False)
    data._read_inside.cache_clear()
    photos._source_photo.clear()
    assert data.image_bytes(tiny.ws, photo) == data_bytes
    assert photos.source_photo(tiny.ws, face_id).jpeg is not None
    photo.unlink()
    photo.symlink_to(DEVICE)  # following links never reaches a device
    data._read_inside.cache_clear()
    assert data.image_bytes(tiny.ws, photo) is None
    assert probe.forbidden_opened() == []


# --- the command line ------------------------------------------------------------------------------


def test_cli_follow_links_option_is_recorded_for_export_and_the_app(zoo):
    runner = CliRunner()
    ws = str(zoo.ws.root)
    res = runner.invoke(cli, ["ingest", str(zoo.photos), "-w", ws])
    assert res.exit_code == 0, res.output
    assert "symlink to a file outside the photo folder" in res.output
    assert "pass --follow-links to read it" in res.output
    res = runner.invoke(cli, ["ingest", str(zoo.photos), "-w", ws, "--follow-links"])
    assert res.exit_code == 0, res.output
    meta = json.loads(zoo.ws.meta_path.read_text())
    assert meta["follow_links"] == meta["roots"]
    assert json.loads(zoo.ws.step_config_path("ingest").read_text())["follow_links"] is True
    for command in ("ingest", "run", "predict"):
        help_text = runner.invoke(cli, [command, "--help"]).output
        assert "--follow-links" in help_text, command


def test_labeler_run_follow_links_reaches_ingest_and_is_recorded(zoo, probe):
    probe.watch(*zoo.never())
    ws = str(zoo.ws.root)
    args = ["run", str(zoo.photos), "-w", ws, "--device", "cpu", "--no-cluster", "--follow-links"]
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 0, res.output
    assert json.loads(zoo.ws.step_config_path("run").read_text())["follow_links"] is True
    assert json.loads(zoo.ws.step_config_path("ingest").read_text())["follow_links"] is True
    rows = _rows(zoo.ws)
    assert rows.loc["out_face.png", "status"] == "ok"
    assert rows.loc["out_face.png", "image_id"] in set(zoo.ws.faces()["image_id"])
    assert probe.forbidden_opened() == []


# --- the system calls themselves ---------------------------------------------------------------------


def _strace_works() -> bool:
    if shutil.which("strace") is None:
        return False
    done = subprocess.run(["strace", "-f", "-o", os.devnull, "true"], capture_output=True)
    return done.returncode == 0  # a container may forbid ptrace


def test_a_fresh_process_opens_no_refused_file(zoo, tmp_path):
    """Ingest in a fresh interpreter, traced: with ``strace`` where it is installed and may
    trace (every ``open``/``openat`` system call, C libraries included), else with the
    audit hook installed in the child. A FIFO opened by mistake would block: the timeout
    turns that into a failure."""
    refused = [zoo.outside_face, Path("/etc/passwd"), Path(DEVICE), zoo.photos / "pipe.jpg"]
    watch = sorted(os.path.realpath(p) for p in refused)
    use_strace = _strace_works()
    script = textwrap.dedent(f"""
        import json, os, sys
        seen = []
        def hook(event, args):
            path = args[0] if event == "open" else None
            if isinstance(path, (str, bytes)) and os.path.realpath(os.fsdecode(path)) in {watch!r}:
                seen.append(os.fsdecode(path))
                raise PermissionError("open probe")
        if not {use_strace!r}:
            sys.addaudithook(hook)
        from labeler.ingest import ingest_folder
        from labeler.workspace import Workspace
        ws = Workspace.open({str(tmp_path / "ws2")!r}, create=True)
        res = ingest_folder(ws, {str(zoo.photos)!r}, workers=2)
        print(json.dumps({{"errors": res.errors, "seen": seen}}))
    """)
    log = tmp_path / "strace.txt"
    trace = ["strace", "-f", "-qq", "-e", "trace=open,openat", "-o", str(log)] if use_strace else []
    try:
        done = subprocess.run(
            [*trace, sys.executable, "-c", script], capture_output=True, text=True, timeout=300
        )
    except subprocess.TimeoutExpired:
        pytest.fail("ingest did not finish (blocked on the FIFO?)")
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"errors": 4, "seen": []}
    if use_strace:
        calls = log.read_text()
        assert "inside.png" in calls  # strace saw the photos that were read
        for path in watch:
            assert f'"{path}"' not in calls, path
        for name in ("out_face.png", "passwd.jpg", "zero.jpg", "pipe.jpg"):
            assert f'/{name}"' not in calls, name
