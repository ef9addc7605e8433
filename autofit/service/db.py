"""The service's state in SQLite (`ROOT/autofit.sqlite`): tokens, datasets, runs and their queue
order. This module owns the schema; `MIGRATIONS[i]` takes a database from version i to i+1
(`PRAGMA user_version`), so a newer server opens an older root.

One connection, serialised by a lock: the server's writes are a few rows a second, and SQLite
in WAL mode lets the readers of the same file (a second server refuses to start) see them.
"""

from __future__ import annotations

import json
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

FILE = "autofit.sqlite"
MIGRATIONS = [
    """
    CREATE TABLE tokens (
        id TEXT PRIMARY KEY, name TEXT NOT NULL, hash TEXT NOT NULL UNIQUE,
        admin INTEGER NOT NULL DEFAULT 0, created_at REAL NOT NULL, revoked_at REAL);
    CREATE TABLE datasets (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL REFERENCES tokens(id), name TEXT NOT NULL,
        format TEXT NOT NULL, data TEXT NOT NULL, classes TEXT NOT NULL,
        images INTEGER NOT NULL, test_images INTEGER, bytes INTEGER NOT NULL,
        created_at REAL NOT NULL);
    CREATE TABLE runs (
        id TEXT PRIMARY KEY, owner TEXT NOT NULL REFERENCES tokens(id),
        dataset TEXT NOT NULL, request TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN
            ('queued', 'running', 'finished', 'failed', 'stopped')),
        seq INTEGER NOT NULL, created_at REAL NOT NULL, started_at REAL, ended_at REAL,
        queued_s REAL, starts INTEGER NOT NULL DEFAULT 0, stop_requested INTEGER NOT NULL
        DEFAULT 0, error TEXT);
    CREATE INDEX runs_queue ON runs (status, seq);
    CREATE INDEX runs_owner ON runs (owner, created_at);
    """,
]
TERMINAL = ("finished", "failed", "stopped")


def new_id() -> str:
    return secrets.token_hex(6)


class Database:
    """The rows the service keeps; each method is one transaction."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._conn.row_factory = sqlite3.Row
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=FULL")  # a row written is a row kept at a kill
        self._conn.execute("PRAGMA foreign_keys=ON")
        self._migrate()

    def _migrate(self) -> None:
        """Each step in one transaction of its own, with the version it reaches."""
        with self._lock:
            version = self._conn.execute("PRAGMA user_version").fetchone()[0]
            if version > len(MIGRATIONS):
                raise RuntimeError(f"{self.path} was written by a newer autofit (schema "
                                   f"{version}, this one knows {len(MIGRATIONS)})")
            for number in range(version, len(MIGRATIONS)):
                self._conn.executescript(f"BEGIN IMMEDIATE; {MIGRATIONS[number]}; "
                                         f"PRAGMA user_version = {number + 1}; COMMIT;")

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._conn.execute("BEGIN IMMEDIATE")
            try:
                yield self._conn
            except BaseException:
                self._conn.execute("ROLLBACK")
                raise
            self._conn.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # tokens
    def add_token(self, name: str, digest: str, admin: bool = False) -> dict[str, Any]:
        row = {"id": new_id(), "name": name, "hash": digest, "admin": int(admin),
               "created_at": time.time()}
        with self._tx() as conn:
            conn.execute("INSERT INTO tokens (id, name, hash, admin, created_at) VALUES "
                         "(:id, :name, :hash, :admin, :created_at)", row)
        return row

    def token_by_hash(self, digest: str) -> dict[str, Any] | None:
        return self._one("SELECT * FROM tokens WHERE hash = ? AND revoked_at IS NULL", digest)

    def tokens(self) -> list[dict[str, Any]]:
        return self._all("SELECT * FROM tokens ORDER BY created_at")

    def revoke_token(self, token_id: str) -> bool:
        with self._tx() as conn:
            return conn.execute("UPDATE tokens SET revoked_at = ? WHERE id = ? AND revoked_at "
                                "IS NULL", (time.time(), token_id)).rowcount == 1

    def has_admin(self) -> bool:
        return self._one("SELECT id FROM tokens WHERE admin = 1 AND revoked_at IS NULL") \
            is not None

    # datasets
    def add_dataset(self, row: dict[str, Any]) -> dict[str, Any]:
        row = {**row, "classes": json.dumps(row["classes"]), "created_at": time.time()}
        with self._tx() as conn:
            conn.execute("INSERT INTO datasets (id, owner, name, format, data, classes, images,"
                         " test_images, bytes, created_at) VALUES (:id, :owner, :name, :format,"
                         " :data, :classes, :images, :test_images, :bytes, :created_at)", row)
        return self.dataset(row["owner"], row["id"]) or row

    def dataset(self, owner: str, dataset_id: str) -> dict[str, Any] | None:
        return _dataset(self._one("SELECT * FROM datasets WHERE id = ? AND owner = ?",
                                  dataset_id, owner))

    def datasets(self, owner: str) -> list[dict[str, Any]]:
        return [_dataset(r) for r in self._all(
            "SELECT * FROM datasets WHERE owner = ? ORDER BY created_at DESC", owner)]

    def delete_dataset(self, owner: str, dataset_id: str) -> str:
        """'deleted', 'missing', or 'in use' (a queued or running run needs it)."""
        with self._tx() as conn:
            if conn.execute("SELECT 1 FROM datasets WHERE id = ? AND owner = ?",
                            (dataset_id, owner)).fetchone() is None:
                return "missing"
            if conn.execute("SELECT 1 FROM runs WHERE dataset = ? AND status IN ('queued', "
                            "'running')", (dataset_id,)).fetchone() is not None:
                return "in use"
            conn.execute("DELETE FROM datasets WHERE id = ?", (dataset_id,))
            return "deleted"

    # runs
    def add_run(self, owner: str, dataset: str, request: dict[str, Any]) -> dict[str, Any]:
        with self._tx() as conn:
            seq = conn.execute("SELECT COALESCE(MAX(seq), 0) + 1 FROM runs").fetchone()[0]
            row = {"id": new_id(), "owner": owner, "dataset": dataset,
                   "request": json.dumps(request), "status": "queued", "seq": seq,
                   "created_at": time.time()}
            conn.execute("INSERT INTO runs (id, owner, dataset, request, status, seq, "
                         "created_at) VALUES (:id, :owner, :dataset, :request, :status, :seq, "
                         ":created_at)", row)
        found = self.run(row["id"])
        assert found is not None
        return found

    def run(self, run_id: str, owner: str | None = None) -> dict[str, Any] | None:
        if owner is None:
            return _run(self._one("SELECT * FROM runs WHERE id = ?", run_id))
        return _run(self._one("SELECT * FROM runs WHERE id = ? AND owner = ?", run_id, owner))

    def runs(self, owner: str | None = None, status: str | None = None) -> list[dict[str, Any]]:
        """Newest first; with `status`, in queue order."""
        if status is not None:
            return [_run(r) for r in self._all("SELECT * FROM runs WHERE status = ? ORDER BY "
                                               "seq", status)]
        return [_run(r) for r in self._all("SELECT * FROM runs WHERE owner = ? ORDER BY seq "
                                           "DESC", owner)]

    def position(self, run: dict[str, Any]) -> int | None:
        """1 for the next queued run to start."""
        if run["status"] != "queued":
            return None
        found = self._one("SELECT COUNT(*) AS n FROM runs WHERE status = 'queued' AND seq <= ?",
                          run["seq"])
        return None if found is None else int(found["n"])

    def counts(self) -> dict[str, int]:
        return {r["status"]: int(r["n"]) for r in self._all(
            "SELECT status, COUNT(*) AS n FROM runs GROUP BY status")}

    def update_run(self, run_id: str, *, when: str | None = None, **fields: Any) -> bool:
        """Set `fields`; with `when`, only if the run's status is still `when` (a stop and the
        scheduler may race)."""
        names = ", ".join(f"{k} = :{k}" for k in fields)
        sql = f"UPDATE runs SET {names} WHERE id = :id"
        if when is not None:
            sql += " AND status = :when"
        with self._tx() as conn:
            return conn.execute(sql, {**fields, "id": run_id, "when": when}).rowcount == 1

    def delete_run(self, run_id: str) -> None:
        with self._tx() as conn:
            conn.execute("DELETE FROM runs WHERE id = ?", (run_id,))

    def _one(self, sql: str, *args: Any) -> dict[str, Any] | None:
        with self._lock:
            row = self._conn.execute(sql, args).fetchone()
        return None if row is None else dict(row)

    def _all(self, sql: str, *args: Any) -> list[dict[str, Any]]:
        with self._lock:
            return [dict(r) for r in self._conn.execute(sql, args).fetchall()]


def _dataset(row: dict[str, Any] | None) -> Any:
    return None if row is None else {**row, "classes": json.loads(row["classes"])}


def _run(row: dict[str, Any] | None) -> Any:
    return None if row is None else {**row, "request": json.loads(row["request"])}
