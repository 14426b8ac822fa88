"""The staff portal: pharmacists and coordinators sign in, work the queue, open a case, download
its PDFs; coordinators record submissions and decisions and regenerate letters.

A thin shell: every decision is a core function (accounts, tracking, pipeline); this module maps
HTTP to them, checks the role on every route, and audits every view of patient data (queue pages,
searches, case pages, downloads). Pages are server-rendered jinja2 from templates/portal/ with
autoescape on; every response, errors included, carries the security headers (HSTS on TLS).
Every state-changing POST must come from this origin (Origin, else Referer) and carry a token:
the session's CSRF token, or on the sign-in form a pre-session token bound to a cookie.
"""

import asyncio
import contextlib
import csv
import hashlib
import hmac
import io
import logging
import math
import os
import re
import secrets
import threading
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any
from urllib.parse import urlsplit

import jinja2
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from itsdangerous import BadSignature, Signer
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from priorauth import accounts
from priorauth.catalog import load_catalog
from priorauth.domain import CASE_ID_PATTERN
from priorauth.errors import PriorAuthError
from priorauth.settings import Settings, load_settings
from priorauth.statuses import ALLOWED, AUTHORIZED, AWAITING_DECISION, Status
from priorauth.store import AuditRow, CaseRow, DocumentRow, Store, UserRow

if TYPE_CHECKING:
    from priorauth.pipeline import Workbench

from priorauth.tracking import (
    Actor,
    audit,
    case_view,
    set_status,
    submit,
)

log = logging.getLogger("priorauth.portal")
COOKIE = "pa_session"
LOGIN_COOKIE = "pa_login"  # the pre-session nonce the sign-in form's token is bound to
PAGE_SIZE = 50
EXPIRING_DAYS = 30
EXPORT_MAX_ROWS = 100_000
# argon2id takes ~0.2 s of one core per check: at most this many at once (threads of their own,
# so sign-ins never hold the event loop or the request threads), and at most HASH_QUEUE waiting.
HASH_THREADS = max(1, (os.cpu_count() or 2) // 2)
HASH_QUEUE = 64
# ... and at a lower CPU priority (Linux: per thread), so under contention pages come first and
# a storm of wrong passwords slows the sign-ins, not the queue.
HASH_NICE = 10
HSTS = "max-age=31536000"
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    # Not no-referrer: with it, browsers send `Origin: null` on this site's own form posts,
    # which the Origin check must refuse. same-origin: nothing goes to other sites.
    "Referrer-Policy": "same-origin",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
}
SAFE_METHODS = {"GET", "HEAD", "OPTIONS"}
SIGN_IN_FAILED = (
    "Wrong username or password. After repeated failures, signing in pauses for a few minutes."
)
# Strict path and query values: anything else is "not found", never a 500 or a loose match.
DOCUMENT_ID = re.compile(r"[1-9][0-9]{0,17}")  # a positive 64-bit integer, canonical digits
CASE_ID = re.compile(CASE_ID_PATTERN)
PAGE_NUMBER = re.compile(r"[1-9][0-9]{0,5}")
FLAG = {"": False, "true": True, "false": False}
# One-time messages after a coordinator's action: the session row holds the code (server-side),
# so no text from a URL is ever shown as a message.
FLASH_MESSAGES = {
    "submitted": "submission recorded",
    "status": "status recorded",
    "ready": "marked ready; the letter and packet were regenerated",
    "regenerated": "letter and packet regenerated",
}
ERROR_MESSAGES = {
    400: "Please check the form and try again.",
    401: "Please sign in again.",
    403: "You do not have permission to do that.",
    404: "Not found.",
    405: "That is not allowed here.",
    429: "Too many requests; please wait a moment.",
    500: "Something went wrong. The error was logged; please try again.",
    503: "The portal is busy; please try again in a moment.",
}
# What staff read for a status code (the code stays the form value and the URL filter).
STATUS_LABELS = {
    "draft": "Draft",
    "needs_info": "Needs information",
    "ready": "Ready",
    "submitted": "Submitted",
    "pending": "Pending",
    "info_requested": "Information requested",
    "approved": "Approved",
    "partially_approved": "Partially approved",
    "denied": "Denied",
    "not_required": "Not required",
    "appeal_submitted": "Appeal submitted",
    "appeal_approved": "Appeal approved",
    "appeal_denied": "Appeal denied",
    "expired": "Expired",
    "withdrawn": "Withdrawn",
}
VERDICT_LABELS = {
    "met": "Met",
    "not_met": "Not met",
    "insufficient": "Information missing",
    "not_applicable": "Not applicable",
}


@dataclass(frozen=True)
class Viewer:
    """The signed-in staff member of this request (plain values, valid after any rollback)."""

    username: str
    role: str
    csrf_token: str
    token: str
    client: str | None
    flash: str | None = None

    @property
    def actor(self) -> Actor:
        return Actor(self.username, "portal", self.role, self.client)


class SignInRequired(Exception):
    """Raised by the auth dependency when no valid session comes with the request."""


def _origin(value: str) -> tuple[str, str, int] | None:
    """(scheme, host, port) of an Origin or Referer value; None for `null` or anything odd."""
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    return parts.scheme, parts.hostname.lower(), port or (443 if parts.scheme == "https" else 80)


def same_origin(request: Request) -> bool:
    """A state-changing request comes from this site: its Origin (else its Referer) names the
    origin the request was made to (behind a trusted proxy, the scheme it forwarded). Browsers
    send Origin with every POST; a client that sends neither is not a browser and cannot carry a
    victim's cookies, and its token is still checked."""
    own = _origin(f"{request.url.scheme}://{request.url.netloc}")
    claimed = request.headers.get("origin")
    if claimed is None:
        claimed = request.headers.get("referer")
        if claimed is None:
            return True
    return own is not None and _origin(claimed) == own


def create_app(
    settings: Settings | None = None,
    *,
    clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> FastAPI:
    """The portal app over one tracking store. `clock` and `sleep` are injectable so tests can
    freeze time (session expiry, lockout) and observe the sign-in slow-down without waiting."""
    settings = settings or load_settings()
    store = Store(settings.db_url)
    catalog = load_catalog(settings.reference_dir)
    signer = Signer(settings.signing_key(), salt="priorauth-session")
    login_signer = Signer(settings.signing_key(), salt="priorauth-login-form")
    letters_root = (settings.home / "letters").resolve()
    reason_codes = _reason_codes(settings)
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(settings.templates_dir / "portal"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    env.filters["dt"] = lambda v: v.strftime("%Y-%m-%d %H:%M") if v else ""
    env.filters["d"] = lambda v: v.isoformat() if v else ""
    env.filters["status_label"] = lambda v: STATUS_LABELS.get(str(v), str(v)) if v else ""
    env.filters["verdict_label"] = lambda v: VERDICT_LABELS.get(str(v), str(v)) if v else ""
    bench: dict[str, Workbench] = {}
    hash_pool = ThreadPoolExecutor(
        max_workers=HASH_THREADS, thread_name_prefix="argon2", initializer=_lower_priority
    )
    hash_waiting = [0]
    hash_lock = threading.Lock()

    app = FastAPI(title="priorauth portal", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount(
        "/static",
        StaticFiles(directory=settings.templates_dir / "portal" / "static"),
        name="static",
    )
    app.state.store = store

    def secure_headers(request: Request, response: Response) -> Response:
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        if request.url.scheme == "https":
            response.headers.setdefault("Strict-Transport-Security", HSTS)
        return response

    @app.middleware("http")
    async def guard(request: Request, call_next):  # type: ignore[no-untyped-def]
        if request.method not in SAFE_METHODS and not same_origin(request):
            # Cross-site (or script-driven from another origin): refused before any route runs.
            log.warning("cross-origin %s %s refused", request.method, request.url.path)
            return error_page(request, 403, "This form was not sent from the portal's own page.")
        return secure_headers(request, await call_next(request))

    def page(
        request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        viewer = getattr(request.state, "viewer", None)
        html = env.get_template(name).render(
            viewer=viewer, csrf=viewer.csrf_token if viewer else "", **context
        )
        return secure_headers(request, HTMLResponse(html, status_code=status))  # type: ignore[return-value]

    def error_page(
        request: Request, status: int, message: str | None = None, headers: Any = None
    ) -> HTMLResponse:
        response = page(
            request,
            "error.html",
            {"message": message or ERROR_MESSAGES.get(status, "Error.")},
            status,
        )
        for key, value in (headers or {}).items():
            response.headers[key] = value
        return response

    @app.exception_handler(SignInRequired)
    async def to_sign_in(request: Request, exc: SignInRequired) -> Response:
        if request.method == "GET":
            return secure_headers(request, RedirectResponse("/login", status_code=303))
        return error_page(request, 401)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        # A malformed ID in a URL is just an unknown ID; a malformed form is a bad request.
        return error_page(request, 404 if request.method == "GET" else 400)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        # Routing's own 404 and 405 come here too: the same HTML page, never JSON.
        message = str(exc.detail) if exc.status_code in (400, 409) else None
        return error_page(request, exc.status_code, message, exc.headers)

    @app.exception_handler(Exception)
    async def server_error(request: Request, exc: Exception) -> Response:
        log.error("%s %s failed: %s", request.method, request.url.path, type(exc).__name__)
        return error_page(request, 500)

    def db() -> Iterator[Session]:
        """A read transaction for pages and downloads (no write lock)."""
        with store.reader() as session:
            yield session

    def write_db() -> Iterator[Session]:
        """One write transaction for a form post: all of it happens, or none of it."""
        with store.session() as session:
            yield session

    DB = Annotated[Session, Depends(db)]
    WriteDB = Annotated[Session, Depends(write_db)]

    def record(who: Viewer | Actor, action: str, outcome: str, **fields: Any) -> None:
        """An audit row in a transaction of its own: kept even when the request then fails."""
        actor = who.actor if isinstance(who, Viewer) else who
        with store.session() as session:
            audit(session, actor, action, outcome, clock(), **fields)

    def client_of(request: Request) -> str | None:
        return request.client.host if request.client else None

    def session_token(request: Request) -> str | None:
        raw = request.cookies.get(COOKIE)
        if not raw:
            return None
        try:
            return signer.unsign(raw).decode()
        except BadSignature:
            return None

    def viewer(request: Request) -> Viewer:
        token = session_token(request)
        if token is None:
            raise SignInRequired
        now = clock()
        with store.reader() as session:
            live = accounts.resolve_session(session, token, now)
        if live is None:
            raise SignInRequired
        if live.needs_touch or live.flash:
            with store.session() as session:
                accounts.touch_session(session, token, now, clear_flash=bool(live.flash))
        current = Viewer(
            live.username, live.role, live.csrf_token, token, client_of(request), live.flash
        )
        request.state.viewer = current
        return current

    CurrentViewer = Annotated[Viewer, Depends(viewer)]

    def require(role: str) -> Callable[..., Viewer]:
        def check(request: Request, who: CurrentViewer) -> Viewer:
            if not accounts.allows(who.role, role):
                record(
                    who,
                    "authorization_denied",
                    "denied",
                    detail=f"{request.method} {request.url.path}"[:200],
                )
                raise HTTPException(403)
            return who

        return check

    Coordinator = Annotated[Viewer, Depends(require("coordinator"))]
    Admin = Annotated[Viewer, Depends(require("admin"))]

    def csrf(who: Viewer, token: str | None) -> None:
        if not accounts.csrf_ok(who.csrf_token, token):
            record(who, "csrf_rejected", "denied")
            raise HTTPException(403)

    def case_ref(case_id: str) -> str:
        """A case ID from a URL: well-formed, else not found (no lookup is made)."""
        if not CASE_ID.fullmatch(case_id):
            raise HTTPException(404)
        return case_id

    def flag(value: str) -> bool:
        if value not in FLAG:
            raise HTTPException(404)
        return FLAG[value]

    def page_ref(value: str) -> int:
        if not PAGE_NUMBER.fullmatch(value):
            raise HTTPException(404)
        return int(value)

    # ---- sign in / out -------------------------------------------------------------------

    def login_token(nonce: str) -> str:
        return login_signer.get_signature(nonce).decode()

    def login_page(
        request: Request, error: str | None, username: str, status: int = 200
    ) -> HTMLResponse:
        """The sign-in form with a token bound to this browser's pre-session cookie."""
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        fresh = not re.fullmatch(r"[A-Za-z0-9_-]{43}", nonce)
        if fresh:
            nonce = secrets.token_urlsafe(32)
        response = page(
            request,
            "login.html",
            {"error": error, "username": username, "login_token": login_token(nonce)},
            status,
        )
        if fresh:
            response.set_cookie(
                LOGIN_COOKIE,
                nonce,
                httponly=True,
                samesite="strict",
                secure=request.url.scheme == "https",
                path="/login",
            )
        return response

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return login_page(request, None, "")

    async def hashed(attempt: accounts.Attempt, password: str) -> accounts.Checked:
        """argon2 in its own bounded pool: a storm of sign-ins queues there, while pages keep
        the event loop and the request threads."""
        with hash_lock:
            if hash_waiting[0] >= HASH_QUEUE:
                raise HTTPException(503)
            hash_waiting[0] += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(hash_pool, accounts.check_password, attempt, password)
        finally:
            with hash_lock:
                hash_waiting[0] -= 1

    @app.post("/login")
    async def login(
        request: Request,
        username: Annotated[str, Form(max_length=64)],
        password: Annotated[str, Form(max_length=accounts.MAX_PASSWORD_LENGTH)],
        login_token_: Annotated[str, Form(alias="login_token", max_length=128)] = "",
    ) -> Response:
        nonce = request.cookies.get(LOGIN_COOKIE, "")
        if not nonce or not hmac.compare_digest(login_token(nonce), login_token_):
            # Login CSRF: a form posted from anywhere but this browser's own sign-in page.
            return login_page(request, "Please sign in from the sign-in page.", "", 403)
        now, client = clock(), client_of(request)

        def begin() -> accounts.Attempt:
            with store.reader() as session:
                return accounts.begin_sign_in(session, username, client, now)

        attempt = await run_in_threadpool(begin)
        checked = await hashed(attempt, password)
        previous = session_token(request)

        def finish() -> tuple[accounts.SignIn, str | None, int]:
            token, retry = None, 0
            with store.session() as session:
                result = accounts.finish_sign_in(session, attempt, checked, now)
                actor = Actor(result.username or "-", "portal", result.role, client)
                if result.outcome == "ok":
                    accounts.end_expired_sessions(session, now)
                    accounts.end_stale_throttles(session, now)
                    if previous:  # session rotation: this browser's earlier session ends
                        accounts.close_session(session, previous)
                    user = session.get(UserRow, result.user_id)
                    token, _ = accounts.open_session(session, user, now, client)  # type: ignore[arg-type]
                    audit(session, actor, "sign_in", "ok", now)
                else:
                    if result.audit:
                        audit(session, actor, "sign_in", result.audit, now, detail=result.detail)
                    if result.outcome == "throttled":
                        retry = accounts.retry_after_s(session, client, now)
            return result, token, retry

        result, token, retry = await run_in_threadpool(finish)
        if token is None:
            if result.outcome == "throttled":
                minutes = max(1, math.ceil(retry / 60))
                response = login_page(
                    request,
                    f"Too many failed sign-ins from your network. Try again in {minutes} min.",
                    "",
                    429,
                )
                response.headers["Retry-After"] = str(retry)
                return response
            await sleep(result.delay_s)  # the same for unknown, wrong and locked
            return login_page(request, SIGN_IN_FAILED, username, 401)
        response = secure_headers(request, RedirectResponse("/cases", status_code=303))
        response.set_cookie(
            COOKIE,
            signer.sign(token).decode(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
        response.delete_cookie(LOGIN_COOKIE, path="/login")
        return response

    @app.post("/logout")
    def logout(
        who: CurrentViewer,
        session: WriteDB,
        csrf_token: Annotated[str | None, Form()] = None,
    ) -> Response:
        csrf(who, csrf_token)
        accounts.close_session(session, who.token)
        audit(session, who.actor, "sign_out", "ok", clock())
        response = RedirectResponse("/login", status_code=303)
        response.delete_cookie(COOKIE, path="/")
        return response

    # ---- the queue and the case page -----------------------------------------------------

    @app.get("/")
    def home() -> Response:
        return RedirectResponse("/cases", status_code=303)

    sqlite = store.engine.dialect.name == "sqlite"
    known_statuses = {str(s) for s in Status}

    def id_prefix(prefix: str) -> ColumnElement[bool]:
        """Case IDs starting with `prefix` (taken literally). On SQLite a range on the primary
        key lets the index find them (its LIKE is case-insensitive and scans every row); the
        range is exact there because SQLite compares text byte by byte."""
        escaped = prefix.replace("/", "//").replace("%", "/%").replace("_", "/_")
        match = CaseRow.case_id.like(escaped + "%", escape="/")
        if sqlite:
            match = and_(CaseRow.case_id >= prefix, CaseRow.case_id < prefix + "\U0010ffff", match)
        return match

    @app.get("/cases", response_class=HTMLResponse)
    def queue(
        request: Request,
        who: CurrentViewer,
        status: Annotated[str, Query(max_length=32)] = "",
        payer: Annotated[str, Query(max_length=64)] = "",
        overdue_: Annotated[str, Query(alias="overdue", max_length=5)] = "",
        expiring_: Annotated[str, Query(alias="expiring", max_length=5)] = "",
        q: Annotated[str, Query(max_length=64)] = "",
        page_: Annotated[str, Query(alias="page", max_length=6)] = "1",
    ) -> HTMLResponse:
        overdue, expiring, page_number = flag(overdue_), flag(expiring_), page_ref(page_)
        if status and status not in known_statuses:
            raise HTTPException(404)
        now = clock()
        today = now.date()
        conditions = []
        if status:
            conditions.append(CaseRow.status == status)
        if payer:
            conditions.append(CaseRow.payer_id == payer)
        if overdue:
            conditions.append(CaseRow.status.in_([str(s) for s in AWAITING_DECISION]))
            conditions.append(CaseRow.due_by < now)
        if expiring:
            conditions.append(CaseRow.status.in_([str(s) for s in AUTHORIZED]))
            conditions.append(
                CaseRow.auth_end.between(today, today + timedelta(days=EXPIRING_DAYS))
            )
        if q.strip():
            term = q.strip()
            conditions.append(or_(*(id_prefix(p) for p in {term, term.upper(), term.lower()})))
        where = and_(*conditions) if conditions else None
        count_stmt = select(func.count()).select_from(CaseRow)
        rows_stmt = select(
            CaseRow.case_id,
            CaseRow.status,
            CaseRow.payer_id,
            CaseRow.product_id,
            CaseRow.created_at,
            CaseRow.updated_at,
            CaseRow.due_by,
            CaseRow.auth_end,
        )
        if where is not None:
            count_stmt, rows_stmt = count_stmt.where(where), rows_stmt.where(where)
        if overdue:  # most overdue first
            order = (CaseRow.due_by, CaseRow.case_id)
        elif expiring:  # soonest to end first
            order = (CaseRow.auth_end, CaseRow.case_id)
        else:  # most recently changed first (read backwards along an index)
            order = (CaseRow.updated_at.desc(), CaseRow.case_id.desc())
        # The read ends before the audit write (one database connection at a time per request).
        with store.reader() as session:
            total = session.scalar(count_stmt) or 0
            pages = max(1, math.ceil(total / PAGE_SIZE))
            page_number = min(page_number, pages)
            rows = session.execute(
                rows_stmt.order_by(*order).limit(PAGE_SIZE).offset((page_number - 1) * PAGE_SIZE)
            ).all()
        filters = {
            "status": status,
            "payer": payer,
            "overdue": overdue,
            "expiring": expiring,
            "q": q,
        }
        # Who saw which cases, when, from where: the IDs shown, and the filters that chose them.
        # A search term is kept only if it could be a case ID (a name typed there is PHI).
        searched = q.strip()
        if searched and not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", searched):
            searched = "(not a case ID)"
        used = "; ".join(f"{k}={v}" for k, v in {**filters, "q": searched}.items() if v)
        record(
            who,
            "search" if q.strip() else "queue_view",
            "ok",
            detail=f"page {page_number} of {pages}"
            + (f"; {used}" if used else "")
            + f"; shown: {', '.join(r.case_id for r in rows) or 'none'}",
        )
        items = []
        for r in rows:
            days_left = None
            if r.status in AWAITING_DECISION and r.due_by:
                days_left = math.floor((r.due_by - now).total_seconds() / 86400)
            elif r.status in AUTHORIZED and r.auth_end:
                days_left = (r.auth_end - today).days
            items.append(
                {
                    "row": r,
                    "days_left": days_left,
                    "payer": catalog.payers[r.payer_id].name
                    if r.payer_id in catalog.payers
                    else r.payer_id,
                }
            )
        return page(
            request,
            "queue.html",
            {
                "items": items,
                "total": total,
                "page": page_number,
                "pages": pages,
                "filters": filters,
                "statuses": [(str(s), STATUS_LABELS.get(str(s), str(s))) for s in Status],
                "payers": sorted(catalog.payers.values(), key=lambda p: p.name),
            },
        )

    def load_case(session: Session, case_id: str) -> CaseRow:
        row = session.get(CaseRow, case_ref(case_id))
        if row is None:
            raise HTTPException(404)
        return row

    @app.get("/cases/{case_id}", response_class=HTMLResponse)
    def case_page(request: Request, case_id: str, who: CurrentViewer) -> HTMLResponse:
        with store.reader() as session:
            row = load_case(session, case_id)
            view = case_view(session, case_id)
        record(who, "case_view", "ok", case_id=row.case_id)
        payer = catalog.payers.get(row.payer_id)
        return page(
            request,
            "case.html",
            {
                "case": row,
                "view": view,
                "summary": row.summary or {},
                "payer": payer,
                "can_edit": accounts.allows(who.role, "coordinator"),
                # only the moves the state machine allows from here (submission has its form)
                "next_statuses": sorted(
                    str(s) for s in ALLOWED[Status(row.status)] if s is not Status.SUBMITTED
                ),
                "can_submit": Status.SUBMITTED in ALLOWED[Status(row.status)],
                # needs_info → ready is a criteria override: its own form, a reason required
                "can_override": row.status == Status.NEEDS_INFO,
                "criteria": (row.summary or {}).get("criteria"),
                "reason_codes": reason_codes,
                "message": FLASH_MESSAGES.get(who.flash or ""),
            },
        )

    def back(who: Viewer, case_id: str, done: str, session: Session | None = None) -> Response:
        """Back to the case page with a one-time message kept on the server-side session."""
        if session is not None:
            accounts.set_flash(session, who.token, done)
        else:
            with store.session() as own:
                accounts.set_flash(own, who.token, done)
        return RedirectResponse(f"/cases/{case_id}", status_code=303)

    def apply_waiting(case_id: str) -> None:
        """Payer responses that waited for this case (a denial faxed back before the submission
        was recorded) apply now, after the change is committed, in the payer's decision-date
        order; the nightly run sends their notices. Never fails the coordinator's request."""
        from priorauth.nightly import apply_pending

        try:
            apply_pending(store, catalog, settings, settings.home, clock(), case_id=case_id)
        except Exception as exc:  # the change itself is saved; the night retries what is left
            # the exception's class only: its text could carry a payer file's content
            log.warning(
                "waiting payer responses of %s not applied yet (%s)", case_id, type(exc).__name__
            )

    @app.post("/cases/{case_id}/submit")
    def record_submission(
        case_id: str,
        who: Coordinator,
        method: Annotated[str, Form(pattern="^(fax|portal|epa)$")],
        reference: Annotated[str, Form(max_length=64)] = "",
        csrf_token: Annotated[str | None, Form()] = None,
    ) -> Response:
        csrf(who, csrf_token)
        try:
            with store.session() as session:
                load_case(session, case_id)
                submit(
                    session,
                    case_id,
                    method=method,
                    reference=reference or None,
                    actor=who.actor,
                    now=clock(),
                    catalog=catalog,
                )
        except PriorAuthError as exc:
            raise HTTPException(409, str(exc)) from None
        apply_waiting(case_id)
        return back(who, case_id, "submitted")

    def workbench() -> "Workbench":
        """The letter machinery, built on first use and once a day (the letter date)."""
        # Imported here: the ICD-10-CM code set it loads takes seconds, which the portal's other
        # pages do not need (start-up stays fast; the first regeneration pays it once).
        from priorauth.pipeline import Workbench

        today = clock().date()
        if today not in {b.today for b in bench.values()}:
            bench.clear()
            bench[today.isoformat()] = Workbench.build(settings, today)
        return next(iter(bench.values()))

    def override(case_id: str, who: Viewer, reason: str) -> Response:
        """needs_info → ready with the coordinator's reason: the letter and packet regenerated
        without the DRAFT watermark, then the move, the new versions and the audit row in one
        transaction. No transaction is held while the PDFs render."""
        from priorauth.nightly import regenerate_case

        if not reason.strip():
            raise HTTPException(
                400,
                "Marking a case that needs information as ready overrides the payer criteria: "
                "give the reason.",
            )
        try:
            result = regenerate_case(
                store,
                workbench(),
                settings.home,
                case_id,
                actor=who.actor,
                now=clock(),
                override_reason=reason,
            )
        except PriorAuthError as exc:
            raise HTTPException(409, str(exc)) from None
        if not result.ok:
            record(who, "generate", "invalid", case_id=case_id, detail=_fields(result.errors))
            raise HTTPException(409, "The case file no longer validates: " + _errors(result.errors))
        return back(who, case_id, "ready")

    @app.post("/cases/{case_id}/status")
    def record_status(
        case_id: str,
        who: Coordinator,
        status: Annotated[str, Form(max_length=32)],
        reason_code: Annotated[str, Form(max_length=64)] = "",
        reason: Annotated[str, Form(max_length=2000)] = "",
        reference: Annotated[str, Form(max_length=64)] = "",
        auth_start: Annotated[str, Form(max_length=10)] = "",
        auth_end: Annotated[str, Form(max_length=10)] = "",
        auth_units: Annotated[str, Form(max_length=9)] = "",
        decided_on: Annotated[str, Form(max_length=10)] = "",
        csrf_token: Annotated[str | None, Form()] = None,
    ) -> Response:
        csrf(who, csrf_token)
        with store.reader() as session:
            current = load_case(session, case_id).status
        if current == Status.NEEDS_INFO and status == Status.READY:
            return override(case_id, who, reason)
        if reason_code and reason_code not in reason_codes:
            # Reason codes come from reference/denial_reasons.yaml; free text goes in `reason`.
            raise HTTPException(400, "Choose a reason code from the list.")
        try:
            start = date.fromisoformat(auth_start) if auth_start else None
            end = date.fromisoformat(auth_end) if auth_end else None
            decided = date.fromisoformat(decided_on) if decided_on else None
            units = int(auth_units) if auth_units else None
        except ValueError:
            raise HTTPException(400, "Dates are YYYY-MM-DD and units a whole number.") from None
        try:
            with store.session() as session:
                set_status(
                    session,
                    case_id,
                    status,
                    actor=who.actor,
                    now=clock(),
                    catalog=catalog,
                    settings=settings,
                    reason_code=reason_code or None,
                    reason_text=reason or None,
                    reference=reference or None,
                    auth_start=start,
                    auth_end=end,
                    auth_units=units,
                    decided_on=decided,
                )
        except PriorAuthError as exc:
            raise HTTPException(409, str(exc)) from None
        apply_waiting(case_id)
        return back(who, case_id, "status")

    @app.post("/cases/{case_id}/regenerate")
    def regenerate(
        case_id: str,
        who: Coordinator,
        csrf_token: Annotated[str | None, Form()] = None,
    ) -> Response:
        csrf(who, csrf_token)
        from priorauth.nightly import regenerate_case

        with store.reader() as session:
            load_case(session, case_id)
        # No transaction is held while the PDFs render: read, render, then write. A coordinator's
        # criteria override of this case-file version keeps the letter final (no DRAFT mark).
        try:
            result = regenerate_case(
                store, workbench(), settings.home, case_id, actor=who.actor, now=clock()
            )
        except PriorAuthError as exc:
            raise HTTPException(409, str(exc)) from None
        if not result.ok or result.summary is None:
            record(who, "generate", "invalid", case_id=case_id, detail=_fields(result.errors))
            raise HTTPException(409, "The case file no longer validates: " + _errors(result.errors))
        return back(who, case_id, "regenerated")

    # ---- downloads -----------------------------------------------------------------------

    @app.get("/documents/{document_id}")
    def download(document_id: str, who: CurrentViewer) -> Response:
        """Looked up by ID in the store; the request never names a path. The file must sit
        under letters/ and still have the SHA-256 recorded when it was generated. The lookup's
        read transaction ends before the audit row is written (one connection at a time)."""
        if not DOCUMENT_ID.fullmatch(document_id) or int(document_id) >= 2**63:
            raise HTTPException(404)
        with store.reader() as session:
            doc = session.get(DocumentRow, int(document_id))
        if doc is None:
            raise HTTPException(404)
        path = (settings.home / doc.path).resolve()
        if not path.is_relative_to(letters_root) or not path.is_file():
            record(who, "download", "missing", case_id=doc.case_id, document_id=doc.id)
            raise HTTPException(404)
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != doc.sha256:
            # The current file is a newer version (or was tampered with): refuse, log, alert.
            log.error("document %s of case %s failed its SHA-256 check", doc.id, doc.case_id)
            record(who, "download", "integrity_failed", case_id=doc.case_id, document_id=doc.id)
            raise HTTPException(409, "This version is no longer on file; download the newest.")
        record(who, "download", "ok", case_id=doc.case_id, document_id=doc.id)
        name = f"{doc.case_id}-{doc.kind}-v{doc.version}.pdf"
        return Response(
            data,
            media_type="application/pdf",
            headers={"Content-Disposition": f'attachment; filename="{name}"'},
        )

    # ---- admin ---------------------------------------------------------------------------

    AuditFilter = Annotated[str, Query(max_length=64)]

    def audit_where(user: str, case: str, action: str) -> list[ColumnElement[bool]]:
        conditions = []
        if user.strip():
            conditions.append(AuditRow.actor == user.strip().lower())
        if case.strip():
            conditions.append(AuditRow.case_id == case.strip())
        if action.strip():
            conditions.append(AuditRow.action == action.strip())
        return conditions

    @app.get("/audit", response_class=HTMLResponse)
    def audit_log(
        request: Request,
        who: Admin,
        session: DB,
        page_: Annotated[str, Query(alias="page", max_length=6)] = "1",
        user: AuditFilter = "",
        case: AuditFilter = "",
        action: AuditFilter = "",
    ) -> HTMLResponse:
        page_number = page_ref(page_)
        where = audit_where(user, case, action)
        total = session.scalar(select(func.count(AuditRow.id)).where(*where)) or 0
        rows = session.scalars(
            select(AuditRow)
            .where(*where)
            .order_by(AuditRow.id.desc())
            .limit(PAGE_SIZE)
            .offset((page_number - 1) * PAGE_SIZE)
        ).all()
        return page(
            request,
            "audit.html",
            {
                "rows": rows,
                "total": total,
                "page": page_number,
                "pages": max(1, math.ceil(total / PAGE_SIZE)),
                "filters": {"user": user, "case": case, "action": action},
                "actions": sorted(
                    session.scalars(select(AuditRow.action).distinct()).all()  # small set
                ),
            },
        )

    @app.get("/audit.csv")
    def audit_export(
        who: Admin, user: AuditFilter = "", case: AuditFilter = "", action: AuditFilter = ""
    ) -> Response:
        """The filtered log as CSV, oldest first, at most EXPORT_MAX_ROWS rows (the export is
        itself audited). Cells that a spreadsheet would run as a formula are quoted with `'`."""
        where = audit_where(user, case, action)
        out = io.StringIO()
        writer = csv.writer(out)
        columns = ["id", "at_utc", "user", "role", "action", "case_id", "document_id"]
        writer.writerow([*columns, "outcome", "client", "detail"])
        with store.reader() as session:
            rows = session.execute(
                select(
                    AuditRow.id,
                    AuditRow.at,
                    AuditRow.actor,
                    AuditRow.role,
                    AuditRow.action,
                    AuditRow.case_id,
                    AuditRow.document_id,
                    AuditRow.outcome,
                    AuditRow.client,
                    AuditRow.detail,
                )
                .where(*where)
                .order_by(AuditRow.id)
                .limit(EXPORT_MAX_ROWS)
            ).all()
        for row in rows:
            writer.writerow([_cell(v) for v in row])
        used = "; ".join(
            f"{k}={v}" for k, v in (("user", user), ("case", case), ("action", action)) if v
        )
        record(
            who, "audit_export", "ok", detail=f"{len(rows)} rows" + (f"; {used}" if used else "")
        )
        return Response(
            out.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"Content-Disposition": 'attachment; filename="audit-log.csv"'},
        )

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _lower_priority() -> None:
    """Runs in each argon2 thread: raise its niceness (a thread may lower its own priority)."""
    with contextlib.suppress(AttributeError, OSError):  # elsewhere: full priority then
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICE)


def _cell(value: Any) -> str:
    """A CSV cell; text a spreadsheet would read as a formula (= + - @, tab, CR) gets a leading
    quote (OWASP "CSV Injection")."""
    if value is None:
        return ""
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="seconds")
    text = str(value)
    return "'" + text if text[:1] in ("=", "+", "-", "@", "\t", "\r") else text


def _reason_codes(settings: Settings) -> list[str]:
    """Our stable denial reason codes (reference/denial_reasons.yaml), for the decision form."""
    from priorauth.responses import load_denial_reasons

    return sorted(set(load_denial_reasons(settings.reference_dir).values()))


def _fields(errors: list[dict[str, str]]) -> str:
    return "; ".join(e["field"] for e in errors)


def _errors(errors: list[dict[str, str]]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)
