"""Put a finished folder in place of another in one atomic step, so that a process killed at
any instant leaves the previous folder or the new one complete: never neither, never half.

A writer fills a hidden stage beside the target (:func:`make_stage`:
``.NAME.<pid>.<hex>.tmp`` next to ``NAME``), then :func:`publish` switches it in:

* no ``NAME`` yet: one ``rename(2)``;
* ``NAME`` there (``export --force``, a run trained again under its id): one
  ``renameat2(RENAME_EXCHANGE)`` (Linux 3.15+; ext4, xfs, btrfs, tmpfs, f2fs, overlayfs...)
  swaps the two names at once, and the previous folder, now under a hidden name, is removed;
* where the kernel or the filesystem cannot exchange (another OS, some network or FUSE
  filesystems), two renames: ``NAME`` -> ``.NAME.<pid>.<hex>.prev``, then the stage ->
  ``NAME``. A kill between them leaves the previous folder complete under the hidden name,
  and :func:`recover` (the next writer runs it first) puts it back.

:func:`remove_stale_stages` removes what a killed writer left (stages whose pid runs no
process on this machine). Nothing here knows what the folders hold.

>>> stage = make_stage(out)                      # doctest: +SKIP
>>> write_everything_into(stage)                 # doctest: +SKIP
>>> discard(publish(stage, out))                 # doctest: +SKIP
"""

from __future__ import annotations

import ctypes
import errno
import functools
import os
import platform
import re
import secrets
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

from labeler._io import pid_alive

__all__ = [
    "ExchangeUnsupported",
    "discard",
    "exchange",
    "fsync_tree",
    "make_stage",
    "publish",
    "publish_by_renames",
    "recover",
    "remove_stale_stages",
]

RENAME_EXCHANGE = 2  # linux/fs.h
_AT_FDCWD = -100
#: renameat2's syscall number where libc has no wrapper (glibc < 2.28, musl < 1.2.?)
_SYS_RENAMEAT2 = {"x86_64": 316, "aarch64": 276, "arm64": 276, "riscv64": 276, "ppc64le": 357}
#: the errno values of "this kernel or filesystem cannot exchange": fall back to two renames
_NO_EXCHANGE = {errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP, getattr(errno, "ENOTSUP", -1)}


class ExchangeUnsupported(OSError):
    """The kernel or the filesystem cannot swap two names in one step."""


def _stage_re(name: str | None) -> re.Pattern[str]:
    who = re.escape(name) if name is not None else ".+?"
    # pid is optional: stages of labeler versions before it was in the name count as stale
    return re.compile(
        rf"^\.(?P<name>{who})\.(?:(?P<pid>\d{{1,7}})\.)?[0-9a-f]{{8}}\.(?P<kind>tmp|prev)$"
    )


def _hidden(target: Path, kind: str) -> Path:
    return target.parent / f".{target.name}.{os.getpid()}.{secrets.token_hex(4)}.{kind}"


def make_stage(target: str | os.PathLike[str]) -> Path:
    """A new empty hidden folder ``.NAME.<pid>.<hex>.tmp`` beside ``target`` (same filesystem,
    so it can be renamed into place), made with the umask-derived mode of an ordinary
    ``mkdir`` (``tempfile.mkdtemp`` would make it 0700, and the stage becomes the target)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    while True:
        stage = _hidden(target, "tmp")
        try:
            stage.mkdir()
            return stage
        except FileExistsError:
            continue


@functools.cache
def _libc_renameat2() -> Callable[[int, bytes, int, bytes, int], int] | None:
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "renameat2", None)
    if fn is not None:
        fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
        fn.restype = ctypes.c_int
        return fn  # type: ignore[no-any-return]
    number = _SYS_RENAMEAT2.get(platform.machine())
    if number is None:
        return None
    syscall = libc.syscall
    syscall.restype = ctypes.c_long

    def via_syscall(olddir: int, old: bytes, newdir: int, new: bytes, flags: int) -> int:
        return int(
            syscall(
                ctypes.c_long(number),
                ctypes.c_int(olddir),
                ctypes.c_char_p(old),
                ctypes.c_int(newdir),
                ctypes.c_char_p(new),
                ctypes.c_uint(flags),
            )
        )

    return via_syscall


def exchange(a: str | os.PathLike[str], b: str | os.PathLike[str]) -> None:
    """Swap the names ``a`` and ``b`` (both must exist, on one filesystem) in one step.

    Raises :class:`ExchangeUnsupported` where the kernel or the filesystem cannot, another
    ``OSError`` (naming ``b``) for the rest (permissions, a missing path)."""
    fn = _libc_renameat2()
    if fn is None:
        raise ExchangeUnsupported(errno.ENOSYS, "renameat2 is not available", str(b))
    if fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE) != 0:
        err = ctypes.get_errno()
        cls = ExchangeUnsupported if err in _NO_EXCHANGE else OSError
        raise cls(err, os.strerror(err), str(b))


def publish(stage: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path | None:
    """Put the finished folder ``stage`` at ``target`` in one atomic step (see the module doc).

    Returns where the previous ``target`` now is (a hidden sibling, for :func:`discard`), or
    None when there was none. ``stage`` and ``target`` must be on one filesystem (siblings)."""
    stage, target = Path(stage), Path(target)
    if not os.path.lexists(target):
        os.rename(stage, target)
        return None
    try:
        exchange(stage, target)
    except ExchangeUnsupported:
        return publish_by_renames(stage, target)
    return stage


def publish_by_renames(stage: str | os.PathLike[str], target: str | os.PathLike[str]) -> Path:
    """:func:`publish`'s fallback where names cannot be exchanged: ``target`` ->
    ``.NAME.<pid>.<hex>.prev``, then ``stage`` -> ``target``. Returns the ``.prev``."""
    stage, target = Path(stage), Path(target)
    prev = _hidden(target, "prev")
    os.rename(target, prev)  # a kill here: recover() puts prev back
    os.rename(stage, target)
    return prev


def discard(path: str | os.PathLike[str] | None) -> None:
    """Remove a folder :func:`publish` swapped out (or a stage given up); None is a no-op."""
    if path is not None and os.path.lexists(path):
        if Path(path).is_dir() and not Path(path).is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            Path(path).unlink(missing_ok=True)


def recover(target: str | os.PathLike[str]) -> Path | None:
    """Put back the previous ``target`` when a writer was killed between the two renames of
    :func:`publish`'s fallback (``target`` missing, its ``.prev`` there). Returns what was
    restored, or None."""
    target = Path(target)
    if os.path.lexists(target) or not target.parent.is_dir():
        return None
    pattern = _stage_re(target.name)
    prevs = []
    for entry in os.scandir(target.parent):
        m = pattern.match(entry.name)
        if m is None or not entry.is_dir(follow_symlinks=False):
            continue
        if m["kind"] == "prev" and not pid_alive(int(m["pid"] or 0)):
            prevs.append(Path(entry.path))
    if not prevs:
        return None
    newest = max(prevs, key=lambda p: p.stat(follow_symlinks=False).st_mtime_ns)
    os.rename(newest, target)
    return newest


def remove_stale_stages(folder: str | os.PathLike[str], name: str | None = None) -> list[Path]:
    """Remove the stages (``.NAME.<pid>.<hex>.tmp``) and swapped-out folders (``.prev``) that
    a killed writer left in ``folder`` (for target ``name`` only when given): folders whose
    pid runs no process on this machine. Run :func:`recover` first: a ``.prev`` whose target is
    missing is the only complete copy and is kept. Returns what was removed."""
    folder = Path(folder)
    pattern = _stage_re(name)
    removed = []
    try:
        entries = list(os.scandir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return removed
    for entry in entries:
        m = pattern.match(entry.name) if entry.name.startswith(".") else None
        # folders only: the atomic writes of labeler._io leave files with names alike
        if m is None or not entry.is_dir(follow_symlinks=False):
            continue
        if pid_alive(int(m["pid"] or 0)):
            continue
        if m["kind"] == "prev" and not os.path.lexists(folder / m["name"]):
            continue
        discard(entry.path)
        removed.append(Path(entry.path))
    return removed


def fsync_tree(root: str | os.PathLike[str]) -> None:
    """Flush every file and folder under ``root`` to disk (before it is published, so that a
    power cut after the switch cannot leave empty files under the new name). For folders of
    a few files (a model run, a cluster run); an export of many files skips it."""
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
