"""Crops handed from detection to embedding in memory, instead of read back from disk.

``labeler run`` detects and embeds at the same time: the detect threads write each face's
aligned crop (and box crop) as JPEG for the app, and also :meth:`CropCache.put` the same
JPEG bytes here; the embed thread :meth:`CropCache.take` s them and decodes each crop once
for all its regions and the colour cues. The bytes are the file's bytes, so the features
are the same as from the file (``labeler embed``); only the file system is skipped. The
cache holds at most ``capacity`` crops (~20 KB each) and drops new ones when the embedder
falls behind: those are read from disk.

>>> cache = CropCache(capacity=2)
>>> cache.put("f1", "aligned", b"jpeg bytes")
True
>>> cache.take("f1", "aligned"), cache.take("f1", "aligned")
(b'jpeg bytes', None)
"""

from __future__ import annotations

import threading

KINDS = ("aligned", "box")


class CropCache:
    """A bounded, thread-safe ``(face_id, kind) -> JPEG bytes`` store; see the module."""

    def __init__(self, capacity: int = 8192, kinds: tuple[str, ...] = KINDS) -> None:
        if capacity < 0:
            raise ValueError(f"capacity must be >= 0, got {capacity}")
        unknown = set(kinds) - set(KINDS)
        if unknown:
            raise ValueError(f"kinds must be among {KINDS}, got {sorted(unknown)}")
        self.capacity = int(capacity)
        self.kinds = tuple(kinds)
        self._crops: dict[tuple[str, str], bytes] = {}
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0
        self.dropped = 0

    def put(self, face_id: str, kind: str, crop: bytes) -> bool:
        """Keep ``crop``; False (nothing kept) when the cache is full or does not hold ``kind``
        (the embed pass will not ask for it)."""
        if kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
        if kind not in self.kinds:
            return False
        with self._lock:
            if len(self._crops) >= self.capacity:
                self.dropped += 1
                return False
            self._crops[(str(face_id), kind)] = crop
            return True

    def take(self, face_id: str, kind: str) -> bytes | None:
        """The crop put under ``(face_id, kind)``, removed from the cache; None when absent."""
        with self._lock:
            crop = self._crops.pop((str(face_id), kind), None)
            if crop is None:
                self.misses += 1
            else:
                self.hits += 1
            return crop

    def __contains__(self, key: tuple[str, str]) -> bool:
        """``(face_id, kind) in cache``."""
        with self._lock:
            return (str(key[0]), key[1]) in self._crops

    def __len__(self) -> int:
        with self._lock:
            return len(self._crops)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {
                "hits": self.hits,
                "misses": self.misses,
                "dropped": self.dropped,
                "held": len(self._crops),
            }
