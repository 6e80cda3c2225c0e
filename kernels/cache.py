"""A local, size-bounded cache of loaded volumes, per user.

``pacs.load_series`` keeps each volume it loads (the decoded array as an
``.npy`` file, its geometry and metadata beside it) together with the
archive's entity tag of the series answer. The tag names the series' stored
instances (their SOP Instance UIDs and stored files, so their transfer
syntaxes): the next load asks the archive with ``If-None-Match``, and when
nothing changed (``304``) the volume comes from disk, memory-mapped
copy-on-write, as nibabel maps NIfTI files: pages are read when touched,
and changing the array never changes the cache. Access is checked by the
archive on every load, so a series you may no longer see is not served
from the cache either.

Where: ``$IMAGINGHUB_CACHE_DIR`` or ``~/.cache/imaginghub/volumes`` (0700),
at most ``$IMAGINGHUB_CACHE_GB`` (default 5) GB (an admin may point both at
node-local scratch through the spawner's environment); the least recently used
volumes go first. Archives that send no entity tag are not cached.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
import time
from pathlib import Path

import numpy as np

log = logging.getLogger("imaginghub.cache")


class VolumeCache:
    def __init__(self, root: str | Path, max_bytes: int):
        self.root = Path(root)
        self.max_bytes = int(max_bytes)
        self._lock = threading.Lock()
        self._writers: list[threading.Thread] = []

    def _stem(self, url: str, series_uid: str, dtype) -> Path:
        key = f"{url}\n{series_uid}\n{np.dtype(dtype).str}"
        return self.root / hashlib.sha256(key.encode()).hexdigest()[:40]

    def etag(self, url: str, series_uid: str, dtype) -> str | None:
        """The entity tag of the cached copy, if there is one."""
        try:
            return json.loads(self._stem(url, series_uid, dtype).with_suffix(".json")
                              .read_text())["etag"]
        except (OSError, ValueError, KeyError):
            return None

    def get(self, url: str, series_uid: str, dtype):
        """The cached Volume (memory-mapped copy-on-write), or None."""
        from .volume import Volume

        stem = self._stem(url, series_uid, dtype)
        try:
            info = json.loads(stem.with_suffix(".json").read_text())
            array = np.load(stem.with_suffix(".npy"), mmap_mode="c")
        except (OSError, ValueError):
            return None
        os.utime(stem.with_suffix(".json"))  # recently used
        meta = info["metadata"]
        if "source_frames" in meta:
            meta["source_frames"] = [tuple(f) for f in meta["source_frames"]]
        return Volume(array, tuple(info["spacing"]), tuple(info["origin"]),
                      np.array(info["direction"]), meta)

    def put(self, url: str, series_uid: str, volume, etag: str) -> threading.Thread | None:
        """Keep a copy of ``volume`` under ``etag``. The copy is written by a
        background thread (the disk can be slower than the network); the files
        appear whole or not at all. Returns the thread."""
        size = volume.array.nbytes
        if size > self.max_bytes:
            return None
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        stem = self._stem(url, series_uid, volume.array.dtype)
        info = {"etag": etag, "series": series_uid, "spacing": list(volume.spacing),
                "origin": list(volume.origin), "direction": np.asarray(volume.direction).tolist(),
                "metadata": volume.metadata, "bytes": size}
        array = volume.array.copy()  # the caller may change theirs meanwhile
        writer = threading.Thread(target=self._write, args=(stem, array, info),
                                  name="imaginghub-cache", daemon=True)
        writer.start()
        self._writers = [w for w in self._writers if w.is_alive()] + [writer]
        return writer

    def flush(self) -> None:
        """Wait until the volumes being written are on disk."""
        for w in self._writers:
            w.join()
        self._writers = []

    def _write(self, stem: Path, array: np.ndarray, info: dict) -> None:
        with self._lock:
            self._make_room(array.nbytes)
            tmp = stem.with_suffix(f".tmp{os.getpid()}")
            try:
                with _private(tmp) as f:
                    np.save(f, array, allow_pickle=False)
                os.replace(tmp, stem.with_suffix(".npy"))
                with _private(tmp) as f:
                    f.write(json.dumps(info, default=str).encode())
                os.replace(tmp, stem.with_suffix(".json"))
            except OSError as e:  # a full disk must not break the load
                log.warning("could not keep the volume in the cache at %s: %s", self.root, e)
            finally:
                tmp.unlink(missing_ok=True)

    def _entries(self) -> list[tuple[float, int, Path]]:
        out = []
        for meta in self.root.glob("*.json"):
            try:
                st = meta.stat()
                npy = meta.with_suffix(".npy")
                out.append((st.st_mtime, npy.stat().st_size if npy.exists() else 0, meta))
            except OSError:
                continue
        return sorted(out)

    def _make_room(self, incoming: int) -> None:
        for stale in self.root.glob("*.tmp*"):  # left by a kernel that died writing
            try:
                if stale.stat().st_mtime < time.time() - 3600:
                    stale.unlink()
            except OSError:
                pass
        entries = self._entries()
        total = sum(size for _, size, _ in entries)
        for _, size, meta in entries:
            if total + incoming <= self.max_bytes:
                break
            meta.unlink(missing_ok=True)  # the marker first: never a volume without it
            meta.with_suffix(".npy").unlink(missing_ok=True)
            total -= size

    def info(self) -> dict:
        entries = self._entries()
        return {"path": str(self.root), "volumes": len(entries),
                "bytes": sum(size for _, size, _ in entries), "max_bytes": self.max_bytes}

    def clear(self) -> None:
        for _, _, meta in self._entries():
            meta.unlink(missing_ok=True)
            meta.with_suffix(".npy").unlink(missing_ok=True)


def _private(path: Path):
    """A new file only its owner can read (patient data)."""
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb")
