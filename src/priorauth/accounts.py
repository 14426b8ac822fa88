"""Staff accounts and sign-in sessions for the portal: argon2id passwords, throttling and lockout
after failed sign-ins, server-side sessions that expire by inactivity and absolute lifetime.

Plain functions over the store (no web framework here); the portal and `priorauth users` call them.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError
from sqlalchemy import delete, select
from sqlalchemy.orm import Session

from priorauth.errors import PriorAuthError
from priorauth.store import SessionRow, UserRow

ROLES = ("pharmacist", "coordinator", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
MIN_PASSWORD_LENGTH = 12
MAX_FAILED_SIGN_INS = 5  # then the account locks for LOCKOUT
LOCKOUT = timedelta(minutes=15)
IDLE_TIMEOUT = timedelta(minutes=15)
MAX_SESSION_AGE = timedelta(hours=12)
USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-")

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY_HASH = _hasher.hash("not a real password, used to keep timing equal")


class AccountError(PriorAuthError):
    """Raised when an account command cannot be done (unknown user, weak password, bad role)."""


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in attempt. `delay_s` is how long to make the caller wait."""

    user: UserRow | None
    outcome: str  # ok | bad_credentials | locked | disabled
    delay_s: float = 0.0


def allows(role: str, needed: str) -> bool:
    return RANK.get(role, -1) >= RANK[needed]


def _check_username(username: str) -> str:
    name = username.strip().lower()
    if not 2 <= len(name) <= 64 or not set(name) <= USERNAME_CHARS:
        raise AccountError("a username is 2-64 characters: a-z, 0-9, '.', '_' or '-'")
    return name


def _check_password(password: str) -> None:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise AccountError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")


def _user(session: Session, username: str) -> UserRow:
    user = session.scalars(select(UserRow).where(UserRow.username == username.lower())).first()
    if user is None:
        raise AccountError(f"no user {username!r}")
    return user


def add_user(session: Session, username: str, password: str, role: str, now: datetime) -> UserRow:
    name = _check_username(username)
    if role not in ROLES:
        raise AccountError(f"role must be one of {', '.join(ROLES)}")
    _check_password(password)
    if session.scalars(select(UserRow).where(UserRow.username == name)).first():
        raise AccountError(f"user {name!r} exists already")
    user = UserRow(
        username=name,
        password_hash=_hasher.hash(password),
        role=role,
        disabled=False,
        failed_attempts=0,
        created_at=now,
        password_changed_at=now,
    )
    session.add(user)
    session.flush()
    return user


def reset_password(session: Session, username: str, password: str, now: datetime) -> UserRow:
    """New password, lock cleared, every session of that user ended."""
    user = _user(session, username)
    _check_password(password)
    user.password_hash = _hasher.hash(password)
    user.password_changed_at = now
    user.failed_attempts, user.locked_until = 0, None
    session.execute(delete(SessionRow).where(SessionRow.user_id == user.id))
    return user


def set_disabled(session: Session, username: str, disabled: bool) -> UserRow:
    user = _user(session, username)
    user.disabled = disabled
    if disabled:
        session.execute(delete(SessionRow).where(SessionRow.user_id == user.id))
    return user


def authenticate(session: Session, username: str, password: str, now: datetime) -> SignIn:
    """Check a sign-in. Failures slow down (0.25 s, doubling, at most 4 s) and the fifth in a row
    locks the account for LOCKOUT. Unknown users cost the same hashing time as known ones."""
    name = username.strip().lower()
    user = session.scalars(select(UserRow).where(UserRow.username == name)).first()
    if user is None:
        with contextlib.suppress(VerificationError):
            _hasher.verify(_DUMMY_HASH, password)
        return SignIn(None, "bad_credentials", 0.25)
    if user.locked_until is not None and user.locked_until > now:
        return SignIn(None, "locked", 1.0)
    try:
        _hasher.verify(user.password_hash, password)
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        user.failed_attempts += 1
        if user.failed_attempts >= MAX_FAILED_SIGN_INS:
            user.locked_until = now + LOCKOUT
            user.failed_attempts = 0
            return SignIn(None, "locked", 1.0)
        return SignIn(None, "bad_credentials", min(0.25 * 2 ** (user.failed_attempts - 1), 4.0))
    if user.disabled:
        return SignIn(None, "disabled", 0.25)
    user.failed_attempts, user.locked_until = 0, None
    if _hasher.check_needs_rehash(user.password_hash):
        user.password_hash = _hasher.hash(password)
    return SignIn(user, "ok")


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def open_session(
    session: Session, user: UserRow, now: datetime, client: str | None
) -> tuple[str, str]:
    """A new session for `user`; returns (token for the cookie, CSRF token for forms)."""
    token, csrf = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    session.add(
        SessionRow(
            token_sha256=_digest(token),
            user_id=user.id,
            csrf_token=csrf,
            created_at=now,
            last_seen_at=now,
            client=(client or "")[:64],
        )
    )
    session.flush()
    return token, csrf


@dataclass(frozen=True)
class LiveSession:
    """Who a valid session token belongs to, as plain values (safe after the transaction)."""

    user_id: int
    username: str
    role: str
    csrf_token: str
    needs_touch: bool  # the inactivity clock should be restarted (at most once a minute)


TOUCH_EVERY = timedelta(minutes=1)


def resolve_session(
    session: Session,
    token: str,
    now: datetime,
    *,
    idle: timedelta = IDLE_TIMEOUT,
    max_age: timedelta = MAX_SESSION_AGE,
) -> LiveSession | None:
    """The user behind a session token, or None (unknown, expired, or the user is disabled).
    Reads only; the caller ends expired sessions and restarts the clock with touch_session."""
    row = session.get(SessionRow, _digest(token))
    if row is None:
        return None
    user = session.get(UserRow, row.user_id)
    expired = now - row.last_seen_at > idle or now - row.created_at > max_age
    if expired or user is None or user.disabled:
        return None
    return LiveSession(
        user.id, user.username, user.role, row.csrf_token, now - row.last_seen_at > TOUCH_EVERY
    )


def touch_session(session: Session, token: str, now: datetime) -> None:
    row = session.get(SessionRow, _digest(token))
    if row is not None:
        row.last_seen_at = now


def end_expired_sessions(
    session: Session,
    now: datetime,
    *,
    idle: timedelta = IDLE_TIMEOUT,
    max_age: timedelta = MAX_SESSION_AGE,
) -> int:
    return session.execute(
        delete(SessionRow).where(
            (SessionRow.last_seen_at < now - idle) | (SessionRow.created_at < now - max_age)
        )
    ).rowcount


def close_session(session: Session, token: str) -> None:
    session.execute(delete(SessionRow).where(SessionRow.token_sha256 == _digest(token)))


def csrf_ok(expected: str, submitted: str | None) -> bool:
    """The form's CSRF token matches the session's (constant-time comparison)."""
    return bool(submitted) and hmac.compare_digest(expected, submitted or "")
