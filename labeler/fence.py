"""The photo folder is a fence: what lies outside it is never read unless the user asks.

One rule, used by ``labeler ingest`` (and ``run``, ``predict``), ``export --source-images``
and the app's photo view (through :meth:`labeler.workspace.Workspace.resolve_inside`):

- ``rel`` must name a path under ``root`` (not absolute, no ``..``);
- its real path (every symlink resolved, :func:`os.path.realpath`) must lie inside the real
  path of ``root``, unless ``follow_links`` (``--follow-links``, recorded per folder in the
  workspace) allows links to lead out;
- the file it resolves to must be a regular file: a device, FIFO, socket or folder is never
  opened, inside or outside, whatever ``follow_links`` says (opening a FIFO blocks forever).

The check only reads metadata: ``lstat``/``readlink`` (inside ``realpath``) and one ``stat`` of
the target (to tell a file from a device); nothing is opened. :func:`open_resolved` then
opens the checked real path without following a link swapped in since
(``O_NOFOLLOW``) and without blocking on a FIFO (``O_NONBLOCK``), and checks again that what
it opened is a regular file.

>>> resolve_inside("photos", "a/b.jpg")  # doctest: +SKIP
PosixPath('/home/me/photos/a/b.jpg')
>>> resolve_inside("photos", "x.png")  # x.png -> /etc/shadow  # doctest: +SKIP
FenceError: symlink to a file outside the photo folder (/etc/shadow); pass --follow-links ...
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from labeler.errors import LabelerError

#: What ``labeler ingest --help`` and the reasons call the option that lets links lead out.
FOLLOW_OPTION = "--follow-links"


class FenceError(LabelerError, PermissionError):
    """A photo the fence refuses to read; the message is the one-line reason (without the
    photo's own path: callers put it in front)."""


def within(path: str | os.PathLike[str], base: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is ``base`` or lies under it. Both are compared as given: pass
    normalized absolute paths (``realpath``/``abspath``), as every caller here does."""
    path, base = os.fspath(path), os.fspath(base)
    return path == base or path.startswith(base if base.endswith(os.sep) else base + os.sep)


def kind_of(mode: int) -> str:
    """``"file"``, ``"folder"``, ``"character device"``... for an ``st_mode``."""
    for test, name in (
        (stat.S_ISREG, "file"),
        (stat.S_ISDIR, "folder"),
        (stat.S_ISCHR, "character device"),
        (stat.S_ISBLK, "block device"),
        (stat.S_ISFIFO, "FIFO"),
        (stat.S_ISSOCK, "socket"),
    ):
        if test(mode):
            return name
    return "special file"


@dataclass(frozen=True)
class Fence:
    """The fence of one photo folder ``root`` (module docstring), with its ``follow_links``
    setting. Keeps the real paths of the folders it has looked at (a folder of 10,000
    photos costs one ``realpath``, not 10,000): make one per run of a command, not one that
    outlives a change to the folder tree.
    """

    root: str | os.PathLike[str]
    follow_links: bool = False
    _real_dirs: dict[str, str] = field(default_factory=dict, compare=False, repr=False)

    def _realpath(self, full: str, is_link: bool) -> str:
        """``os.path.realpath(full)``, from the cached real path of its folder when ``full``
        itself is not a link."""
        head, name = os.path.split(full)
        if not name or name in (os.curdir, os.pardir) or is_link:
            return os.path.realpath(full)
        real_head = self._real_dirs.get(head)
        if real_head is None:
            real_head = self._real_dirs[head] = os.path.realpath(head)
        return os.path.join(real_head, name)

    def resolve(self, rel: str | os.PathLike[str]) -> Path:
        """The real path of the photo ``rel`` (relative to ``root``), checked by the fence
        rule without opening anything.

        Raises :class:`FenceError` (a ``PermissionError``) with a one-line reason when the
        rule refuses it, and the ``OSError`` of ``stat`` when it cannot be looked at
        (missing file, broken link inside the folder, no permission on a folder).
        """
        return self.resolve_stat(rel)[0]

    def resolve_stat(self, rel: str | os.PathLike[str]) -> tuple[Path, os.stat_result]:
        """:meth:`resolve` and the ``stat`` of the real path it took to decide (its size and
        mtime, without a second system call)."""
        rel_s = os.fspath(rel)
        if os.path.isabs(rel_s) or os.pardir in Path(rel_s).parts:
            raise FenceError(f"{rel_s!r} is not a path inside the photo folder")
        root_real = self._real_dirs.get("\0root")  # no path holds a NUL
        if root_real is None:
            root_real = self._real_dirs["\0root"] = os.path.realpath(self.root)
        full = os.path.join(os.fspath(self.root), rel_s)
        is_link = os.path.islink(full)
        real = self._realpath(full, is_link)
        outside = not within(real, root_real)
        how = "symlink to" if is_link else "path through a folder symlink to"
        try:
            st = os.stat(real)
        except OSError as exc:
            if outside and not self.follow_links:
                raise FenceError(
                    f"broken {how} a path outside the photo folder ({real}): {exc.strerror}"
                ) from None
            raise
        kind = kind_of(st.st_mode)
        if outside and (not self.follow_links or kind != "file"):
            fix = f"pass {FOLLOW_OPTION} to read it" if kind == "file" else "never opened"
            raise FenceError(f"{how} a {kind} outside the photo folder ({real}); {fix}")
        if kind != "file":
            what = f"symlink to a {kind}" if is_link else kind
            raise FenceError(f"not a regular file ({what}); never opened")
        return Path(real), st

    def open(self, rel: str | os.PathLike[str]) -> BinaryIO:
        """:meth:`resolve` then :func:`open_resolved`: the photo open for reading."""
        return open_resolved(self.resolve(rel))


def resolve_inside(
    root: str | os.PathLike[str], rel: str | os.PathLike[str], *, follow_links: bool = False
) -> Path:
    """The real path of the photo ``rel`` of the folder ``root``, checked by the fence rule
    (module docstring) without opening anything: ``Fence(root, follow_links).resolve(rel)``.

    Raises :class:`FenceError` (a ``PermissionError``) with a one-line reason when the rule
    refuses it, and the ``OSError`` of ``stat`` when it cannot be looked at (missing file,
    broken link inside the folder, no permission on a folder).
    """
    return Fence(root, follow_links).resolve(rel)


def open_resolved(real: str | os.PathLike[str]) -> BinaryIO:
    """Open a path :func:`resolve_inside` returned, for reading bytes.

    ``O_NOFOLLOW``: a link put in its place since the check is not followed (``OSError``);
    ``O_NONBLOCK``: a FIFO put there does not block; what was opened must still be a regular
    file (else :class:`FenceError`).
    """
    flags = os.O_RDONLY | getattr(os, "O_BINARY", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    fd = os.open(real, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FenceError(f"became a {kind_of(mode)} after it was checked; never read")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def open_inside(
    root: str | os.PathLike[str], rel: str | os.PathLike[str], *, follow_links: bool = False
) -> BinaryIO:
    """:func:`resolve_inside` then :func:`open_resolved`: the photo ``rel`` of ``root``, open
    for reading, or :class:`FenceError` / ``OSError``."""
    return Fence(root, follow_links).open(rel)
