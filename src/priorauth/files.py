"""Files appear whole or not at all: write to a temporary file in the same folder, fsync, rename.

Also the SHA-256 helper used to compare outputs and to skip rewriting identical ones.
"""

from __future__ import annotations

import hashlib
import os
import signal
import tempfile
from pathlib import Path


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: Path) -> str | None:
    try:
        with path.open("rb") as handle:
            return hashlib.file_digest(handle, "sha256").hexdigest()
    except FileNotFoundError:
        return None


def write_atomic(path: Path, data: bytes) -> bool:
    """Write `data` to `path` atomically; return False (and write nothing) if it already holds it."""
    if path.exists() and sha256_file(path) == sha256_bytes(data):
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    return True


def crashpoint(name: str) -> None:
    """Fault injection for the crash tests: PRIORAUTH_CRASH_AT=<name> kills this process here
    with SIGKILL, exactly as `kill -9` would. Does nothing otherwise."""
    if os.environ.get("PRIORAUTH_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)


def keep_version(path: Path, sha256: str) -> Path:
    """Keep this exact version of `path` as versions/<stem>-<sha256[:16]><suffix> beside it: a
    hard link, so a later atomic replace of `path` leaves the kept version intact. Returns the
    kept path (or `path` itself if it no longer holds these bytes)."""
    target = path.parent / "versions" / f"{path.stem}-{sha256[:16]}{path.suffix}"
    if target.exists():
        return target
    if sha256_file(path) != sha256:
        return path
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(path, target)
    except FileExistsError:
        pass
    except OSError:  # a filesystem without hard links: copy whole-or-nothing instead
        write_atomic(target, path.read_bytes())
    return target
