"""Persistent state in one SQLite file (``<persistent-state-dir>/state.sqlite3``).

WAL journal, ``synchronous=FULL`` (a committed write survives a power cut), a schema version
with numbered migrations. Rows hold JSON bodies, keyed by kind and id. All access goes
through one worker thread, in submission order: :meth:`StateStore.put` and
:meth:`StateStore.delete` return at once, :meth:`StateStore.flush` waits for every write
submitted so far. The writes that wait while the thread is busy are committed together, in
one transaction (group commit). The file is created with mode 0600 (destination passwords in it are
sealed, see :mod:`jetstream_server.core.atrest`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import sqlite3
import threading
from pathlib import Path
from typing import Any

import orjson

from ..errors import ConfigError
from .private import private_file

log = logging.getLogger("jetstream.state")
__all__ = ["SCHEMA_VERSION", "StateStore"]

SCHEMA_VERSION = 1
#: version -> statements that bring the schema from the version before to it
MIGRATIONS: dict[int, list[str]] = {
    1: [
        "CREATE TABLE objects (kind TEXT NOT NULL, id TEXT NOT NULL, body TEXT NOT NULL,"
        " PRIMARY KEY (kind, id))",
        "CREATE TABLE settings (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
    ],
}


class StateStore:
    """The server's state in one SQLite file (see the module's docstring)."""
    def __init__(self, folder: Path) -> None:
        self.path = folder / "state.sqlite3"
        self._executor = concurrent.futures.ThreadPoolExecutor(1, "jetstream-state")
        self.closed = False
        #: writes waiting for the writer thread, and whether a drain of them is queued
        self._queued: list[tuple[str, tuple[Any, ...]]] = []
        self._draining = False
        self._lock = threading.Lock()
        try:
            self._db = self._executor.submit(self._open).result()
        except sqlite3.Error as exc:
            self._executor.shutdown()
            raise ConfigError(f"Cannot open the state database {self.path}: {exc}.") from None

    def _open(self) -> sqlite3.Connection:
        private_file(self.path)  # (SQLite gives its -wal and -shm files the same mode)
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = row[0] if row else 0
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version} is newer than this server's ({SCHEMA_VERSION})")
        for target in range(version + 1, SCHEMA_VERSION + 1):
            db.execute("BEGIN")
            for statement in MIGRATIONS[target]:
                db.execute(statement)
            db.execute("DELETE FROM schema_version")
            db.execute("INSERT INTO schema_version VALUES (?)", (target,))
            db.execute("COMMIT")
        return db

    # -- reads (at start) -----------------------------------------------------------------

    def load(self, kind: str) -> list[dict[str, Any]]:
        """Every stored object of ``kind``, oldest first (at start)."""
        rows = self._executor.submit(
            lambda: self._db.execute("SELECT body FROM objects WHERE kind = ? ORDER BY rowid",
                                     (kind,)).fetchall()).result()
        return [orjson.loads(body) for (body,) in rows]

    def setting(self, key: str) -> Any:
        """A stored setting, or None."""
        row = self._executor.submit(
            lambda: self._db.execute("SELECT value FROM settings WHERE key = ?",
                                     (key,)).fetchone()).result()
        return None if row is None else orjson.loads(row[0])

    # -- writes (in order, off the event loop) ------------------------------------------

    def put(self, kind: str, object_id: str, body: Any) -> None:
        """Store ``body``: a dict, or a dataclass instance (stored as the dict of its
        attributes, by orjson: like ``dataclasses.asdict``, without copying each value)."""
        data = orjson.dumps(body).decode()
        self._submit("INSERT OR REPLACE INTO objects (kind, id, body) VALUES (?, ?, ?)",
                     (kind, object_id, data))

    def delete(self, kind: str, object_id: str) -> None:
        """Remove a stored object (in order, off the event loop)."""
        self._submit("DELETE FROM objects WHERE kind = ? AND id = ?", (kind, object_id))

    def put_setting(self, key: str, value: Any) -> None:
        """Store a setting (in order, off the event loop)."""
        self._submit("INSERT OR REPLACE INTO settings (key, value) VALUES (?, ?)",
                     (key, orjson.dumps(value).decode()))

    def _submit(self, statement: str, args: tuple[Any, ...]) -> None:
        with self._lock:
            self._queued.append((statement, args))
            if self._draining:
                return  # (a drain is queued, and has not yet taken what waits)
            self._draining = True
        self._executor.submit(self._drain).add_done_callback(_report)

    def _drain(self) -> None:
        """Commit every write waiting, in one transaction: many writes at once (ten
        thousand transfers queued) cost one flush to disk, not one each."""
        with self._lock:
            batch, self._queued = self._queued, []
            self._draining = False
        if len(batch) == 1:
            self._db.execute(*batch[0])
            return
        self._db.execute("BEGIN")
        try:
            for statement, args in batch:
                self._db.execute(statement, args)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    async def flush(self) -> None:
        """Wait until every write submitted so far is committed."""
        marker = self._executor.submit(lambda: None)
        await asyncio.wrap_future(marker)

    def close(self) -> None:
        """Close the database and its thread (idempotent)."""
        if self.closed:
            return
        self.closed = True
        self._executor.submit(self._db.close).result()
        self._executor.shutdown()


def _report(future: concurrent.futures.Future[Any]) -> None:
    exc = future.exception()
    if exc is not None:
        log.error("cannot write the state database: %s", exc)
