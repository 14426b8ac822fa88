"""The staff portal: pharmacists and coordinators sign in, work the queue, open a case, download
its PDFs; coordinators record submissions and decisions and regenerate letters.

A thin shell: every decision is a core function (accounts, tracking, pipeline); this module maps
HTTP to them, checks the role on every route, and audits. Pages are server-rendered jinja2 from
templates/portal/ with autoescape on; every response says `Cache-Control: no-store`.
"""

import asyncio
import hashlib
import logging
import math
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any

import jinja2
from fastapi import Depends, FastAPI, Form, HTTPException, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from itsdangerous import BadSignature, Signer
from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session

from priorauth import accounts
from priorauth.catalog import load_catalog
from priorauth.errors import PriorAuthError
from priorauth.settings import Settings, load_settings
from priorauth.statuses import ALLOWED, AUTHORIZED, AWAITING_DECISION, Status
from priorauth.store import AuditRow, CaseRow, DocumentRow, Store

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
PAGE_SIZE = 50
EXPIRING_DAYS = 30
SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "Pragma": "no-cache",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; frame-ancestors 'none'; form-action 'self'",
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

    @property
    def actor(self) -> Actor:
        return Actor(self.username, "portal", self.role, self.client)


class SignInRequired(Exception):
    """Raised by the auth dependency when no valid session comes with the request."""


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
    letters_root = (settings.home / "letters").resolve()
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

    app = FastAPI(title="priorauth portal", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount(
        "/static",
        StaticFiles(directory=settings.templates_dir / "portal" / "static"),
        name="static",
    )
    app.state.store = store

    @app.middleware("http")
    async def headers(request: Request, call_next):  # type: ignore[no-untyped-def]
        response = await call_next(request)
        for key, value in SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    @app.exception_handler(SignInRequired)
    async def to_sign_in(request: Request, exc: SignInRequired) -> Response:
        if request.method == "GET":
            return RedirectResponse("/login", status_code=303)
        return page(request, "error.html", {"message": "Please sign in again."}, 401)

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> Response:
        # A malformed ID in a URL is just an unknown ID; a malformed form is a bad request.
        if request.method == "GET":
            return page(request, "error.html", {"message": "Not found."}, 404)
        return page(request, "error.html", {"message": "Please check the form and try again."}, 400)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException) -> Response:
        messages = {
            403: "You do not have permission to do that.",
            404: "Not found.",
            400: str(exc.detail),
            409: str(exc.detail),
        }
        return page(
            request,
            "error.html",
            {"message": messages.get(exc.status_code, "Error.")},
            exc.status_code,
        )

    def page(
        request: Request, name: str, context: dict[str, Any], status: int = 200
    ) -> HTMLResponse:
        viewer = getattr(request.state, "viewer", None)
        html = env.get_template(name).render(
            viewer=viewer, csrf=viewer.csrf_token if viewer else "", **context
        )
        return HTMLResponse(html, status_code=status)

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

    def viewer(request: Request) -> Viewer:
        raw = request.cookies.get(COOKIE)
        if not raw:
            raise SignInRequired
        try:
            token = signer.unsign(raw).decode()
        except BadSignature:
            raise SignInRequired from None
        now = clock()
        with store.reader() as session:
            live = accounts.resolve_session(session, token, now)
        if live is None:
            raise SignInRequired
        if live.needs_touch:
            with store.session() as session:
                accounts.touch_session(session, token, now)
        current = Viewer(live.username, live.role, live.csrf_token, token, client_of(request))
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
                    detail=f"{request.method} {request.url.path}",
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

    # ---- sign in / out -------------------------------------------------------------------

    @app.get("/login", response_class=HTMLResponse)
    def login_form(request: Request) -> HTMLResponse:
        return page(request, "login.html", {"error": None, "username": ""})

    @app.post("/login")
    async def login(
        request: Request,
        username: Annotated[str, Form(max_length=64)],
        password: Annotated[str, Form(max_length=1024)],
    ) -> Response:
        now, client = clock(), client_of(request)
        with store.session() as session:
            accounts.end_expired_sessions(session, now)
            result = accounts.authenticate(session, username, password, now)
            actor = Actor(username.strip().lower()[:64] or "-", "portal", None, client)
            if result.user is None:
                audit(session, actor, "sign_in", result.outcome, now)
            else:
                token, _ = accounts.open_session(session, result.user, now, client)
                audit(
                    session,
                    Actor(result.user.username, "portal", result.user.role, client),
                    "sign_in",
                    "ok",
                    now,
                )
        if result.user is None:
            await sleep(result.delay_s)  # slows guessing; the lockout stops it
            message = (
                "This account is locked for a while after repeated failed sign-ins."
                if result.outcome == "locked"
                else "Wrong username or password."
            )
            return page(request, "login.html", {"error": message, "username": username}, 401)
        response = RedirectResponse("/cases", status_code=303)
        response.set_cookie(
            COOKIE,
            signer.sign(token).decode(),
            httponly=True,
            samesite="strict",
            secure=request.url.scheme == "https",
            path="/",
        )
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
        session: DB,
        status: Annotated[str, Query(max_length=32)] = "",
        payer: Annotated[str, Query(max_length=64)] = "",
        overdue: bool = False,
        expiring: bool = False,
        q: Annotated[str, Query(max_length=64)] = "",
        page_number: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
    ) -> HTMLResponse:
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
        total = session.scalar(count_stmt) or 0
        pages = max(1, math.ceil(total / PAGE_SIZE))
        page_number = min(page_number, pages)
        if overdue:  # most overdue first
            order = (CaseRow.due_by, CaseRow.case_id)
        elif expiring:  # soonest to end first
            order = (CaseRow.auth_end, CaseRow.case_id)
        else:  # most recently changed first (read backwards along an index)
            order = (CaseRow.updated_at.desc(), CaseRow.case_id.desc())
        rows = session.execute(
            rows_stmt.order_by(*order).limit(PAGE_SIZE).offset((page_number - 1) * PAGE_SIZE)
        ).all()
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
        filters = {
            "status": status,
            "payer": payer,
            "overdue": overdue,
            "expiring": expiring,
            "q": q,
        }
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
        row = session.get(CaseRow, case_id)
        if row is None:
            raise HTTPException(404)
        return row

    @app.get("/cases/{case_id}", response_class=HTMLResponse)
    def case_page(request: Request, case_id: str, who: CurrentViewer, session: DB) -> HTMLResponse:
        row = load_case(session, case_id)
        view = case_view(session, case_id)
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
                "message": request.query_params.get("done"),
            },
        )

    def back(case_id: str, done: str) -> Response:
        return RedirectResponse(f"/cases/{case_id}?done={done}", status_code=303)

    @app.post("/cases/{case_id}/submit")
    def record_submission(
        case_id: str,
        who: Coordinator,
        session: WriteDB,
        method: Annotated[str, Form(pattern="^(fax|portal|epa)$")],
        reference: Annotated[str, Form(max_length=64)] = "",
        csrf_token: Annotated[str | None, Form()] = None,
    ) -> Response:
        csrf(who, csrf_token)
        load_case(session, case_id)
        try:
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
        return back(case_id, "submitted")

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
        return back(case_id, "ready")

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
        return back(case_id, "status")

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
        return back(case_id, "regenerated")

    # ---- downloads -----------------------------------------------------------------------

    @app.get("/documents/{document_id}")
    def download(document_id: int, who: CurrentViewer) -> Response:
        """Looked up by ID in the store; the request never names a path. The file must sit
        under letters/ and still have the SHA-256 recorded when it was generated. The lookup's
        read transaction ends before the audit row is written (one connection at a time)."""
        with store.reader() as session:
            doc = session.get(DocumentRow, document_id)
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

    @app.get("/audit", response_class=HTMLResponse)
    def audit_log(
        request: Request,
        who: Admin,
        session: DB,
        page_number: Annotated[int, Query(alias="page", ge=1, le=100_000)] = 1,
        action: Annotated[str, Query(max_length=64)] = "",
    ) -> HTMLResponse:
        stmt = select(AuditRow)
        count = select(func.count(AuditRow.id))
        if action:
            stmt, count = (
                stmt.where(AuditRow.action == action),
                count.where(AuditRow.action == action),
            )
        total = session.scalar(count) or 0
        rows = session.scalars(
            stmt.order_by(AuditRow.id.desc()).limit(PAGE_SIZE).offset((page_number - 1) * PAGE_SIZE)
        ).all()
        return page(
            request,
            "audit.html",
            {
                "rows": rows,
                "total": total,
                "page": page_number,
                "pages": max(1, math.ceil(total / PAGE_SIZE)),
                "action": action,
            },
        )

    @app.get("/healthz")
    def health() -> dict[str, str]:
        return {"status": "ok"}

    return app


def _fields(errors: list[dict[str, str]]) -> str:
    return "; ".join(e["field"] for e in errors)


def _errors(errors: list[dict[str, str]]) -> str:
    return "; ".join(f"{e['field']}: {e['message']}" for e in errors)
