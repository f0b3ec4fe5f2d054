"""``labeler ingest``: register a folder of photos in the workspace's ``images`` table.

One row per file found (recursively; extensions in ``labeler.imageio.IMAGE_EXTENSIONS``,
any case), following ``IMAGES_SCHEMA``. ``image_id`` is the first 16 hex digits of the
SHA-1 of the file's bytes; width/height are after EXIF orientation.

What happens to each kind of file (one rule for all: accept whatever decodes to a
sensible RGB picture, refuse the rest with a one-line reason, and carry on):

=============================================  ==============================================
file                                            outcome
=============================================  ==============================================
JPEG/PNG/WebP/BMP/TIFF that decodes             ``ok``
CMYK JPEG, 16-bit PNG, grayscale, palette       ``ok``: converted to 8-bit RGB when read
RGBA / LA / transparent palette                 ``ok``: alpha composited on white when read
the same bytes as an earlier file               ``duplicate``, ``duplicate_of`` = first path
empty file                                      ``error``: "empty file (0 bytes)"
truncated or corrupt image                      ``error``: the decoder's message
not an image (e.g. text named .jpg)             ``error``: "not an image ..."
more pixels than ``PIL.Image.MAX_IMAGE_PIXELS`` ``error``: refused before decoding (bomb guard)
unreadable (permissions, broken symlink)        ``error``: the OS error; ``image_id`` is
                                                ``path:<sha1 of the path>``
not a regular file (FIFO, socket, device)       ``error``: never opened (a FIFO would block)
symlink leading out of the folder               ``error``: never opened, "pass --follow-links"
                                                (with it: read as any file, unless it is a
                                                device, FIFO, socket or folder)
file name that is not valid UTF-8               ``error``: "rename it"; every later step must
                                                reopen files by the stored UTF-8 ``path``, so
                                                such names are refused, shown with ``\\xNN``
=============================================  ==============================================

The folder is a fence (:mod:`labeler.fence`, the rule export and the app apply too): a file
whose real path (symlinks resolved) lies outside the folder is recorded as an ``error`` with
the link's target and never opened, hashed or decoded, unless ``follow_links``
(``--follow-links``) says links may lead out. The setting is kept per folder in the
workspace; changing it re-checks every file. Symlinked folders are not entered, unless
``follow_links`` (then each real folder once: a link loop ends).

Decodability is checked with the same decoder the later steps use
(:func:`labeler.imageio.decode_image`), at a reduced DCT scale for JPEGs, so a file that
passes here decodes in ``detect``. ``labeler run`` skips that decode (``verify_side=0``:
header only) because its detect step decodes every photo anyway: a photo whose pixels turn
out damaged there gets its ``error`` row then (:func:`record_unreadable`), one decode
instead of two per photo.

Re-running is incremental: files whose ``(size, mtime)`` are unchanged are skipped, changed
files are re-read in place, new files are appended (sorted by path). Duplicates are
re-derived over the whole table each run (the first ``ok`` copy in table order keeps
``ok``). Rows of files that have disappeared are kept (their faces may be labeled); a kept
row whose file the fence refuses now (a folder link no longer entered) becomes an ``error``.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import os
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import pandas as pd

from labeler.errors import InputError, NotFoundError
from labeler.fence import FOLLOW_OPTION, Fence, FenceError, open_resolved, within
from labeler.imageio import (
    IMAGE_EXTENSIONS,
    ImageDecodeError,
    decode_image,
    display_path,
    image_size,
)
from labeler.workspace import IMAGES_SCHEMA, Workspace

log = logging.getLogger(__name__)

WORKSPACE_MARKER = "workspace.json"

#: Decode size used to check that a file is usable (JPEG: 1/8 DCT scale of a 1024 image);
#: 0: read the header only (the caller decodes every photo next, see record_unreadable).
VERIFY_SIDE = 128
#: Largest photo read (MiB; env ``LABELER_MAX_FILE_MB``): bigger files get an error row unread.
#: Files are hashed by streaming and decoded from the open file, so memory does not depend on
#: this limit or on the files' sizes; it bounds the time spent hashing one file.
MAX_FILE_MB = 512
_BLOCK = 1 << 20


@dataclass(frozen=True)
class IngestConfig:
    """The resolved options of an ingest run (saved as ``steps/ingest.json``)."""

    folder: str
    root: int
    extensions: tuple[str, ...]
    workers: int
    verify_side: int = VERIFY_SIDE
    follow_links: bool = False  # links may lead out of the folder (labeler.fence)


@dataclass(frozen=True)
class IngestResult:
    """Counts of one ingest run. ``new + changed == ok + errors + duplicates``."""

    scanned: int  # image files found under the folder
    new: int  # files not in the table before
    changed: int  # files whose size or mtime changed since the last run
    ok: int  # processed files that are usable images
    errors: int  # processed files refused (reason in the ``error`` column)
    duplicates: int  # processed files whose bytes equal an earlier file's
    skipped_unchanged: int  # files with the same (size, mtime) as last run
    missing: int  # rows of this root whose file has disappeared (kept)
    root: int  # index of the folder in workspace.json "roots"


def scan_images(
    folder: Path, *, skip: Path | None = None, follow_links: bool = False
) -> Iterator[str]:
    """Relative paths (``os.sep`` separated, surrogate-escaped if not UTF-8) of the image
    files under ``folder``, recursively (an explicit stack: any depth), sorted by their
    bytes. Symlinked directories are not entered unless ``follow_links``, and then only
    those that lead out of ``folder`` (the others' files are listed where they are), each
    real directory once, so a link loop ends; hidden files and folders (leading
    ``.``), labeler workspaces (folders holding ``workspace.json``) and ``skip`` are skipped.
    File links are listed like files: :func:`labeler.fence.resolve_inside` judges them."""
    found: list[str] = []
    skip_real = os.path.realpath(skip) if skip is not None else None
    folder_real = os.path.realpath(folder)
    seen: set[str] = set()  # real paths of the folder links entered
    stack = [os.fspath(folder)]
    while stack:
        dirpath = stack.pop()
        try:
            with os.scandir(dirpath) as it:
                entries = sorted(it, key=lambda e: os.fsencode(e.name))
        except OSError as exc:
            log.warning("cannot list %s: %s", display_path(dirpath), exc.strerror)
            continue
        names = {e.name for e in entries}
        if dirpath != os.fspath(folder) and WORKSPACE_MARKER in names:
            log.info("skipping the labeler workspace %s", display_path(dirpath))
            continue
        for e in entries:
            if e.name.startswith("."):  # hidden files, macOS "._x.jpg" resource forks
                continue
            try:
                is_dir = e.is_dir(follow_symlinks=False)
                dir_link = not is_dir and e.is_symlink() and e.is_dir()
            except OSError:
                is_dir = dir_link = False
            if dir_link:
                real = os.path.realpath(e.path)
                if not follow_links:
                    log.info(
                        "not entering the folder link %s -> %s (pass %s to enter it)",
                        display_path(e.path),
                        display_path(real),
                        FOLLOW_OPTION,
                    )
                    continue
                if real in seen or within(real, folder_real):
                    log.info("%s: folder link listed already", display_path(e.path))
                    continue
                seen.add(real)
                is_dir = True
            if is_dir:
                if skip_real is None or os.path.realpath(e.path) != skip_real:
                    stack.append(e.path)
                else:
                    log.info("skipping the workspace %s inside the photo folder", e.path)
            elif os.path.splitext(e.name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(os.path.relpath(e.path, folder))
    yield from sorted(found, key=os.fsencode)


def _utf8_ok(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _posix(rel: str) -> str:
    return display_path(rel).replace(os.sep, "/")


def _error_row(root: int, rel: str, size: int, mtime: float, reason: str, image_id: str) -> dict:
    return {
        "image_id": image_id,
        "root": root,
        "path": _posix(rel),
        "size_bytes": size,
        "mtime": mtime,
        "width": 0,
        "height": 0,
        "status": "error",
        "error": reason,
        "duplicate_of": None,
    }


def _path_id(root: int, rel: str) -> str:
    return "path:" + hashlib.sha1(f"{root}/{_posix(rel)}".encode()).hexdigest()[:16]


def _max_file_bytes() -> int:
    """Size limit of one photo: ``LABELER_MAX_FILE_MB`` (default 512 MiB)."""
    try:
        return int(float(os.environ.get("LABELER_MAX_FILE_MB", MAX_FILE_MB)) * 2**20)
    except ValueError:
        return MAX_FILE_MB * 2**20


def _hash_checked(fh: BinaryIO, max_bytes: int) -> tuple[str, int, bool]:
    """``(image_id, bytes read, starts like an image)`` of an open file, hashed by streaming
    it through one reused 1 MiB buffer: memory does not depend on the file's size.

    The header is checked first: a file that does not start like an image is never read
    further (its id is ``path:`` + the hash of its first block). Reading stops at
    ``max_bytes`` (a file that grows while read is hashed up to there).
    """
    from labeler.imageio import looks_like_image

    sha = hashlib.sha1()
    buf = bytearray(_BLOCK)
    view = memoryview(buf)
    n = fh.readinto(buf)
    sha.update(view[:n])
    if n and not looks_like_image(bytes(view[:16])):
        return "path:" + sha.hexdigest()[:16], n, False
    total = n
    while n and total < max_bytes:
        n = fh.readinto(view[: min(_BLOCK, max_bytes - total)])
        sha.update(view[:n])
        total += n
    return sha.hexdigest()[:16], total, True


def content_id(path: str | os.PathLike[str]) -> str:
    """The ``image_id`` ingest gives the file at ``path`` (first 16 hex of its SHA-1, streamed,
    up to the size limit), so a copy found anywhere else (a team's class folders) is known
    by its bytes; ``path:...`` for a file that does not start like an image. ``OSError`` when
    it cannot be read. The caller checks it is a regular file (a FIFO would block)."""
    with open(path, "rb") as fh:
        return _hash_checked(fh, _max_file_bytes())[0]


def _link_state(full: str) -> tuple[int, float]:
    """``(size, mtime)`` of the entry itself (a link's own, not its target's)."""
    try:
        lst = os.lstat(full)
    except OSError:
        return 0, 0.0
    return int(lst.st_size), float(lst.st_mtime)


def _file_state(fence: Fence, rel: str) -> tuple[int, float]:
    """``(size, mtime)`` as :func:`_read_one` records it: the file's when the fence lets it
    be read, else the entry's own (a refused link's target is looked at, never recorded)."""
    try:
        _, st = fence.resolve_stat(rel)
    except OSError:  # FenceError too
        return _link_state(os.path.join(fence.root, rel))
    return int(st.st_size), float(st.st_mtime)


def _fenced_off(fence: Fence, rel: str) -> bool:
    """Whether the fence refuses ``rel`` (a missing file is not refused: its row is kept)."""
    try:
        fence.resolve(rel)
    except FenceError:
        return True
    except OSError:
        return False
    return False


def _read_one(
    folder: Path | Fence, root: int, rel: str, verify_side: int, max_bytes: int | None = None
) -> dict:
    """The images-table row of one file (never raises for a bad file). Nothing the fence of
    the folder (:class:`labeler.fence.Fence`; a bare folder: links may not lead out) refuses
    is opened."""
    fence = folder if isinstance(folder, Fence) else Fence(folder)
    full = os.path.join(fence.root, rel)
    shown = _posix(rel)
    max_bytes = _max_file_bytes() if max_bytes is None else max_bytes
    try:
        real, st = fence.resolve_stat(rel)
    except FenceError as exc:
        size, mtime = _link_state(full)
        return _error_row(root, rel, size, mtime, f"{shown}: {exc}", _path_id(root, rel))
    except OSError as exc:
        size, mtime = _link_state(full)
        why = "broken symlink" if os.path.islink(full) else "cannot stat"
        reason = f"{shown}: {why} ({exc.strerror})"
        return _error_row(root, rel, size, mtime, reason, _path_id(root, rel))
    size, mtime = int(st.st_size), float(st.st_mtime)
    if not _utf8_ok(rel):
        reason = f"{shown}: file name is not valid UTF-8; rename the file and ingest again"
        return _error_row(root, rel, size, mtime, reason, _path_id(root, rel))
    if size > max_bytes:
        reason = (
            f"{shown}: {size / 2**20:,.0f} MiB is over the {max_bytes / 2**20:,.0f} MiB limit "
            "for one photo; skipped without reading it (raise LABELER_MAX_FILE_MB if genuine)"
        )
        return _error_row(root, rel, size, mtime, reason, _path_id(root, rel))
    try:
        with open_resolved(real) as fh:
            image_id, n_read, looks_ok = _hash_checked(fh, max_bytes)
            if not looks_ok:
                reason = (
                    f"{shown}: not an image (the first bytes are no "
                    "JPEG/PNG/WebP/BMP/TIFF/GIF header)"
                )
                return _error_row(root, rel, size, mtime, reason, image_id)
            if n_read == 0:
                reason = f"{shown}: empty file (0 bytes)"
                return _error_row(root, rel, size, mtime, reason, image_id)
            fh.seek(0)  # the decoder reads from the file what it needs, never all of it
            try:
                if verify_side:
                    dec = decode_image(fh, max_side=verify_side, name=shown)
                    width, height = dec.width, dec.height
                else:
                    width, height, _ = image_size(fh, name=shown)
            except ImageDecodeError as exc:
                return _error_row(root, rel, size, mtime, str(exc), image_id)
    except FenceError as exc:  # swapped for a FIFO or device since the check
        return _error_row(root, rel, size, mtime, f"{shown}: {exc}", _path_id(root, rel))
    except OSError as exc:
        reason = f"{shown}: cannot read ({exc.strerror or exc})"
        return _error_row(root, rel, size, mtime, reason, _path_id(root, rel))
    return {
        "image_id": image_id,
        "root": root,
        "path": shown,
        "size_bytes": size,
        "mtime": mtime,
        "width": width,
        "height": height,
        "status": "ok",
        "error": None,
        "duplicate_of": None,
    }


#: Many cores and many files: read/hash/verify in processes (threads contend for the GIL
#: between the C calls; on 16 cores they top out near 600 files/s).
PROCESS_MIN_CORES = 8
PROCESS_MIN_FILES = 2000


def _read_all(
    folder: Path | Fence, root: int, todo: list[str], n_workers: int, verify_side: int = VERIFY_SIDE
) -> list[dict]:
    """Rows of ``todo`` in order: threads, or processes on big machines and big folders."""
    cores = os.cpu_count() or 1
    work = functools.partial(_read_one, folder, root, verify_side=verify_side)
    from labeler._io import progress_bar

    rows: list[dict] = []
    with progress_bar(len(todo), desc="ingest", unit="img") as bar:
        if cores >= PROCESS_MIN_CORES and len(todo) >= PROCESS_MIN_FILES:
            import multiprocessing

            ctx = multiprocessing.get_context("forkserver")  # no fork of a threaded parent
            with ProcessPoolExecutor(max_workers=cores, mp_context=ctx) as procs:
                for row in procs.map(work, todo, chunksize=64):
                    rows.append(row)
                    bar.update(1)
            return rows
        with ThreadPoolExecutor(max_workers=n_workers, thread_name_prefix="ingest") as pool:
            for row in pool.map(work, todo):
                rows.append(row)
                bar.update(1)
    return rows


def mark_duplicates(images: pd.DataFrame) -> pd.DataFrame:
    """Re-derive ``duplicate`` status over the whole table: among rows that decode
    (``ok`` or ``duplicate``) with one ``image_id``, the first in table order is ``ok``, the
    others ``duplicate`` with ``duplicate_of`` = its path."""
    df = images.copy()
    df["status"] = df["status"].astype(object)
    df["duplicate_of"] = df["duplicate_of"].astype(object)
    usable = df["status"].isin(["ok", "duplicate"])
    first_path = df[usable].drop_duplicates("image_id").set_index("image_id")["path"]
    dup = df.index.isin(df.index[usable][df[usable].duplicated("image_id").to_numpy()])
    df.loc[usable, "status"] = "ok"
    df.loc[usable, "duplicate_of"] = None
    df.loc[dup, "status"] = "duplicate"
    if dup.any():
        df.loc[dup, "duplicate_of"] = df.loc[dup, "image_id"].map(first_path).to_numpy(object)
    return df


def ingest_folder(
    ws: Workspace,
    folder: str | os.PathLike[str],
    *,
    workers: int | None = None,
    verify_side: int = VERIFY_SIDE,
    follow_links: bool | None = None,
) -> IngestResult:
    """Add the images under ``folder`` to ``ws``'s images table (see the module docstring).

    ``workers`` threads (default ``min(8, cpu count + 2)``) read, hash and verify files.
    ``verify_side``: the decode that checks each file (0: header only, for a caller that
    decodes every photo next and calls :func:`record_unreadable`). ``follow_links``: links
    may lead out of ``folder`` (:mod:`labeler.fence`); ``None`` keeps what the workspace
    recorded for this folder (False for a new one). The setting is recorded in the
    workspace (export and the app apply it) and in ``steps/ingest.json``; a change re-reads
    every file.

    >>> ws = Workspace.open("ws", create=True)  # doctest: +SKIP
    >>> ingest_folder(ws, "photos").ok  # doctest: +SKIP
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise NotFoundError(f"{folder} is not a folder; give the folder of images to ingest")
    if folder.resolve() == ws.root.resolve():
        raise InputError(
            f"the workspace {ws.root} is the photo folder itself; give -w a separate folder "
            "(e.g. next to the photos)"
        )
    t0 = time.perf_counter()
    root = ws.add_root(folder)
    folder = ws.roots()[root]
    n_workers = workers or min(8, (os.cpu_count() or 1) + 2)
    was_following = ws.follows_links(root)
    follow = was_following if follow_links is None else bool(follow_links)
    ws.set_follow_links(root, follow)
    ws.save_step_config(
        "ingest",
        IngestConfig(
            str(folder),
            root,
            tuple(sorted(IMAGE_EXTENSIONS)),
            n_workers,
            int(verify_side),
            follow,
        ),
    )

    images = ws.images()
    mine = images["root"] == root
    known = {
        p: (i, int(s), float(m))
        for i, p, s, m in zip(
            images.index[mine],
            images.loc[mine, "path"],
            images.loc[mine, "size_bytes"],
            images.loc[mine, "mtime"],
            strict=True,
        )
    }
    scanned = list(scan_images(folder, skip=ws.root, follow_links=follow))
    fence = Fence(folder, follow)
    todo: list[str] = []
    skipped = 0
    for rel in scanned:
        prev = known.get(_posix(rel))
        # unchanged, and the fence decides as before (a link swapped to lead out is re-read)
        if prev is not None and follow == was_following and _file_state(fence, rel) == prev[1:]:
            skipped += 1
            continue
        todo.append(rel)
    # rows kept for files the scan no longer lists (e.g. under a folder link not entered
    # any more) are refused too when the fence refuses them now; their files stay unopened
    listed = set(_posix(r) for r in scanned)
    status = images["status"]
    for path, prev in known.items():
        rel = path.replace("/", os.sep)
        if path in listed or not _fenced_off(fence, rel):
            continue
        same = follow == was_following and _file_state(fence, rel) == prev[1:]
        if not (same and status[prev[0]] == "error"):  # not refused already
            todo.append(rel)
    rows = _read_all(fence, root, todo, n_workers, int(verify_side))

    changed_idx, changed_rows, new_rows = [], [], []
    for rel, row in zip(todo, rows, strict=True):
        prev = known.get(_posix(rel))
        if prev is None:
            new_rows.append(row)
        else:
            changed_idx.append(prev[0])
            changed_rows.append(row)
    if changed_rows:  # replace in place: rows keep their position in the table
        records = images.to_dict("records")
        for i, row in zip(changed_idx, changed_rows, strict=True):
            records[images.index.get_loc(i)] = row
        images = pd.DataFrame(records, columns=IMAGES_SCHEMA.names)
    if new_rows:
        new_df = pd.DataFrame(new_rows, columns=IMAGES_SCHEMA.names)
        images = new_df if images.empty else pd.concat([images, new_df], ignore_index=True)
    images = mark_duplicates(images.reset_index(drop=True))
    if todo or not ws.images_path.exists():
        ws.write_images(images)

    processed = set(_posix(r) for r in todo)
    done = images[(images["root"] == root) & images["path"].isin(processed)]
    present = set(_posix(r) for r in scanned) | processed
    result = IngestResult(
        scanned=len(scanned),
        new=len(new_rows),
        changed=len(changed_rows),
        ok=int((done["status"] == "ok").sum()),
        errors=int((done["status"] == "error").sum()),
        duplicates=int((done["status"] == "duplicate").sum()),
        skipped_unchanged=skipped,
        missing=sum(1 for p in known if p not in present),
        root=root,
    )
    log.info(
        "ingest %s: %d files, %d new, %d changed, %d ok, %d errors, %d duplicates, "
        "%d unchanged (%.1fs)",
        folder,
        result.scanned,
        result.new,
        result.changed,
        result.ok,
        result.errors,
        result.duplicates,
        result.skipped_unchanged,
        time.perf_counter() - t0,
    )
    return result


def record_unreadable(ws: Workspace, errors: dict[str, str]) -> int:
    """Mark the ``ok`` images ``errors`` names (``image_id -> one-line reason``, e.g. photos
    whose pixels failed to decode in ``detect`` after a header-only ingest) as ``error`` rows
    with that reason; returns how many changed. Duplicates of such a photo (same bytes) are
    marked too."""
    if not errors:
        return 0
    images = ws.images()
    hit = images["image_id"].isin(list(errors)) & images["status"].isin(["ok", "duplicate"])
    if not hit.any():
        return 0
    images = images.copy()
    images["status"] = images["status"].astype(object)
    images["error"] = images["error"].astype(object)
    images.loc[hit, "status"] = "error"
    images.loc[hit, "error"] = images.loc[hit, "image_id"].map(errors).to_numpy(object)
    images.loc[hit, "duplicate_of"] = None
    ws.write_images(images)
    for iid in images.loc[hit, "image_id"].unique():
        log.warning("%s", errors[iid])
    return int(hit.sum())
