"""Face records handed from detection to the embedder in memory: the one stream's queue.

``labeler run`` and ``labeler predict`` detect and embed at the same time. A detection
engine (the CPU threads of :mod:`labeler.detect.pipeline`, the fused GPU pass) turns each
photo into :class:`FaceCrops` records: the face's id and its crops as pixels (the
landmark-aligned crop and, when a feature block needs it, the box crop). It writes the crop
files for the app once and :meth:`FaceQueue.put` s the same pixels here; the one embedding
loop (:func:`labeler.embeddings.embed.embed_stream`) takes them in batches and computes every
feature block from them, so no crop is decoded again for features.

The queue is bounded (``capacity`` faces, ~400 KB each with both crops): a detect thread
that runs ahead of the model waits in :meth:`FaceQueue.put` instead of filling memory, and
one that finds the queue closed (the embedder stopped on an error) drops its faces, which a
later run embeds from the crop files.

>>> q = FaceQueue(capacity=4)
>>> q.put([FaceCrops("f1", np.zeros((256, 256, 3), np.uint8))])
True
>>> q.close()
>>> [[f.face_id for f in b] for b in q.batches(8)]
[['f1']]
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np

KINDS = ("aligned", "box")


@dataclass(frozen=True, eq=False)
class FaceCrops:
    """One face's crops in memory: ``aligned`` (S, S, 3) uint8 on the landmark template
    (:mod:`labeler.faces.regions`), ``box`` the upright detection box + margin crop
    (:mod:`labeler.faces.boxcrops`) or None when no feature block asked for it."""

    face_id: str
    aligned: np.ndarray
    box: np.ndarray | None = None

    def crop(self, kind: str) -> np.ndarray:
        """The crop of ``kind`` (``aligned`` or ``box``); ValueError naming the face when absent."""
        img = self.aligned if kind == "aligned" else self.box
        if img is None:
            raise ValueError(f"face {self.face_id} has no {kind} crop in memory")
        return img


class FaceQueue:
    """A bounded, thread-safe FIFO of :class:`FaceCrops` between detection and the embedder.

    ``kinds``: the crops the embedder needs (a producer skips cutting the others).
    :meth:`put` blocks while ``capacity`` faces wait; :meth:`close` (the producers are done)
    lets :meth:`batches` end once empty; :meth:`abort` (the consumer failed) makes
    :meth:`put` return False at once, so no producer waits forever.
    """

    def __init__(self, capacity: int = 512, kinds: Sequence[str] = KINDS) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"kinds must be among {KINDS}, got {sorted(unknown)}")
        self.capacity = int(capacity)
        self.kinds = tuple(kinds)
        self._items: deque[FaceCrops] = deque()
        self._cond = threading.Condition()
        self._closed = False
        self._aborted = False
        self.put_faces = 0
        self.dropped = 0

    def put(self, faces: Sequence[FaceCrops]) -> bool:
        """Queue ``faces`` (waiting for room); False (nothing queued) after :meth:`abort`."""
        with self._cond:
            for f in faces:
                while len(self._items) >= self.capacity and not self._aborted:
                    self._cond.wait()
                if self._aborted:
                    self.dropped += len(faces)
                    return False
                self._items.append(f)
                self.put_faces += 1
                self._cond.notify_all()
            return True

    def close(self) -> None:
        """No more :meth:`put` s: :meth:`batches` ends when the queue is empty."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    def abort(self) -> None:
        """The consumer stopped: producers stop waiting and their faces are dropped."""
        with self._cond:
            self._aborted = True
            self._items.clear()
            self._cond.notify_all()

    def batches(self, size: int) -> Iterator[list[FaceCrops]]:
        """Lists of up to ``size`` faces, as soon as ``size`` are there (or the queue is
        closed), until the queue is closed and empty."""
        while True:
            with self._cond:
                while len(self._items) < size and not self._closed and not self._aborted:
                    self._cond.wait()
                if self._aborted or (self._closed and not self._items):
                    return
                batch = [self._items.popleft() for _ in range(min(size, len(self._items)))]
                self._cond.notify_all()
            yield batch

    def __len__(self) -> int:
        with self._cond:
            return len(self._items)

    def stats(self) -> dict[str, int]:
        with self._cond:
            return {"faces": self.put_faces, "dropped": self.dropped, "held": len(self._items)}
