"""Where a study lives, how its running trials prove they are alive, and the lock that claims a trial.

- One machine (the default): Optuna's JournalStorage on a file in the study folder, which several processes
  on this machine may share (no SQLite, so no "database is locked").
- Several machines: `--storage postgresql://...` or `mysql://...`, Optuna's RDBStorage.

Both record a heartbeat for each running trial. A trial whose process died (kill -9, a lost machine) stops
beating; after the grace period any tune process marks it failed, and the failure callback queues it again
once with the same parameters (`RetryHeartbeatStaleTrialCallback(max_retry=1)`). RDBStorage has this built
in; Optuna 5's JournalStorage does not, so `HeartbeatJournalStorage` adds it through the same interface.

Claiming a new trial (count, then create) happens under one lock shared by every process of the study
(a file lock for the journal, an advisory lock in the database), which is what keeps the total exact.
"""

from __future__ import annotations

import contextlib
import fcntl
import threading
import time
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import optuna
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages._heartbeat import BaseHeartbeat  # the interface fail_stale_trials() reads
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from edgecls.errors import UserError

JOURNAL = "journal.log"
CLAIM_LOCK = "claim.lock"
HEARTBEAT_ATTR = "edgecls:heartbeat"
DRIVERS = {"postgresql": ("psycopg2", "psycopg"), "mysql": ("pymysql", "mysqldb")}
DRIVER_PACKAGES = {"postgresql": "psycopg2-binary", "mysql": "pymysql"}


def quiet_optuna() -> None:
    """Optuna's INFO log and experimental-feature warnings would bury the progress lines."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def retry_once() -> RetryHeartbeatStaleTrialCallback:
    return RetryHeartbeatStaleTrialCallback(max_retry=1)


class HeartbeatJournalStorage(JournalStorage, BaseHeartbeat):
    """A journal file storage with heartbeats: the time is a trial system attribute, rewritten every
    `interval` s; a running trial is stale when neither it nor its start is newer than `grace` s."""

    def __init__(self, path: Path, interval: int, grace: int, callback=None):
        super().__init__(JournalFileBackend(str(path)))
        self._interval, self._grace, self._callback = interval, grace, callback

    def record_heartbeat(self, trial_id: int) -> None:
        self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            started = t.datetime_start.timestamp() if t.datetime_start else now
            if now - max(started, float(t.system_attrs.get(HEARTBEAT_ATTR, 0.0))) > self._grace:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int:
        return self._interval

    def get_heartbeat_stale_trial_callback(self):
        return self._callback


@dataclass
class StudyStorage:
    """The storage object for optuna, where it is (for messages and the manifest) and its claim lock."""

    storage: object
    label: str
    lock: object  # a context-manager factory

    def record_heartbeat(self, trial_id: int) -> None:
        self.storage.record_heartbeat(trial_id)


def open_storage(url: str | None, study_dir: Path, study_name: str, interval: int, grace: int) -> StudyStorage:
    """The study's storage: the journal in `study_dir` (created), or the database at `url` (connected)."""
    if url is None:
        study_dir.mkdir(parents=True, exist_ok=True)
        storage = HeartbeatJournalStorage(study_dir / JOURNAL, interval, grace, retry_once())
        return StudyStorage(storage, str(study_dir / JOURNAL), lambda: file_lock(study_dir / CLAIM_LOCK))
    return open_database(url, study_name, interval, grace)


def database_url(text: str):
    """The SQLAlchemy URL for `--storage`, with a driver that is installed; a UserError for anything else."""
    import sqlalchemy

    where = f"`storage` {text}"
    try:
        url = sqlalchemy.engine.make_url(text)
    except (sqlalchemy.exc.ArgumentError, ValueError):
        raise UserError(f"{where}: not a database URL; use postgresql://USER@HOST:PORT/DB or mysql://...") from None
    backend, _, driver = url.drivername.partition("+")
    backend = {"postgres": "postgresql"}.get(backend, backend)
    if backend not in DRIVERS:
        hint = " (SQLite locks up under parallel workers)" if backend == "sqlite" else ""
        raise UserError(
            f"{url.render_as_string(hide_password=True)}: `storage` takes postgresql:// or mysql://{hint}; "
            "for processes on one machine leave `storage` out (a journal file in the study folder)"
        )
    if not url.host and not url.query.get("host"):
        raise UserError(f"{where}: no host; use {backend}://USER@HOST:PORT/DB")
    if not url.database:
        raise UserError(f"{where}: no database name; use {backend}://USER@HOST:PORT/DB")
    driver = driver or next((d for d in DRIVERS[backend] if _importable(d)), "")
    if not driver or not _importable(driver):
        raise UserError(f"{where}: no {backend} driver installed; pip install {DRIVER_PACKAGES[backend]}")
    return url.set(drivername=f"{backend}+{driver}")


def _importable(driver: str) -> bool:
    import importlib.util

    module = {"mysqldb": "MySQLdb", "mysqlconnector": "mysql.connector"}.get(driver, driver)
    return importlib.util.find_spec(module) is not None


def open_database(text: str, study_name: str, interval: int, grace: int) -> StudyStorage:
    import sqlalchemy

    url = database_url(text)
    label = url.render_as_string(hide_password=True)
    try:
        storage = RDBStorage(
            url.render_as_string(hide_password=False), heartbeat_interval=interval, grace_period=grace,
            heartbeat_stale_trial_callback=retry_once(), engine_kwargs={"pool_pre_ping": True},
        )  # fmt: skip
    except (sqlalchemy.exc.SQLAlchemyError, ImportError) as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise UserError(f"`storage` {label}: cannot open the database ({reason})") from None
    key = zlib.crc32(f"edgecls-tune:{study_name}".encode())
    return StudyStorage(storage, label, lambda: database_lock(storage.engine, url.get_backend_name(), key))


# ----------------------------------------------------------------------------- claim locks


@contextlib.contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """An exclusive flock on `path` (processes on this machine); released when the process dies too."""
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


@contextlib.contextmanager
def database_lock(engine, backend: str, key: int) -> Iterator[None]:
    """A session-level advisory lock (PostgreSQL) or named lock (MySQL); the server drops it with the session."""
    import sqlalchemy

    take, drop = {
        "postgresql": ("SELECT pg_advisory_lock(:k)", "SELECT pg_advisory_unlock(:k)"),
        "mysql": ("SELECT GET_LOCK(CONCAT('edgecls-tune-', :k), -1)",
                  "SELECT RELEASE_LOCK(CONCAT('edgecls-tune-', :k))"),
    }[backend]  # fmt: skip
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text(take), {"k": key})
        try:
            yield
        finally:
            conn.execute(sqlalchemy.text(drop), {"k": key})
            conn.commit()


# ----------------------------------------------------------------------------- heartbeat thread


class Heartbeat:
    """While a trial runs: its heartbeat now, then every `interval` s from a thread."""

    def __init__(self, storage: StudyStorage, trial_id: int, interval: int, log=print):
        self.storage, self.trial_id, self.interval, self.log = storage, trial_id, interval, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="edgecls-heartbeat", daemon=True)

    def __enter__(self) -> Heartbeat:
        self.storage.record_heartbeat(self.trial_id)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.storage.record_heartbeat(self.trial_id)
            except optuna.exceptions.UpdateFinishedTrialError:
                return  # another process marked it failed (it went silent too long); its retry will run
            except Exception as exc:  # noqa: BLE001 - a lost database connection must not kill the training
                self.log(f"warning: heartbeat of trial id {self.trial_id} not recorded ({exc.__class__.__name__})")
