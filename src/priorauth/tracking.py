"""Tracking rules over the store: cases, letter versions, submissions, status changes through the
state machine, payer responses, the denial-notification outbox and the audit log.

Functions take an open Session (one transaction) and an explicit `now`; they never commit, send
or touch files. Callers (CLI, nightly run, portal) own the transaction and the side effects.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import and_, func, or_, select
from sqlalchemy.orm import Session

from priorauth import limits
from priorauth.catalog import Catalog
from priorauth.domain import Case
from priorauth.errors import PriorAuthError
from priorauth.letters.criteria import needs_documents
from priorauth.notify import (
    DenialNotice,
    appeal_deadline,
    channel_key,
    channel_label,
    channels,
    render_attention,
    render_notice,
)
from priorauth.responses import reason_meaning, reject_reason_text
from priorauth.statuses import (
    ADVERSE,
    ALLOWED,
    AUTHORIZED,
    AWAITING_DECISION,
    IllegalTransition,
    Status,
    check_transition,
)
from priorauth.store import (
    AuditRow,
    CaseRow,
    DocumentRow,
    NotificationRow,
    PayerResponseRow,
    StatusChangeRow,
    SubmissionRow,
)


class UnknownCase(PriorAuthError):
    """Raised when a case ID is not in the store."""


class ReasonRequired(PriorAuthError):
    """Raised when a move needs a reason (a criteria override) and none was given."""


class FieldTooLong(PriorAuthError):
    """Raised when a coordinator's value is longer than the store keeps (priorauth.limits)."""


def check_lengths(**values: tuple[str | None, int]) -> None:
    """Refuse over-long inputs up front (a clear message, nothing changed) instead of letting
    the database refuse them mid-transaction."""
    for name, (value, limit) in values.items():
        if limits.too_long(value, limit):
            raise FieldTooLong(f"{name} is {len(value or '')} characters; at most {limit}")


class CaseFileChanged(PriorAuthError):
    """Raised when a case file changed after the version the store evaluated: an override
    applies to one evaluated version only, so the new one must be evaluated first."""


# The reason code of a coordinator's needs_info → ready move: the payer criteria the file cannot
# yet show are accepted as they are (the letter is then final, without the DRAFT watermark).
OVERRIDE_REASON_CODE = "CRITERIA_OVERRIDE"


@dataclass(frozen=True)
class Actor:
    """Who or what makes a change: a coordinator (user name), a payer file, the nightly run."""

    name: str
    source: str  # coordinator | payer_file | nightly | portal
    role: str | None = None
    client: str | None = None


NIGHTLY = Actor("nightly", "nightly", "system")


def get_case(session: Session, case_id: str, *, lock: bool = False) -> CaseRow:
    stmt = select(CaseRow).where(CaseRow.case_id == case_id)
    if lock and session.bind is not None and session.bind.dialect.name == "postgresql":
        stmt = stmt.with_for_update()
    row = session.scalars(stmt).first()
    if row is None:
        raise UnknownCase(f"unknown case {case_id}")
    return row


def audit(
    session: Session,
    actor: Actor,
    action: str,
    outcome: str,
    now: datetime,
    *,
    case_id: str | None = None,
    document_id: int | None = None,
    detail: str | None = None,
) -> None:
    """Append one audit row (no names or diagnoses in `detail`)."""
    session.add(
        AuditRow(
            at=now,
            actor=actor.name,
            role=actor.role,
            action=action,
            case_id=case_id,
            document_id=document_id,
            outcome=outcome,
            client=actor.client,
            detail=detail,
        )
    )


def register_case(
    session: Session,
    case: Case,
    *,
    source_file: str,
    case_sha256: str,
    summary: dict[str, Any] | None,
    now: datetime,
    actor: Actor = NIGHTLY,
) -> CaseRow:
    """Insert a new case as draft, or refresh the stored copy of a corrected case file."""
    row = session.get(CaseRow, case.case_id)
    fields = {
        "source_file": source_file,
        "case_sha256": case_sha256,
        "payer_id": case.coverage.payer_id,
        "product_id": case.request.product_id,
        "hcpcs": (summary or {}).get("product", {}).get("hcpcs", ""),
        "indication": case.indication,
        "urgent": case.request.urgent,
        "patient_name": f"{case.patient.first_name} {case.patient.last_name}",
        "date_of_birth": case.patient.date_of_birth,
        "member_id": case.coverage.member_id,
        "service_start": case.request.start_date,
        "units_requested": (summary or {}).get("dosing", {}).get("billing_units_in_authorization"),
        "summary": summary,
        "errors": None,
        "updated_at": now,
    }
    if row is None:
        row = CaseRow(case_id=case.case_id, status=Status.DRAFT, created_at=now, **fields)
        session.add(row)
        session.add(
            StatusChangeRow(
                case_id=case.case_id,
                from_status=None,
                to_status=Status.DRAFT,
                at=now,
                source=actor.source,
                actor=actor.name,
                reason_text="case received",
            )
        )
        session.flush()
        audit(session, actor, "case_registered", "ok", now, case_id=case.case_id)
    elif row.case_sha256 != case_sha256:
        for key, value in fields.items():
            setattr(row, key, value)
        audit(session, actor, "case_updated", "ok", now, case_id=case.case_id)
    return row


def transition(
    session: Session,
    row: CaseRow,
    new: Status | str,
    *,
    actor: Actor,
    now: datetime,
    catalog: Catalog | None = None,
    settings: Any = None,
    payer_code: str | None = None,
    reason_code: str | None = None,
    reason_text: str | None = None,
    reference: str | None = None,
    response_key: str | None = None,
    decided_on: date | None = None,
) -> StatusChangeRow:
    """Move a case through the state machine (IllegalTransition changes nothing), record the
    change in the history and the audit log, and queue denial notices for adverse decisions.

    The appeal window runs from the denial date (DOMAIN.md §8): the payer's decision date when
    its response states one, else the day the decision is recorded; never a later day than
    that, so a response read days after the denial cannot stretch the deadline."""
    target = check_transition(row.status, new)
    change = StatusChangeRow(
        case_id=row.case_id,
        from_status=row.status,
        to_status=target,
        at=now,
        source=actor.source,
        actor=actor.name,
        payer_code=payer_code,
        reason_code=reason_code,
        reason_text=reason_text,
        reference=reference,
        response_key=response_key,
    )
    session.add(change)
    row.status = target
    row.updated_at = now
    if target not in AWAITING_DECISION:
        row.overdue_since = None
    session.flush()
    audit(
        session,
        actor,
        "status_change",
        "ok",
        now,
        case_id=row.case_id,
        detail=f"{change.from_status}->{target}",
    )
    if target in ADVERSE and catalog is not None:
        payer = catalog.payer(row.payer_id)
        denied_on = min(decided_on or now.date(), now.date())
        row.appeal_deadline = appeal_deadline(denied_on, catalog.rules_for(payer).appeal_days)
        if settings is not None:
            queue_denial_notices(
                session,
                row,
                change,
                payer_name=payer.name,
                settings=settings,
                now=now,
                decided_on=denied_on,
            )
    return change


EVENT_CHANNEL = "prefect-event"  # outbox rows that become Prefect events, not messages


def queue_denial_notices(
    session: Session,
    row: CaseRow,
    change: StatusChangeRow,
    *,
    payer_name: str,
    settings: Any,
    now: datetime,
    decided_on: date | None = None,
) -> int:
    """One outbox row per configured channel for this decision, and one for its Prefect event;
    the dedup key makes each once."""
    assert row.appeal_deadline is not None
    notice = DenialNotice(
        case_id=row.case_id,
        payer_name=payer_name,
        status=str(change.to_status),
        reason_code=change.reason_code,
        reason_meaning=reason_meaning(change.reason_code, getattr(settings, "reference_dir", None)),
        decided_on=decided_on or change.at.date(),
        appeal_deadline=row.appeal_deadline,
        portal_url=f"{settings.portal_url.rstrip('/')}/cases/{row.case_id}",
        certification_number=change.reference,
    )
    title, body = render_notice(notice)
    payload = {  # the Prefect event's: no patient identifiers
        "case_id": row.case_id,
        "status": str(change.to_status),
        "reason_code": change.reason_code or "",
        "appeal_deadline": row.appeal_deadline.isoformat(),
    }
    # One row per configured channel (the dedup key: this decision, this channel; at most 200
    # characters), plus the Prefect event for automations: it rides the same outbox, so a crash,
    # or a denial recorded from the CLI or the portal (no Prefect there), is emitted by the next
    # nightly flow run.
    rows = [
        (
            hashlib.sha256(channel_key(url).encode()).hexdigest()[:16],
            channel_label(url),
            channel_key(url),
            title,
            body,
        )
        for url in channels(settings.notify_urls)
    ]
    rows.append(
        (
            EVENT_CHANNEL,
            EVENT_CHANNEL,
            EVENT_CHANNEL,
            f"priorauth.case.{change.to_status}",
            json.dumps(payload, sort_keys=True),
        )
    )
    queued = sum(
        _outbox(
            session,
            f"denial:{row.case_id}:{change.id}:{suffix}",
            case_id=row.case_id,
            event=str(change.to_status),
            channel=(label, key_of_channel),
            title=row_title,
            body=row_body,
            now=now,
        )
        for suffix, label, key_of_channel, row_title, row_body in rows
    )
    session.flush()
    return queued


def _outbox(
    session: Session,
    key: str,
    *,
    case_id: str | None,
    event: str,
    channel: tuple[str, str],
    title: str,
    body: str,
    now: datetime,
) -> bool:
    """Queue one notice in the outbox unless its dedup key is already there (then False): the
    one way every notice enters it, so a re-run or a second process never queues it twice."""
    if session.scalar(select(NotificationRow.id).where(NotificationRow.dedup_key == key)):
        return False
    label, key_of_channel = channel
    session.add(
        NotificationRow(
            dedup_key=key,
            case_id=case_id,
            event=event[:32],
            channel=label,
            channel_key=key_of_channel,
            state="pending",
            title=title,
            body=body,
            created_at=now,
        )
    )
    return True


def insufficient_criteria(summary: dict[str, Any] | None) -> list[str]:
    """The ids of the payer criteria a (tracked) summary shows as insufficient: safe to log."""
    criteria = (summary or {}).get("criteria") or {}
    return [
        str(item.get("id"))
        for item in criteria.get("items") or []
        if item.get("verdict") == "insufficient"
    ]


def override_in_force(row: CaseRow) -> bool:
    """Whether a coordinator accepted the stored case-file version's insufficient criteria. The
    mark lives in the stored summary, which a changed case file replaces (evaluated afresh)."""
    return bool(((row.summary or {}).get("criteria") or {}).get("override"))


def record_documents(
    session: Session,
    case_id: str,
    documents: list[tuple[str, str, str]],
    *,
    actor: Actor,
    now: datetime,
    result_status: str = "ready",
    missing: list[str] | None = None,
) -> list[DocumentRow]:
    """Record (kind, path, sha256) documents; a new version only when the bytes changed.

    `result_status` is the generation's: "ready" moves a draft or needs_info case to ready;
    "needs_info" (documents written as a DRAFT, payer criteria `missing`, by id) moves a draft
    case to needs_info, and never to ready: only a result that meets the criteria, or a
    coordinator's override (`override_to_ready`), does that."""
    rows = []
    for kind, path, sha in documents:
        existing = session.scalars(
            select(DocumentRow).where(
                DocumentRow.case_id == case_id, DocumentRow.kind == kind, DocumentRow.sha256 == sha
            )
        ).first()
        if existing is None:
            version = (
                session.scalar(
                    select(func.max(DocumentRow.version)).where(
                        DocumentRow.case_id == case_id, DocumentRow.kind == kind
                    )
                )
                or 0
            ) + 1
            existing = DocumentRow(
                case_id=case_id, kind=kind, version=version, path=path, sha256=sha, created_at=now
            )
            session.add(existing)
            session.flush()
            audit(
                session,
                actor,
                "generate",
                "ok",
                now,
                case_id=case_id,
                document_id=existing.id,
                detail=f"{kind} v{version}",
            )
        rows.append(existing)
    row = get_case(session, case_id)
    if result_status == Status.NEEDS_INFO:
        ids = ", ".join(missing or []) or "see the checklist"
        if row.status == Status.NEEDS_INFO:
            pass  # still missing information: the history already says so
        elif Status.NEEDS_INFO in ALLOWED[Status(row.status)]:
            transition(
                session,
                row,
                Status.NEEDS_INFO,
                actor=actor,
                now=now,
                reason_text=f"draft letter generated; payer criteria insufficient: {ids}",
            )
        else:  # e.g. a ready case whose corrected file lacks a document: say so, change nothing
            audit(
                session,
                actor,
                "criteria_insufficient",
                "flagged",
                now,
                case_id=case_id,
                detail=f"status {row.status} kept; payer criteria insufficient: {ids}",
            )
    elif row.status in (Status.DRAFT, Status.NEEDS_INFO):
        transition(
            session,
            row,
            Status.READY,
            actor=actor,
            now=now,
            reason_text="letter and packet generated",
        )
    return rows


def override_to_ready(
    session: Session,
    case_id: str,
    *,
    reason: str | None,
    actor: Actor,
    now: datetime,
    case_sha256: str | None = None,
    summary: dict[str, Any] | None = None,
) -> StatusChangeRow:
    """A coordinator moves a needs_info case to ready although payer criteria are insufficient.

    The reason is required; the move is recorded in the history (reason code CRITERIA_OVERRIDE,
    who, when, the reason) and the audit log (the criterion ids and the case-file version, no
    patient data). The override holds for the stored case-file version: `case_sha256`, when
    given, must be that version (else CaseFileChanged). `summary`: the tracked summary of the
    letter regenerated without the watermark; without it the stored summary is marked, and the
    next regeneration of this version honours the override."""
    row = get_case(session, case_id, lock=True)
    if row.status != Status.NEEDS_INFO:
        check_transition(row.status, Status.READY)  # the state machine's own refusal, if any
        raise IllegalTransition(
            f"{case_id} is {row.status}, not needs_info: there are no insufficient criteria "
            "to override"
        )
    if not (reason or "").strip():
        raise ReasonRequired(
            f"{case_id} is needs_info: moving it to ready overrides the payer criteria it "
            "cannot yet show; a reason is required"
        )
    if case_sha256 is not None and case_sha256 != row.case_sha256:
        raise CaseFileChanged(
            f"the case file of {case_id} changed after it was evaluated; the next nightly run "
            "evaluates the new version (then override that one if still needed)"
        )
    missing = insufficient_criteria(row.summary)
    change = transition(
        session,
        row,
        Status.READY,
        actor=actor,
        now=now,
        reason_code=OVERRIDE_REASON_CODE,
        reason_text=reason.strip(),  # type: ignore[union-attr]
    )
    tracked = dict(summary if summary is not None else row.summary or {})
    if needs_documents(tracked.get("criteria")):
        tracked["criteria"] = {**tracked["criteria"], "override": True}
    tracked["status"] = Status.READY.value
    row.summary = tracked
    audit(
        session,
        actor,
        "criteria_override",
        "ok",
        now,
        case_id=case_id,
        detail=f"insufficient accepted: {', '.join(missing) or '-'}; "
        f"case file {row.case_sha256[:12]}",
    )
    return change


def mark_needs_info(
    session: Session, case_id: str, errors: list[dict[str, str]], *, actor: Actor, now: datetime
) -> None:
    row = session.get(CaseRow, case_id)
    if row is None:
        return
    row.errors = errors
    if row.status == Status.DRAFT:
        fields = ", ".join(e["field"] for e in errors)
        transition(
            session,
            row,
            Status.NEEDS_INFO,
            actor=actor,
            now=now,
            reason_text=f"cannot generate: {fields}",
        )


def submit(
    session: Session,
    case_id: str,
    *,
    method: str,
    reference: str | None,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
) -> SubmissionRow:
    """Record that the packet went to the payer; the decision clock starts now. Responses the
    payer sent before this was recorded are then applied by the caller (nightly.apply_pending)."""
    check_lengths(reference=(reference, limits.REFERENCE))
    row = get_case(session, case_id, lock=True)
    payer = catalog.payer(row.payer_id)
    rules = catalog.rules_for(payer)
    hours = rules.decision_hours_urgent if row.urgent else rules.decision_hours_standard
    due_by = now + timedelta(hours=hours)
    transition(
        session,
        row,
        Status.SUBMITTED,
        actor=actor,
        now=now,
        reference=reference,
        reason_text=f"submitted by {method}",
    )
    submission = SubmissionRow(
        case_id=case_id,
        payer_id=payer.id,
        method=method,
        reference=reference,
        submitted_at=now,
        due_by=due_by,
        actor=actor.name,
    )
    session.add(submission)
    row.payer_reference = reference or row.payer_reference
    row.due_by = due_by
    row.overdue_since = None
    session.flush()
    return submission


def set_status(
    session: Session,
    case_id: str,
    status: Status | str,
    *,
    actor: Actor,
    now: datetime,
    catalog: Catalog,
    settings: Any,
    reason_code: str | None = None,
    reason_text: str | None = None,
    reference: str | None = None,
    payer_code: str | None = None,
    response_key: str | None = None,
    auth_start: date | None = None,
    auth_end: date | None = None,
    auth_units: int | None = None,
    decided_on: date | None = None,
) -> StatusChangeRow:
    """A decision or other status change, from a coordinator or a payer file."""
    check_lengths(
        reference=(reference, limits.REFERENCE),
        reason_code=(reason_code, limits.REASON_CODE),
        reason=(reason_text, limits.REASON_TEXT),
    )
    row = get_case(session, case_id, lock=True)
    if row.status == Status.NEEDS_INFO and str(status) == Status.READY:
        # A criteria override: reason required, audited, marked for this case-file version.
        # Callers that can render (CLI, portal) use nightly.regenerate_case(override_reason=…),
        # which also makes the letter final at once.
        return override_to_ready(session, case_id, reason=reason_text, actor=actor, now=now)
    change = transition(
        session,
        row,
        status,
        actor=actor,
        now=now,
        catalog=catalog,
        settings=settings,
        payer_code=payer_code,
        reason_code=reason_code,
        reason_text=reason_text,
        reference=reference,
        response_key=response_key,
        decided_on=decided_on,
    )
    if change.to_status in AUTHORIZED:
        row.auth_number = reference or row.auth_number
        row.auth_start = auth_start or row.auth_start
        row.auth_end = auth_end or row.auth_end
        row.auth_units = auth_units if auth_units is not None else row.auth_units
    return change


# ---- payer responses ---------------------------------------------------------------------


def match_case(session: Session, response: Any) -> tuple[CaseRow | None, str | None]:
    """Our trace number (case ID) first, then the payer reference recorded at submission, then
    member ID + HCPCS (+ service start when both sides have it)."""
    if response.case_id:
        row = session.get(CaseRow, response.case_id)
        if row is not None:
            return row, "trace_number"
    if response.payer_reference:
        row = session.scalars(
            select(CaseRow).where(CaseRow.payer_reference == response.payer_reference)
        ).first()
        if row is not None:
            return row, "payer_reference"
    if response.member_id and response.hcpcs:
        conditions = [CaseRow.member_id == response.member_id, CaseRow.hcpcs == response.hcpcs]
        if response.service_start:
            conditions.append(
                or_(
                    CaseRow.service_start.is_(None), CaseRow.service_start == response.service_start
                )
            )
        rows = session.scalars(select(CaseRow).where(and_(*conditions))).all()
        if len(rows) == 1:
            return rows[0], "member_hcpcs_dates"
    return None, None


# Ledger outcomes. `received` and `pending` are retried; the rest are final, and a response the
# store has already resolved is the only kind of duplicate.
OPEN = ("received", "pending")
NOT_YET_SUBMITTED = frozenset({Status.DRAFT, Status.NEEDS_INFO, Status.READY})
UNMATCHED_REASON = "no case matches the trace number, payer reference or member ID + HCPCS + dates"


@dataclass(frozen=True)
class Ingested:
    """What became of one payer response; `change` is set when a status changed.

    outcome: applied | no_change | rejection | pending | superseded | duplicate."""

    outcome: str
    case_id: str | None = None
    change: StatusChangeRow | None = None
    detail: str | None = None
    newly_pending: bool = False

    @property
    def adverse(self) -> bool:
        return self.change is not None and self.change.to_status in ADVERSE


def receive_response(
    session: Session,
    response: Any,
    *,
    now: datetime,
    stored_file: str | None = None,
) -> PayerResponseRow | None:
    """Record a parsed response in the ledger as `received` (before its file is moved, so a
    crash in between loses nothing). Returns the new row; None when the key is known."""
    existing = session.scalars(
        select(PayerResponseRow).where(PayerResponseRow.dedup_key == response.dedup_key)
    ).first()
    if existing is not None:
        return None
    row = PayerResponseRow(
        dedup_key=response.dedup_key,
        source_file=response.source,
        case_id=None,
        matched_by=None,
        outcome="received",
        detail=None,
        at=now,
        stored_file=stored_file,
        response_index=response.index,
        decision_date=response.decision_date,
        attempts=0,
    )
    session.add(row)
    session.flush()
    return row


def open_responses(session: Session, *, case_id: str | None = None) -> list[PayerResponseRow]:
    """Responses still to apply (received or pending), in the payer's decision-date order (no
    date last), then first seen first. `case_id`: that case's, plus those matching no case yet."""
    stmt = select(PayerResponseRow).where(PayerResponseRow.outcome.in_(OPEN))
    if case_id is not None:
        stmt = stmt.where(
            or_(PayerResponseRow.case_id == case_id, PayerResponseRow.case_id.is_(None))
        )
    return list(
        session.scalars(
            stmt.order_by(
                PayerResponseRow.decision_date.is_(None),
                PayerResponseRow.decision_date,
                PayerResponseRow.id,
            )
        )
    )


def _latest_applied_decision(session: Session, case_id: str) -> date | None:
    return session.scalar(
        select(func.max(PayerResponseRow.decision_date)).where(
            PayerResponseRow.case_id == case_id, PayerResponseRow.outcome == "applied"
        )
    )


def ingest_response(
    session: Session,
    response: Any,
    *,
    catalog: Catalog,
    settings: Any,
    now: datetime,
    actor: Actor,
    stored_file: str | None = None,
) -> Ingested:
    """Apply one parsed payer response, or keep it pending with the reason.

    Never dropped: a response for an unknown case, a case not yet submitted, or a status that
    does not allow it stays `pending` (one notice, shown in `priorauth cases`) and is retried
    each night and when its case changes. An older decision than one already applied to the
    case is `superseded` (kept, not applied). Only a resolved response is a duplicate."""
    ledger = session.scalars(
        select(PayerResponseRow).where(PayerResponseRow.dedup_key == response.dedup_key)
    ).first()
    if ledger is not None and ledger.outcome not in OPEN:
        return Ingested("duplicate", ledger.case_id)
    if ledger is None:
        ledger = receive_response(session, response, now=now, stored_file=stored_file)
        assert ledger is not None
    was_pending = ledger.outcome == "pending"
    ledger.attempts = (ledger.attempts or 0) + 1
    row, matched_by = match_case(session, response)

    def resolve(
        outcome: str, detail: str | None, change: StatusChangeRow | None = None
    ) -> Ingested:
        ledger.case_id = row.case_id if row else None
        ledger.matched_by = matched_by
        ledger.outcome = outcome
        ledger.detail = detail
        newly = outcome == "pending" and not was_pending
        if outcome != "pending":
            ledger.resolved_at = now
        session.flush()
        if newly and settings is not None:
            _queue_attention(
                session,
                "pending_response",
                ledger,
                [
                    ("Payer response", _ledger_ref(ledger)),
                    ("Payer decision", _decision_words(response)),
                    ("Waiting because", detail or ""),
                    ("Next", "retried every night and whenever the case changes"),
                ],
                settings=settings,
                now=now,
            )
        return Ingested(outcome, ledger.case_id, change, detail, newly)

    if row is None:
        return resolve("pending", UNMATCHED_REASON)
    if response.kind == "rejection":
        errors = "; ".join(
            f"{code}: {reject_reason_text(code)}" for code, _ in response.rejection_errors
        )
        audit(session, actor, "payer_rejection", "error", now, case_id=row.case_id, detail=errors)
        result = resolve("rejection", errors or "transaction rejected")
        if settings is not None:
            _queue_attention(
                session,
                "rejection",
                ledger,
                [
                    ("Payer response", _ledger_ref(ledger)),
                    ("Rejected", errors or "transaction rejected (no reason code)"),
                    ("Next", "correct the request and resend it; no appeal clock starts"),
                ],
                settings=settings,
                now=now,
            )
        return result
    latest = _latest_applied_decision(session, row.case_id)
    if response.decision_date and latest and response.decision_date < latest:
        return resolve(
            "superseded",
            f"decided {response.decision_date}, before the decision of {latest} already applied",
        )
    if response.status is None or Status(response.status) == row.status:
        return resolve("no_change", f"already {row.status}")
    if Status(row.status) in NOT_YET_SUBMITTED:
        return resolve(
            "pending",
            f"case {row.case_id} is {row.status}, not yet submitted: applied once it is",
        )
    try:
        change = set_status(
            session,
            row.case_id,
            response.status,
            actor=actor,
            now=now,
            catalog=catalog,
            settings=settings,
            reason_code=response.reason_code,
            reason_text=response.reason_text,
            reference=response.certification_number,
            payer_code=response.action_code,
            response_key=response.dedup_key,
            auth_start=response.authorized_start,
            auth_end=response.authorized_end,
            auth_units=response.authorized_units,
            decided_on=response.decision_date,
        )
    except PriorAuthError as exc:
        audit(
            session, actor, "payer_response_pending", "error", now, case_id=row.case_id,
            detail=str(exc),
        )  # fmt: skip
        return resolve("pending", str(exc))
    if response.payer_reference and not row.payer_reference:
        row.payer_reference = response.payer_reference
    return resolve("applied", f"{response.action_code} -> {response.status}", change)


def _decision_words(response: Any) -> str:
    if response.kind == "rejection":
        return "transaction rejection"
    words = str(response.status or response.action_code or "decision")
    if response.reason_code:
        words += f", reason {response.reason_code}"
    if response.decision_date:
        words += f", decided {response.decision_date.isoformat()}"
    return words


def _ledger_ref(ledger: PayerResponseRow) -> str:
    """How a notice names a received response: its ledger number, never the payer's file name
    (outside data: a fax-back service may name a file after the patient). The portal and
    `priorauth responses list` show the file."""
    return f"#{ledger.id} (priorauth responses list, or the case page)"


def _queue_attention(
    session: Session,
    kind: str,
    ledger: PayerResponseRow,
    facts: list[tuple[str, str]],
    *,
    settings: Any,
    now: datetime,
) -> int:
    """One notice per channel about a response that needs a coordinator (once per response)."""
    case_id = ledger.case_id
    portal = settings.portal_url.rstrip("/")
    title, body = render_attention(
        kind, case_id, facts, f"{portal}/cases/{case_id}" if case_id else f"{portal}/"
    )
    queued = 0
    for url in channels(settings.notify_urls):
        suffix = hashlib.sha256(channel_key(url).encode()).hexdigest()[:16]
        queued += _outbox(
            session,
            f"{kind}:{ledger.id}:{suffix}",
            case_id=case_id,
            event=kind,
            channel=(channel_label(url), channel_key(url)),
            title=title,
            body=body,
            now=now,
        )
    session.flush()
    return queued


def dismiss_response(
    session: Session, ledger_id: int, *, reason: str, actor: Actor, now: datetime
) -> PayerResponseRow:
    """A coordinator closes a pending response that will never apply (e.g. a payer's mistake);
    the reason is required and audited; the response and its file stay on record."""
    row = session.get(PayerResponseRow, ledger_id)
    if row is None or row.outcome not in OPEN:
        raise UnknownCase(f"no pending payer response {ledger_id}")
    if not reason.strip():
        raise ReasonRequired("dismissing a pending payer response needs a reason")
    row.outcome, row.resolved_at = "dismissed", now
    row.detail = f"dismissed by {actor.name}: {reason.strip()}"[:2000]
    audit(
        session, actor, "payer_response_dismissed", "ok", now, case_id=row.case_id,
        detail=f"response {ledger_id}",
    )  # fmt: skip
    return row


def pending_view(session: Session, *, older_than: datetime | None = None) -> list[dict[str, Any]]:
    """Pending payer responses (IDs, case IDs, file names, reasons: no patient data)."""
    stmt = select(PayerResponseRow).where(PayerResponseRow.outcome == "pending")
    if older_than is not None:
        stmt = stmt.where(PayerResponseRow.at < older_than)
    return [
        {
            "id": r.id,
            "case_id": r.case_id,
            "file": r.source_file,
            "stored_file": r.stored_file,
            "decision_date": r.decision_date.isoformat() if r.decision_date else None,
            "since": r.at.isoformat(),
            "attempts": r.attempts,
            "reason": r.detail,
        }
        for r in session.scalars(stmt.order_by(PayerResponseRow.id))
    ]


def open_rejections(session: Session) -> dict[str, str]:
    """case ID → the payer's latest rejection (AAA codes and meanings) not yet followed by a
    change to the case: the coordinator must correct and resend."""
    rows = session.execute(
        select(
            PayerResponseRow.case_id,
            PayerResponseRow.detail,
            PayerResponseRow.at,
            CaseRow.updated_at,
        )
        .join(CaseRow, CaseRow.case_id == PayerResponseRow.case_id)
        .where(PayerResponseRow.outcome == "rejection")
        .order_by(PayerResponseRow.id)
    ).all()
    return {case_id: detail or "" for case_id, detail, at, updated in rows if at >= updated}


# ---- the nightly checks ------------------------------------------------------------------


def flag_overdue(session: Session, now: datetime, actor: Actor = NIGHTLY) -> list[str]:
    """Cases awaiting a decision past the payer's deadline; newly overdue ones are stamped."""
    rows = session.scalars(
        select(CaseRow).where(
            CaseRow.status.in_([str(s) for s in AWAITING_DECISION]), CaseRow.due_by < now
        )
    ).all()
    for row in rows:
        if row.overdue_since is None:
            row.overdue_since = now
            audit(session, actor, "overdue", "flagged", now, case_id=row.case_id)
    return sorted(row.case_id for row in rows)


def business_days_before(day: date, count: int) -> date:
    """The date `count` business days (Monday-Friday) before `day`."""
    while count > 0:
        day -= timedelta(days=1)
        if day.weekday() < 5:
            count -= 1
    return day


def follow_ups_due(session: Session, now: datetime, business_days: int) -> list[str]:
    """Cases still awaiting a decision whose last change is `business_days` business days old
    or more: staff follow up with the payer (DOMAIN.md §8, every 2 business days)."""
    threshold = business_days_before(now.date(), business_days)
    rows = session.scalars(
        select(CaseRow.case_id).where(
            CaseRow.status.in_([str(s) for s in AWAITING_DECISION]),
            CaseRow.updated_at < datetime.combine(threshold + timedelta(days=1), time(), UTC),
        )
    ).all()
    return sorted(rows)


def expiring(session: Session, today: date, lead_days: int) -> list[CaseRow]:
    """Live authorizations ending within `lead_days` (the renewal window)."""
    return list(
        session.scalars(
            select(CaseRow)
            .where(
                CaseRow.status.in_([str(s) for s in AUTHORIZED]),
                CaseRow.auth_end.is_not(None),
                CaseRow.auth_end >= today,
                CaseRow.auth_end <= today + timedelta(days=lead_days),
            )
            .order_by(CaseRow.case_id)
        ).all()
    )


def units_run_out(row: Any) -> date | None:
    """The first scheduled course the payer's authorized units do not cover, if it falls before
    the authorization ends; else None (DOMAIN.md §8: warn as authorized units run out).

    The units and dates are the payer's; only their use is projected, on the request's schedule:
    one course of `billing_units_per_course` every `interval_days`, from the later of the
    authorization start and the requested start (a single course when there is no interval).
    With a loading phase (`dosing.phases`, see dosing.Regimen.as_dict) the loading courses come
    first, then maintenance from its `first_course_day`.
    `row`: a CaseRow, or any row with its auth_start, auth_end, auth_units, service_start and
    summary."""
    summary = row.summary or {}
    dosing = summary.get("dosing") or {}
    per_course = dosing.get("billing_units_per_course")
    if row.auth_units is None or row.auth_start is None or row.auth_end is None or not per_course:
        return None
    if dosing.get("phases"):
        return _phased_units_run_out(row, dosing["phases"])
    interval = (summary.get("inputs") or {}).get("interval_days")
    covered = row.auth_units // per_course
    first = max(row.auth_start, row.service_start or row.auth_start)
    if interval:
        uncovered = first + timedelta(days=covered * interval)
    elif covered:
        return None
    else:
        uncovered = first
    return uncovered if uncovered <= row.auth_end else None


def _phased_units_run_out(row: Any, phases: list[dict[str, Any]]) -> date | None:
    """units_run_out on a loading + maintenance schedule: walk the courses in date order until
    the authorized units no longer cover one, or the authorization ends."""
    first = max(row.auth_start, row.service_start or row.auth_start)
    used = 0
    for phase in phases:
        units = phase.get("billing_units_per_course")
        if not units:
            return None
        interval = phase.get("interval_days")
        day = phase.get("first_course_day") or 0
        count = phase.get("courses") if phase.get("phase") == "loading" else None
        given = 0
        while count is None or given < count:
            start = first + timedelta(days=day)
            if start > row.auth_end:
                break
            if used + units > row.auth_units:
                return start
            used += units
            given += 1
            if not interval:
                break
            day += interval
    return None


def units_running_out(session: Session, today: date, lead_days: int) -> list[tuple[str, date]]:
    """(case ID, first uncovered course) of live authorizations whose units run out within
    `lead_days` (or already have) while the authorization still runs."""
    rows = session.execute(
        select(
            CaseRow.case_id,
            CaseRow.auth_start,
            CaseRow.auth_end,
            CaseRow.auth_units,
            CaseRow.service_start,
            CaseRow.summary,
        )
        .where(
            CaseRow.status.in_([str(s) for s in AUTHORIZED]),
            CaseRow.auth_units.is_not(None),
            CaseRow.auth_end >= today,
        )
        .order_by(CaseRow.case_id)
    ).all()
    short = []
    for row in rows:
        runs_out = units_run_out(row)
        if runs_out is not None and runs_out <= today + timedelta(days=lead_days):
            short.append((row.case_id, runs_out))
    return short


def expire_ended(session: Session, today: date, now: datetime, actor: Actor = NIGHTLY) -> list[str]:
    rows = session.scalars(
        select(CaseRow).where(
            CaseRow.status.in_([str(s) for s in AUTHORIZED]), CaseRow.auth_end < today
        )
    ).all()
    for row in rows:
        transition(
            session,
            row,
            Status.EXPIRED,
            actor=actor,
            now=now,
            reason_text=f"authorization ended {row.auth_end}",
        )
    return [row.case_id for row in rows]


# ---- views ---------------------------------------------------------------------------------


def case_view(session: Session, case_id: str) -> dict[str, Any]:
    """What `priorauth status CASE_ID --json` prints: status, history, notices, responses."""
    row = get_case(session, case_id)
    history = session.scalars(
        select(StatusChangeRow)
        .where(StatusChangeRow.case_id == case_id)
        .order_by(StatusChangeRow.id)
    ).all()
    notices = session.scalars(
        select(NotificationRow)
        .where(NotificationRow.case_id == case_id)
        .order_by(NotificationRow.id)
    ).all()
    responses = session.scalars(
        select(PayerResponseRow)
        .where(PayerResponseRow.case_id == case_id)
        .order_by(PayerResponseRow.id)
    ).all()
    documents = session.scalars(
        select(DocumentRow)
        .where(DocumentRow.case_id == case_id)
        .order_by(DocumentRow.kind, DocumentRow.version)
    ).all()
    iso = lambda value: value.isoformat() if value else None  # noqa: E731
    return {
        "case_id": row.case_id,
        "status": row.status,
        "payer_id": row.payer_id,
        "product_id": row.product_id,
        "hcpcs": row.hcpcs,
        "payer_reference": row.payer_reference,
        "due_by": iso(row.due_by),
        "overdue": row.overdue_since is not None,
        "appeal_deadline": iso(row.appeal_deadline),
        "authorization": {
            "number": row.auth_number,
            "start": iso(row.auth_start),
            "end": iso(row.auth_end),
            "units": row.auth_units,
            "units_run_out_on": iso(units_run_out(row)),
        },
        "errors": row.errors or [],
        # The payer criteria checklist of the stored case-file version (summary.json's
        # `criteria`), whether its letter is a DRAFT, and any coordinator override of it.
        "criteria": (row.summary or {}).get("criteria"),
        "letter_status": (row.summary or {}).get("status"),
        "missing": insufficient_criteria(row.summary),
        "override": override_in_force(row),
        "history": [
            {
                "at": iso(h.at),
                "from": h.from_status,
                "to": h.to_status,
                "source": h.source,
                "actor": h.actor,
                "payer_code": h.payer_code,
                "reason_code": h.reason_code,
                "reason": h.reason_text,
                "reference": h.reference,
            }
            for h in history
        ],
        "notifications": [
            {
                "channel": n.channel,
                "event": n.event,
                "state": n.state,
                "attempts": n.attempts,
                "last_error": n.last_error,
                "sent_at": iso(n.sent_at),
            }
            for n in notices
        ],
        "payer_responses": [
            {
                "id": r.id,
                "file": r.source_file,
                "stored_file": r.stored_file,
                "decision_date": iso(r.decision_date),
                "outcome": r.outcome,
                "matched_by": r.matched_by,
                "detail": r.detail,
                "at": iso(r.at),
            }
            for r in responses
        ],
        "documents": [
            {
                "id": d.id,
                "kind": d.kind,
                "version": d.version,
                "sha256": d.sha256,
                "path": d.path,
                "created_at": iso(d.created_at),
            }
            for d in documents
        ],
    }


def list_cases(session: Session, *, status: str | None = None) -> list[dict[str, Any]]:
    """Every tracked case, with what needs a coordinator: payer responses waiting (pending)
    and payer rejections not yet followed by a change (IDs and codes only)."""
    stmt = select(CaseRow).order_by(CaseRow.case_id)
    if status:
        stmt = stmt.where(CaseRow.status == status)
    pending: dict[str, list[str]] = {}
    for item in pending_view(session):
        if item["case_id"]:
            pending.setdefault(item["case_id"], []).append(item["reason"] or "")
    rejections = open_rejections(session)
    return [
        {
            "case_id": r.case_id,
            "status": r.status,
            "payer_id": r.payer_id,
            "product_id": r.product_id,
            "due_by": r.due_by.isoformat() if r.due_by else None,
            "overdue": r.overdue_since is not None,
            "auth_end": r.auth_end.isoformat() if r.auth_end else None,
            "missing": insufficient_criteria(r.summary) if r.status == Status.NEEDS_INFO else [],
            "pending_responses": pending.get(r.case_id, []),
            "rejection": rejections.get(r.case_id),
        }
        for r in session.scalars(stmt)
    ]
