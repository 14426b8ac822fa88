"""One nightly run at a time, and nothing left behind by a killed one.

- `night_lock(store)`: a lock in the store. PostgreSQL: a session advisory lock on a connection
  held for the run (the server drops it when the process dies). SQLite: a lease row naming the
  holder (host, pid, process start time); a holder that no longer runs on this host, or a
  foreign host's lease older than LEASE, is taken over. A second run gets `NightAlreadyRunning`.
- `scratch(home)`: the run's own temporary folder (`/tmp/priorauth-<hash of home>/run-<pid>`), used as
  TMPDIR for the run and its children (multiprocessing's `pymp-*` folders land there); the next
  run, holding the lock, removes every run folder but its own.
- `guard_children()`: the CLI's `priorauth nightly` becomes its process group's leader and forks
  a small watchdog; if the run dies without saying goodbye (kill -9), the watchdog kills the
  whole group (the temporary Prefect server, the render processes) and removes the scratch
  folder. It decides nothing about cases and touches no other files.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import os
import shutil
import signal
import socket
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import delete, select

from priorauth.errors import PriorAuthError
from priorauth.store import RunLockRow, Store

NIGHT_LOCK = "nightly"
ADVISORY_KEY = 727275  # the migrator uses 727274
LEASE = timedelta(hours=6)  # a foreign host's lease we cannot check by process ID


class NightAlreadyRunning(PriorAuthError):
    """Raised when another nightly run holds the store's lock; this run changes nothing."""


def _start_ticks(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux), so a reused pid is not
    mistaken for the holder; "0" where /proc is not available."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return "0"
    return stat.rpartition(")")[2].split()[19]


def holder_id(pid: int | None = None) -> str:
    pid = pid or os.getpid()
    return f"{socket.gethostname()}:{pid}:{_start_ticks(pid)}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder_alive(holder: str, renewed_at: datetime, now: datetime) -> bool:
    host, _, rest = holder.partition(":")
    pid, _, ticks = rest.partition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return renewed_at > now - LEASE
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return ticks in ("0", _start_ticks(int(pid)))


def _describe(holder: str | None, since: datetime | None) -> str:
    who = holder.rpartition(":")[0] if holder else "another process"
    when = f" since {since:%Y-%m-%d %H:%M:%S} UTC" if since else ""
    return (
        f"another nightly run is in progress ({who}{when}); this run changed nothing. "
        "Runs take turns: try again when it has finished."
    )


@contextmanager
def night_lock(store: Store, now: datetime | None = None) -> Iterator[None]:
    """Hold the nightly lock for the block, or raise NightAlreadyRunning at once."""
    now = now or datetime.now(UTC)
    me = holder_id()
    if store.engine.dialect.name == "postgresql":
        conn = store.engine.connect().execution_options(isolation_level="AUTOCOMMIT")
        try:
            got = conn.exec_driver_sql(f"SELECT pg_try_advisory_lock({ADVISORY_KEY})").scalar()
            if not got:
                with store.reader() as session:
                    row = session.get(RunLockRow, NIGHT_LOCK)
                    info = (row.holder, row.acquired_at) if row else (None, None)
                raise NightAlreadyRunning(_describe(*info))
            with store.session() as session:  # who holds it, for the second run's message
                session.merge(
                    RunLockRow(name=NIGHT_LOCK, holder=me, acquired_at=now, renewed_at=now)
                )
            try:
                yield
            finally:
                conn.exec_driver_sql(f"SELECT pg_advisory_unlock({ADVISORY_KEY})")
        finally:
            conn.close()
        return
    with store.session() as session:
        row = session.get(RunLockRow, NIGHT_LOCK)
        if row is not None and _holder_alive(row.holder, row.renewed_at, now):
            raise NightAlreadyRunning(_describe(row.holder, row.acquired_at))
        if row is None:
            session.add(RunLockRow(name=NIGHT_LOCK, holder=me, acquired_at=now, renewed_at=now))
        else:  # a dead holder's (killed): take it over
            row.holder, row.acquired_at, row.renewed_at = me, now, now
    try:
        yield
    finally:
        with store.session() as session:
            session.execute(
                delete(RunLockRow).where(RunLockRow.name == NIGHT_LOCK, RunLockRow.holder == me)
            )


def lock_holder(store: Store) -> str | None:
    """Who holds the nightly lock now (None when free): for a quick refusal before start-up."""
    now = datetime.now(UTC)
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as conn:
            held = conn.exec_driver_sql(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' "
                "AND objid = %(key)s AND granted",
                {"key": ADVISORY_KEY},
            ).scalar()
        if not held:
            return None
    with store.reader() as session:
        row = session.scalars(select(RunLockRow).where(RunLockRow.name == NIGHT_LOCK)).first()
        if row is None:
            return _describe(None, None) if store.engine.dialect.name == "postgresql" else None
        if store.engine.dialect.name == "sqlite" and not _holder_alive(
            row.holder, row.renewed_at, now
        ):
            return None
        return _describe(row.holder, row.acquired_at)


# ---- temporary files ------------------------------------------------------------------------


def scratch_root(home: Path) -> Path:
    """Where this data folder's runs keep their temporary folders: a short path under /tmp
    (named by a hash of the data folder), not under PRIORAUTH_HOME. multiprocessing's forkserver
    puts a Unix socket in TMPDIR, and a socket path over 107 bytes fails ("AF_UNIX path too
    long"): a deep PRIORAUTH_HOME would stop every render pool."""
    base = Path("/tmp") if Path("/tmp").is_dir() else Path(tempfile.gettempdir())  # noqa: S108
    tag = hashlib.sha256(str(home.resolve()).encode()).hexdigest()[:10]
    return base / f"priorauth-{tag}"


def scratch_folder(home: Path, pid: int | None = None) -> Path:
    return scratch_root(home) / f"run-{pid or os.getpid()}"


def remove_stale_scratch(home: Path) -> list[str]:
    """Remove every run folder of this data folder but this process's own (call it while
    holding the nightly lock: no other run is alive then). Returns the names removed."""
    root = scratch_root(home)
    mine = scratch_folder(home).name
    removed = []
    if root.is_dir():
        for path in root.iterdir():
            if path.name == mine or not path.is_dir() or not path.name.startswith("run-"):
                continue
            pid = path.name.removeprefix("run-")
            if pid.isdigit() and _alive(int(pid)):
                continue  # a live process that ran a night earlier still uses it
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
    return removed


@contextmanager
def scratch(home: Path) -> Iterator[Path]:
    """TMPDIR (and tempfile's folder) for the block: scratch_folder(home); removed
    after. multiprocessing keeps its `pymp-*` folder there, so a killed run's is found."""
    folder = scratch_folder(home).resolve()
    folder.mkdir(parents=True, exist_ok=True)
    saved_env, saved_dir = os.environ.get("TMPDIR"), tempfile.tempdir
    os.environ["TMPDIR"] = str(folder)
    tempfile.tempdir = str(folder)
    try:
        yield folder
    finally:
        tempfile.tempdir = saved_dir
        if saved_env is None:
            os.environ.pop("TMPDIR", None)
        else:
            os.environ["TMPDIR"] = saved_env
        _remove_when_done(folder)


def _remove_when_done(folder: Path) -> None:
    """Remove the run folder now, unless this process's multiprocessing keeps its own temporary
    folder (the forkserver's socket) inside: then at exit, after multiprocessing removes it."""
    import multiprocessing.process
    import multiprocessing.util

    mp_dir = multiprocessing.process.current_process()._config.get("tempdir")
    if mp_dir and Path(mp_dir).resolve().is_relative_to(folder):
        multiprocessing.util.Finalize(
            None, shutil.rmtree, args=(folder,), kwargs={"ignore_errors": True}, exitpriority=-101
        )  # multiprocessing's own folder is removed at exitpriority -100, before this
        return
    shutil.rmtree(folder, ignore_errors=True)


# ---- children of a killed run ---------------------------------------------------------------

_GOODBYE = b"x"


def guard_children(home: Path) -> None:
    """Make this process its group's leader and fork a watchdog that kills the group (and
    removes this run's scratch folder) when this process dies without a clean exit.

    Call it first thing in `priorauth nightly`, before threads or children exist. The watchdog
    waits on a pipe: a clean exit writes a goodbye byte; kill -9 only closes the pipe. The pipe
    is not inherited by exec'd children (the Prefect server, the forkserver), so the end of this
    process is what closes it. POSIX only; elsewhere a no-op."""
    if not hasattr(os, "fork") or not hasattr(os, "killpg"):
        return
    if os.getpgrp() != os.getpid():
        try:
            os.setpgid(0, 0)
        except OSError:
            return  # cannot lead a group of our own: never kill someone else's
    pgid = os.getpgrp()
    folder = scratch_folder(home).resolve()
    read_end, write_end = os.pipe()
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:  # the watchdog
        try:
            os.close(write_end)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is for the run, not for us
            data = b""
            while True:
                chunk = os.read(read_end, 1)
                if not chunk:
                    break
                data += chunk
            if _GOODBYE not in data:  # the run died: its scratch, then its children (and us)
                shutil.rmtree(folder, ignore_errors=True)
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)
        finally:
            os._exit(0)
    os.close(read_end)

    def goodbye() -> None:
        try:
            os.write(write_end, _GOODBYE)
            os.close(write_end)
        except OSError:
            pass

    atexit.register(goodbye)
