"""Staff accounts and sign-in sessions for the portal: argon2id passwords, sign-in throttling,
server-side sessions that expire by inactivity and absolute lifetime.

Plain functions over the store (no web framework here); the portal and `priorauth users` call them.
A sign-in is three steps so the slow part holds no transaction and can run in a bounded thread
pool: `begin_sign_in` (read), `check_password` (argon2, no database), `finish_sign_in` (write).

Throttling (OWASP ASVS 5.0 V6.3, "Authentication Cheat Sheet"): failed sign-ins are counted per
client address and per username typed from that address. An address with ADDRESS_MAX_FAILURES
in FAILURE_WINDOW is refused without hashing. A username that fails PAIR_MAX_FAILURES times from
one address is locked *for that address* (1 min, doubling, at most LOCK_CAP), so a stranger
cannot lock a colleague out from elsewhere, and `priorauth users unlock` ends it at once. Unknown
usernames are counted, hashed and answered exactly like known ones, so the answer (message,
status, delay, hashing time) does not tell whether an account exists or is locked.
"""

from __future__ import annotations

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
from priorauth.store import SessionRow, SignInThrottleRow, UserRow

ROLES = ("pharmacist", "coordinator", "admin")
RANK = {role: rank for rank, role in enumerate(ROLES)}
MIN_PASSWORD_LENGTH = 12
MAX_PASSWORD_LENGTH = 1024
IDLE_TIMEOUT = timedelta(minutes=15)
MAX_SESSION_AGE = timedelta(hours=12)
USERNAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789._-")

FAILURE_WINDOW = timedelta(minutes=15)
ADDRESS_MAX_FAILURES = 20  # failed sign-ins from one address per window, then refused unhashed
PAIR_MAX_FAILURES = 5  # failures of one username from one address, then locked for it
FIRST_LOCK = timedelta(minutes=1)  # doubling with each lock of the same pair ...
LOCK_CAP = timedelta(minutes=15)  # ... up to this
FORGET_AFTER = timedelta(hours=24)  # a quiet pair starts again from the first lock
MAX_DELAY_S = 2.0  # the answer to a failure waits 0.25 s, doubling, at most this

_hasher = PasswordHasher()  # argon2id with the library's current recommended parameters
_DUMMY_HASH = _hasher.hash("not a real password, used to keep timing equal")


class AccountError(PriorAuthError):
    """Raised when an account command cannot be done (unknown user, weak password, bad role)."""


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
    unlock(session, user.username, now)
    return user


def set_disabled(session: Session, username: str, disabled: bool) -> UserRow:
    user = _user(session, username)
    user.disabled = disabled
    if disabled:
        session.execute(delete(SessionRow).where(SessionRow.user_id == user.id))
    return user


def unlock(session: Session, username: str, now: datetime) -> int:
    """End every sign-in lock of `username` (from any address); returns how many were ended."""
    user = _user(session, username)
    user.failed_attempts, user.locked_until = 0, None
    return session.execute(
        delete(SignInThrottleRow).where(
            SignInThrottleRow.key.startswith(f"pair:{user.username}|", autoescape=True)
        )
    ).rowcount


# ---- signing in ------------------------------------------------------------------------------


def _address_key(client: str | None) -> str:
    return f"addr:{client or '-'}"


def _pair_key(username: str, client: str | None) -> str:
    # `|` cannot occur in a username (USERNAME_CHARS), so one username's keys share a prefix.
    return f"pair:{username}|{client or '-'}"


def normalize_username(username: str) -> str:
    return username.strip().lower()[:64]


def _live(row: SignInThrottleRow | None, now: datetime) -> SignInThrottleRow | None:
    """The row if its counting window or its lock still applies."""
    if row is None:
        return None
    if row.locked_until is not None and row.locked_until > now:
        return row
    return row if now - row.window_start < FAILURE_WINDOW else None


@dataclass(frozen=True)
class Attempt:
    """What `begin_sign_in` read: whose hash to check, and whether the attempt is refused
    already (`throttled`: the address; `locked`: this username from this address)."""

    username: str
    client: str | None
    user_id: int | None
    password_hash: str
    refused: str | None
    disabled: bool


@dataclass(frozen=True)
class Checked:
    """The result of `check_password`: the password matched, and a new hash if the stored one
    uses older argon2 parameters."""

    matched: bool
    new_hash: str | None = None


@dataclass(frozen=True)
class SignIn:
    """The outcome of a sign-in. `delay_s`: how long the answer waits (the same whether or not
    the account exists); `audit`: the audit outcome to record, or None when this failure is
    only counted (failures are audited when a window starts, a lock begins or an address is
    refused, so unauthenticated requests cannot grow the log without bound)."""

    user_id: int | None
    username: str
    role: str | None
    outcome: str  # ok | bad_credentials | locked | disabled | throttled
    delay_s: float = 0.0
    audit: str | None = None
    detail: str | None = None


def begin_sign_in(
    session: Session,
    username: str,
    client: str | None,
    now: datetime,
    *,
    address_limit: int = ADDRESS_MAX_FAILURES,
) -> Attempt:
    """Step 1 (a read): the stored hash to check (a dummy one for unknown users) and whether the
    address or this username from it is refused for now."""
    name = normalize_username(username)
    address = _live(session.get(SignInThrottleRow, _address_key(client)), now)
    pair = _live(session.get(SignInThrottleRow, _pair_key(name, client)), now)
    user = session.scalars(select(UserRow).where(UserRow.username == name)).first()
    refused = None
    if address is not None and address.failures >= address_limit:
        refused = "throttled"
    elif pair is not None and pair.locked_until is not None and pair.locked_until > now:
        refused = "locked"
    return Attempt(
        username=name,
        client=client,
        user_id=user.id if user else None,
        password_hash=user.password_hash if user else _DUMMY_HASH,
        refused=refused,
        disabled=bool(user and user.disabled),
    )


def check_password(attempt: Attempt, password: str) -> Checked:
    """Step 2 (CPU, about 0.2 s, no database): argon2 verification. A locked pair or an unknown
    user is checked too, against the real or the dummy hash, so the time taken tells nothing;
    only a throttled address is not hashed at all."""
    if attempt.refused == "throttled":
        return Checked(False)
    try:
        _hasher.verify(attempt.password_hash, password[:MAX_PASSWORD_LENGTH])
    except (VerifyMismatchError, VerificationError, InvalidHashError):
        return Checked(False)
    matched = attempt.user_id is not None and attempt.refused is None and not attempt.disabled
    if matched and _hasher.check_needs_rehash(attempt.password_hash):
        return Checked(True, _hasher.hash(password))
    return Checked(matched)


def _counter(session: Session, key: str, now: datetime) -> SignInThrottleRow:
    """The throttle row of `key`, created if missing and locked for this transaction; a row whose
    window and lock are over starts counting again."""
    from sqlalchemy.dialects import postgresql, sqlite

    dialect = session.get_bind().dialect.name
    insert = postgresql.insert if dialect == "postgresql" else sqlite.insert
    session.execute(
        insert(SignInThrottleRow)
        .values(key=key, failures=0, window_start=now, locked_until=None, locks=0, updated_at=now)
        .on_conflict_do_nothing(index_elements=["key"])
    )
    row = session.scalars(
        select(SignInThrottleRow)
        .where(SignInThrottleRow.key == key)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).one()
    if now - row.updated_at > FORGET_AFTER:
        row.locks = 0
    locked = row.locked_until is not None and row.locked_until > now
    if not locked and now - row.window_start >= FAILURE_WINDOW:
        row.failures, row.window_start, row.locked_until = 0, now, None
    return row


def _delay(failures: int) -> float:
    return min(0.25 * 2 ** max(failures - 1, 0), MAX_DELAY_S)


def finish_sign_in(
    session: Session,
    attempt: Attempt,
    checked: Checked,
    now: datetime,
    *,
    address_limit: int = ADDRESS_MAX_FAILURES,
) -> SignIn:
    """Step 3 (a short write): count a failure or clear this username's counter on success."""
    name = attempt.username
    if checked.matched and attempt.user_id is not None:
        user = session.get(UserRow, attempt.user_id)
        if user is not None and not user.disabled:
            if checked.new_hash:
                user.password_hash = checked.new_hash
            user.failed_attempts, user.locked_until = 0, None
            session.execute(
                delete(SignInThrottleRow).where(
                    SignInThrottleRow.key == _pair_key(name, attempt.client)
                )
            )
            return SignIn(user.id, user.username, user.role, "ok", audit="ok")
    address = _counter(session, _address_key(attempt.client), now)
    address.failures += 1
    address.updated_at = now
    if attempt.refused == "throttled":
        # Counted, not hashed, not audited again (the row that began it was).
        return SignIn(None, name, None, "throttled")
    outcome = attempt.refused or ("disabled" if attempt.disabled else "bad_credentials")
    pair = _counter(session, _pair_key(name, attempt.client), now)
    pair.updated_at = now
    audit, detail = (outcome if address.failures == 1 else None), None
    if attempt.refused != "locked":
        pair.failures += 1
        if pair.failures >= PAIR_MAX_FAILURES:
            pair.locks += 1
            lock = min(FIRST_LOCK * 2 ** (pair.locks - 1), LOCK_CAP)
            pair.locked_until, pair.failures, pair.window_start = now + lock, 0, now
            audit = "locked"
            detail = (
                f"{PAIR_MAX_FAILURES} failed sign-ins from this address; locked for it "
                f"{int(lock.total_seconds() // 60)} min"
            )
    delay = MAX_DELAY_S if pair.locked_until and pair.locked_until > now else _delay(pair.failures)
    if address.failures == address_limit:
        audit = "throttled"
        detail = f"{address_limit} failed sign-ins from this address in 15 min: refused for now"
    elif audit == outcome and detail is None:
        detail = "first failed sign-in from this address in 15 min (later ones are counted)"
        if attempt.user_id is None:
            detail += "; unknown user"
    return SignIn(None, name, None, outcome, delay, audit, detail)


def retry_after_s(session: Session, client: str | None, now: datetime) -> int:
    """Seconds until a throttled address may try again."""
    row = session.get(SignInThrottleRow, _address_key(client))
    if row is None:
        return 0
    return max(0, int((row.window_start + FAILURE_WINDOW - now).total_seconds()) + 1)


def end_stale_throttles(session: Session, now: datetime) -> int:
    """Forget counters that no longer matter (no lock, quiet for FORGET_AFTER)."""
    return session.execute(
        delete(SignInThrottleRow).where(SignInThrottleRow.updated_at < now - FORGET_AFTER)
    ).rowcount


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
    flash: str | None = None  # a message code for this page, shown once


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
        user.id,
        user.username,
        user.role,
        row.csrf_token,
        now - row.last_seen_at > TOUCH_EVERY,
        row.flash,
    )


def touch_session(
    session: Session, token: str, now: datetime, *, clear_flash: bool = False
) -> None:
    row = session.get(SessionRow, _digest(token))
    if row is not None:
        row.last_seen_at = now
        if clear_flash:
            row.flash = None


def set_flash(session: Session, token: str, code: str) -> None:
    """A one-time message for this browser's next page (a code; the text lives in the portal)."""
    row = session.get(SessionRow, _digest(token))
    if row is not None:
        row.flash = code[:32]


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
