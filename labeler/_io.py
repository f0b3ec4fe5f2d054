"""Low-level I/O every layer may use: atomic file writes and the progress bar on stderr.

A write goes to a temporary file in the destination's folder (``.<name>.<pid>.<thread>.<hex>.tmp``)
and is renamed over the destination with :func:`os.replace`, so a crash or a full disk leaves
either the old file or the complete new one, never half a file; the temporary file is removed
when the write fails. Files get the permissions of an ordinary ``open`` (the umask applies).
Safe from several threads and processes at once (each write has its own temporary name).

* :func:`atomic_write_bytes` - bytes in memory (JSON, CSV, ``.npz``, crops, checkpoints).
* :func:`atomic_path` - for writers that want a file name (Parquet, ONNX export).
* :func:`temp_path` - a temporary name beside a file, always cleaned up, for writers that
  publish it themselves (the label store links a new db into place, a backup is renamed
  after the snapshot names its last event); SQLite's side files are removed with it.
* :func:`remove_stale_temps` - remove the temporary files a killed process left (its pid,
  in the name, is not running any more), e.g. ``labeler detect`` in ``crops/`` before it runs.
* :func:`progress_bar` - the one progress bar of a long step (faces embedded, trained on,
  predicted): tqdm on stderr, imported when a bar is made (``labeler --help`` loads no tqdm).

>>> atomic_write_bytes(Path("out/report.json"), b"{}")  # doctest: +SKIP
>>> with atomic_path(Path("out/table.parquet")) as tmp:  # doctest: +SKIP
...     pq.write_table(table, tmp)
"""

from __future__ import annotations

import errno
import os
import re
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "SQLITE_SIDE_FILES",
    "atomic_path",
    "atomic_write_bytes",
    "pid_alive",
    "progress_bar",
    "remove_stale_temps",
    "temp_path",
]

SQLITE_SIDE_FILES = ("-wal", "-shm", "-journal")  # what SQLite may leave beside a database


def _temp_name(path: Path) -> Path:
    return path.with_name(
        f".{path.name}.{os.getpid()}.{threading.get_ident()}.{uuid.uuid4().hex[:8]}.tmp"
    )


#: What :func:`_temp_name` makes (and SQLite's side files of one): the writer's pid is group 1.
TEMP_NAME = re.compile(r"^\..+\.(\d+)\.\d+\.[0-9a-f]{8}\.tmp(?:-wal|-shm|-journal)?$")
#: A temporary file this old is stale even when a process with its pid runs (pids are reused;
#: the writes that make them, a crop or a table, take well under a second).
STALE_TEMP_AGE_S = 3600.0


def pid_alive(pid: int) -> bool:
    """Whether a process with ``pid`` runs on this machine (of any user)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except OSError as exc:
        return exc.errno == errno.EPERM  # it exists, it is someone else's
    return True


def remove_stale_temps(
    folder: str | os.PathLike[str],
    *,
    recursive: bool = False,
    max_age_s: float = STALE_TEMP_AGE_S,
) -> list[Path]:
    """Remove the temporary files of :func:`atomic_write_bytes` / :func:`atomic_path` /
    :func:`temp_path` (``.<name>.<pid>.<thread>.<hex>.tmp``) in ``folder`` (and its subfolders
    with ``recursive``) that a killed process left: those whose pid runs no process on this
    machine, and those older than ``max_age_s`` whatever their pid. A write in flight in a
    running process is never touched. Returns the files removed; a missing ``folder`` has none.

    One ``os.scandir`` pass that looks only at names starting with ``.``: about 0.1 s per
    100,000 crops. A folder shared by several machines is not supported (a pid is
    only checked on this one)."""
    removed: list[Path] = []
    now = time.time()
    alive: dict[int, bool] = {}
    stack = [Path(folder)]
    while stack:
        try:
            entries = list(os.scandir(stack.pop()))
        except (FileNotFoundError, NotADirectoryError):
            continue
        for entry in entries:
            if recursive and entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
                continue
            match = TEMP_NAME.match(entry.name) if entry.name.startswith(".") else None
            if match is None or not entry.is_file(follow_symlinks=False):
                continue
            pid = int(match.group(1))
            if pid not in alive:
                alive[pid] = pid_alive(pid)
            try:
                old = now - entry.stat(follow_symlinks=False).st_mtime > max_age_s
                if alive[pid] and not old:
                    continue
                os.unlink(entry.path)
            except FileNotFoundError:  # its writer renamed or removed it meanwhile
                continue
            removed.append(Path(entry.path))
    return removed


@contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; when the block ends without an exception the
    file written there replaces ``path`` (fsynced first when ``fsync``), otherwise it is
    removed. The block must create the file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temp_name(path)
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Write ``data`` to ``path`` atomically. ``fsync=True`` (default) also flushes the bytes
    to disk before the rename, so a power cut cannot leave an empty file under the new name;
    bulk writers that can redo their work (crops) pass ``fsync=False``. A failed write (full
    disk, file-size limit) raises an ``OSError`` that names ``path`` (writes through a file
    descriptor name no file)."""
    with atomic_path(path) as tmp:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                if fsync:
                    fh.flush()
                    os.fsync(fh.fileno())
        except OSError as exc:
            if exc.filename is None:
                raise OSError(exc.errno, exc.strerror, str(path)) from exc
            raise


@contextmanager
def temp_path(path: str | os.PathLike[str], *, side_files: tuple[str, ...] = ()) -> Iterator[Path]:
    """Yield a fresh temporary name beside ``path`` (no file is created). When the block
    ends, however it ends, whatever is still at that name is removed, and so are the
    ``name + suffix`` files for each of ``side_files`` (e.g. SQLite's ``-wal``, ``-shm``).
    The block publishes the file itself (``os.replace`` / ``os.link``) when it succeeds."""
    tmp = _temp_name(Path(path))
    try:
        yield tmp
    finally:
        for suffix in ("", *side_files):
            Path(f"{tmp}{suffix}").unlink(missing_ok=True)


#: the command line's ``--progress/--no-progress`` (``-q``: False); None: bars on a terminal
PROGRESS: bool | None = None


def progress_bar(total: int, *, desc: str, enabled: bool | None = None, unit: str = "face") -> Any:
    """A tqdm bar of ``total`` faces on stderr, labelled ``desc`` (rate and time left).
    ``enabled``: True always, False never, None as the command line asked (:data:`PROGRESS`),
    else only when stderr is a terminal. Use it as a context manager or call ``close()``;
    ``update(n)`` after each batch."""
    from tqdm.auto import tqdm

    if enabled is None:
        enabled = PROGRESS

    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=None if enabled is None else not enabled,
        smoothing=0.1,
        dynamic_ncols=True,
    )
