"""The served collection: an ``Index`` file (optionally writable) or a Qdrant collection.

A writable index is owned by this process for its lifetime (``writer_lock``: a second server or
``lame-search index`` on the same files gets ``BusyError``). Changes are saved by
``Index.save`` (``lame_runtime.persist.save_versioned``: the previous save stays
loadable until the new one is complete) every ``save_interval_s`` when something changed, and
once more on shutdown; a SIGKILL at any instant leaves the last complete save loadable.
Qdrant persists each upsert itself; deleting from Qdrant is not offered (``QdrantStore`` has
no remove).

The durability rule (docs/serving-guarantees.md): a write is acknowledged only after every
field it stores has been checked (``Index.add`` validates all of it before changing anything),
so an acknowledged write can always be saved. A save that fails (a full disk) never drops
anything: the documents stay in memory, the failure is reported (``save_error``: /ready answers
503, the metrics count it), new writes are refused with 503 until a save succeeds, and the save
is retried every ``RETRY_S`` seconds and once more on shutdown.
"""

from __future__ import annotations

import logging
import threading
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

from lame_runtime.errors import InputError, MissingFileError
from lame_runtime.persist import writer_lock
from lame_runtime.retrieval.index import Index
from lame_runtime.retrieval.index_io import index_exists
from lame_runtime.serve.errors import Forbidden, SaveFailing

log = logging.getLogger("lame_runtime.serve")
RETRY_S = 5.0  # a failed save is retried this often (or every save interval, if shorter)
FINAL_TRIES = 3  # attempts of the final save on shutdown before giving up loudly


class Documents:
    def __init__(
        self,
        store: Any,
        kind: str,
        path: Path | None = None,
        writable: bool = False,
        save_interval_s: float = 30.0,
        lock: writer_lock | None = None,
    ):
        self.store, self.kind, self.path = store, kind, path
        self.writable, self.save_interval_s = writable, save_interval_s
        self._lock = lock
        self._version = self._saved = 0
        self._write = threading.Lock()  # one writer at a time: ids are checked, then added
        self._stop = threading.Event()
        self._saver: threading.Thread | None = None
        self.save_error: str | None = None  # why the last save failed; None once one succeeds
        self.save_failures = 0
        self.on_save: Callable[[bool], None] = lambda ok: None  # the service's metrics

    @classmethod
    def open_index(
        cls,
        path: str | Path,
        dim: int,
        writable: bool = False,
        save_interval_s: float = 30.0,
        sizes: tuple[int, ...] = (),
    ) -> Documents:
        """``dim``: the size a new index gets; an existing one may hold any of ``sizes`` (a
        Matryoshka model's served sizes: ``lame-search index --dimensions``)."""
        path = Path(path)
        lock = writer_lock(path) if writable else None
        if lock is not None:
            lock.__enter__()  # held until close(): this server is the index's one writer
        try:
            if index_exists(path):
                index = Index.load(path)
            elif writable:
                index = Index(dim)  # a new index, first saved on the first change
            else:
                raise MissingFileError(
                    f"index not found: {path} (build it with `lame-search "
                    "index`, or start with --writable to create it)"
                )
            if index.dim != dim and index.dim not in sizes:
                raise InputError(
                    f"index {path} holds {index.dim}-dim vectors, the model embeds "
                    f"in {dim}: it was built with another model"
                )
        except BaseException:
            if lock is not None:
                lock.__exit__(None, None, None)
            raise
        return cls(index, "index", path, writable, save_interval_s, lock)

    @classmethod
    def open_qdrant(
        cls, location: str, collection: str, dim: int, writable: bool = False, sizes: tuple[int, ...] = ()
    ) -> Documents:
        from lame_runtime.retrieval.qdrant_store import QdrantStore

        return cls(
            QdrantStore(location, collection, dim=dim if writable else None, sizes=sizes),
            "qdrant",
            writable=writable,
        )

    def __len__(self) -> int:
        return len(self.store)

    @property
    def dim(self) -> int:
        """The size of the stored vectors (queries and additions are cut to it)."""
        return int(self.store.dim)

    # ------------------------------------------------------------------ reads
    def search(self, vector: np.ndarray, k: int, prefix: str | None = None) -> list[dict[str, Any]]:
        """Top-k of one query, optionally only ids starting with ``prefix`` (blocking)."""
        size = len(self.store)
        want = k if prefix is None else min(size, max(4 * k, 64))
        while True:
            scores, ids = self.store.search(vector[None, :], k=max(want, 1))
            hits = [
                (i, float(s)) for i, s in zip(ids[0], scores[0]) if prefix is None or i.startswith(prefix)
            ]
            if prefix is None or len(hits) >= k or want >= size:
                break
            want = min(size, want * 4)  # too few matched the prefix: look deeper
        return [{"id": i, "score": s, "payload": self._payload(i)} for i, s in hits[:k]]

    def _payload(self, item_id: str) -> Any:
        try:
            return self.store.payload(item_id)
        except KeyError:  # removed between search and payload read
            return None

    # ------------------------------------------------------------------ writes
    def _check_writable(self) -> None:
        if not self.writable:
            raise Forbidden(
                "this server's index is read-only: start lame-serve with --writable "
                "(and --api-key-file) to add or delete documents",
                code="read_only",
            )

    @property
    def unsaved(self) -> int:
        """Acknowledged writes (requests) not yet in a completed save."""
        return self._version - self._saved

    def _check_saving(self) -> None:
        """While saves fail, refuse new writes: acknowledge nothing that cannot be saved."""
        if self.save_error is not None:
            raise SaveFailing(
                f"the index cannot be saved ({self.save_error}); writes are refused until a "
                f"save succeeds; the {self.unsaved} acknowledged write(s) not yet saved are "
                f"kept and the save is retried every {self._retry_s:g} s",
                headers={"Retry-After": str(int(self._retry_s) + 1)},
            )

    @property
    def _retry_s(self) -> float:
        return min(RETRY_S, self.save_interval_s) or RETRY_S

    def check_writes(self) -> None:
        """Raise the refusal a write would get now (before its body is read or embedded)."""
        self._check_writable()
        self._check_saving()

    def add(self, ids: list[str], vectors: np.ndarray, payloads: list[Any]) -> None:
        self.check_writes()
        with self._write:
            self.store.add(vectors, ids, payloads)
            self._version += 1

    def remove(self, ids: list[str]) -> None:
        self.check_writes()
        if self.kind != "index":
            raise Forbidden(
                "deleting is not supported for a Qdrant collection here; delete with the Qdrant client",
                code="unsupported",
            )
        with self._write:
            self.store.remove(ids)  # KeyError (404) for unknown ids; nothing removed then
            self._version += 1

    # ------------------------------------------------------------------ persistence
    def save(self) -> bool:
        """Save if changed since the last save; True when it wrote. A failure is recorded
        (``save_error``) and raised; nothing in memory is dropped."""
        if self.kind != "index" or not self.writable:
            return False
        version = self._version
        if version == self._saved:
            return False
        try:
            self.store.save(self.path)
        except Exception as err:
            self.save_failures += 1
            self.save_error = _reason(err)
            self.on_save(False)
            raise
        self._saved = version
        if self.save_error is not None:
            log.warning("saving the index to %s succeeded again", self.path)
        self.save_error = None
        self.on_save(True)
        return True

    def start(self) -> None:
        if self.kind == "index" and self.writable and self.save_interval_s > 0:
            self._saver = threading.Thread(target=self._save_loop, name="lame-serve-saver", daemon=True)
            self._saver.start()

    def _save_loop(self) -> None:
        while not self._stop.wait(self._retry_s if self.save_error else self.save_interval_s):
            try:
                self.save()
            except Exception:  # noqa: BLE001  (a full disk must not end the server; it retries)
                log.exception(
                    "saving the index to %s failed (%d acknowledged write(s) kept in memory); "
                    "writes are refused until it succeeds; retrying in %.0f s",
                    self.path,
                    self.unsaved,
                    self._retry_s,
                )

    def close(self) -> None:
        """Stop the schedule, save what changed, release the writer lock."""
        self._stop.set()
        if self._saver is not None:
            self._saver.join()
        try:
            for attempt in range(FINAL_TRIES):
                try:
                    self.save()
                    break
                except Exception:
                    if attempt == FINAL_TRIES - 1:
                        raise
                    log.warning("the final save failed (%s); trying again", self.save_error)
                    time.sleep(1.0)
        finally:
            if self._lock is not None:
                self._lock.__exit__(None, None, None)
                self._lock = None
            close = getattr(self.store, "close", None)
            if close is not None:
                close()


def _reason(err: BaseException) -> str:
    """Why a save failed, for clients and metrics: the OS's reason, never a server path."""
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return type(err).__name__
