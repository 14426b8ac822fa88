"""Prior-authorization metrics from the tracking store, per payer and overall, for a period.

Definitions follow the CMS-0057-F public-reporting metrics so our numbers compare with what
payers publish (../shared/POLICIES.md §3): among requests whose first determination falls in the
period, the share approved, denied and approved after appeal, and the average and median time
from submission to determination, standard and expedited. Added: first-pass approval rate,
denials by reason code, appeal overturn rate, days from case received to approval, and renewals
drafted before the authorization ended. Reads the store; changes nothing; no patient data.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, datetime
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from priorauth.store import CaseRow, DocumentRow, StatusChangeRow, SubmissionRow

APPROVED = {"approved", "partially_approved"}
DECISIONS = APPROVED | {"denied", "not_required"}


@dataclass
class Request:
    """One submitted request and what the payer decided (derived from the store's history)."""

    case_id: str
    payer_id: str
    urgent: bool
    received_at: datetime
    submitted_at: datetime
    decision: str | None = None  # the first determination after submission
    decided_at: datetime | None = None
    info_requested_first: bool = False  # the payer asked for information before deciding
    denial_reason: str | None = None
    appealed: bool = False
    appeal_outcome: str | None = None  # appeal_approved | appeal_denied (the latest)
    approved_at: datetime | None = None  # first approval of any kind (also after appeal)


@dataclass
class Figures:
    """The metrics of one group of requests (one payer, or all)."""

    requests_decided: int = 0
    approved_pct: float | None = None
    partially_approved_pct: float | None = None
    denied_pct: float | None = None
    approved_after_appeal_pct: float | None = None
    extended_time_frame_pct: None = None  # not tracked: the store records no extensions
    decision_hours_standard_mean: float | None = None
    decision_hours_standard_median: float | None = None
    decision_hours_expedited_mean: float | None = None
    decision_hours_expedited_median: float | None = None
    first_pass_approval_pct: float | None = None
    denials_by_reason: dict[str, int] = field(default_factory=dict)
    appeals: int = 0
    appeal_overturn_pct: float | None = None
    days_received_to_approval_median: float | None = None
    renewals_due: int = 0
    renewals_drafted_before_expiry_pct: float | None = None


def _pct(part: int, whole: int) -> float | None:
    return round(100 * part / whole, 1) if whole else None


def _hours(items: list[Request]) -> list[float]:
    return [
        (r.decided_at - r.submitted_at).total_seconds() / 3600
        for r in items
        if r.decided_at is not None
    ]


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 1) if values else None


def _median(values: list[float]) -> float | None:
    return round(statistics.median(values), 1) if values else None


def requests(session: Session) -> list[Request]:
    """Every submitted request with its first determination, appeal and approval, from history.

    A case submitted twice (a corrected resubmission) counts as two requests."""
    cases = {c.case_id: c for c in session.scalars(select(CaseRow))}
    history: dict[str, list[StatusChangeRow]] = defaultdict(list)
    for change in session.scalars(
        select(StatusChangeRow).order_by(StatusChangeRow.at, StatusChangeRow.id)
    ):
        history[change.case_id].append(change)
    submissions: dict[str, list[SubmissionRow]] = defaultdict(list)
    for sub in session.scalars(
        select(SubmissionRow).order_by(SubmissionRow.submitted_at, SubmissionRow.id)
    ):
        submissions[sub.case_id].append(sub)
    out: list[Request] = []
    for case_id, subs in submissions.items():
        case = cases[case_id]
        changes = history[case_id]
        for n, sub in enumerate(subs):
            until = subs[n + 1].submitted_at if n + 1 < len(subs) else None
            window = [
                c for c in changes if c.at >= sub.submitted_at and (until is None or c.at < until)
            ]
            req = Request(case_id, sub.payer_id, case.urgent, case.created_at, sub.submitted_at)
            for change in window:
                status = change.to_status
                if req.decision is None:
                    if status == "info_requested":
                        req.info_requested_first = True
                    if status in DECISIONS:
                        req.decision, req.decided_at = status, change.at
                        if status == "denied":
                            req.denial_reason = change.reason_code or "UNSPECIFIED"
                if status == "appeal_submitted":
                    req.appealed = True
                if status in ("appeal_approved", "appeal_denied"):
                    req.appeal_outcome = status
                if req.approved_at is None and status in APPROVED | {"appeal_approved"}:
                    req.approved_at = change.at
            out.append(req)
    return out


def figures(items: list[Request], renewals: tuple[int, int] = (0, 0)) -> Figures:
    """The metrics of a group of requests already limited to the period."""
    decided = [r for r in items if r.decision is not None]
    n = len(decided)
    approved = [r for r in decided if r.decision in APPROVED]
    denied = [r for r in decided if r.decision == "denied"]
    overturned = [r for r in decided if r.appeal_outcome == "appeal_approved"]
    appeals = [r for r in decided if r.appeal_outcome is not None]
    standard = [r for r in decided if not r.urgent]
    expedited = [r for r in decided if r.urgent]
    to_approval = [
        (r.approved_at - r.received_at).total_seconds() / 86400 for r in decided if r.approved_at
    ]
    due, drafted = renewals
    return Figures(
        requests_decided=n,
        approved_pct=_pct(len(approved), n),
        partially_approved_pct=_pct(sum(r.decision == "partially_approved" for r in decided), n),
        denied_pct=_pct(len(denied), n),
        approved_after_appeal_pct=_pct(len(overturned), n),
        decision_hours_standard_mean=_mean(_hours(standard)),
        decision_hours_standard_median=_median(_hours(standard)),
        decision_hours_expedited_mean=_mean(_hours(expedited)),
        decision_hours_expedited_median=_median(_hours(expedited)),
        first_pass_approval_pct=_pct(
            sum(r.decision == "approved" and not r.info_requested_first for r in decided), n
        ),
        denials_by_reason=dict(sorted(Counter(r.denial_reason for r in denied).items())),
        appeals=len(appeals),
        appeal_overturn_pct=_pct(len(overturned), len(appeals)),
        days_received_to_approval_median=_median(to_approval),
        renewals_due=due,
        renewals_drafted_before_expiry_pct=_pct(drafted, due),
    )


def _renewals(session: Session, since: date, until: date) -> dict[str, tuple[int, int]]:
    """Per payer: (authorizations that ended in the period, those with a renewal letter drafted
    before the end date)."""
    drafted: dict[str, datetime] = {}
    for doc in session.scalars(select(DocumentRow).where(DocumentRow.kind == "renewal_letter")):
        first = drafted.get(doc.case_id)
        drafted[doc.case_id] = doc.created_at if first is None else min(first, doc.created_at)
    out: dict[str, list[int]] = defaultdict(lambda: [0, 0])
    ended = select(CaseRow).where(CaseRow.auth_end >= since, CaseRow.auth_end < until)
    for case in session.scalars(ended):
        made = drafted.get(case.case_id)
        for key in (case.payer_id, "overall"):
            out[key][0] += 1
            out[key][1] += bool(made and made.date() < case.auth_end)
    return {k: (v[0], v[1]) for k, v in out.items()}


def report(session: Session, *, since: date, until: date) -> dict[str, Any]:
    """{period, overall, payers: {payer_id: figures}} for requests first decided in [since, until)."""
    in_period = [
        r
        for r in requests(session)
        if r.decided_at is not None and since <= r.decided_at.date() < until
    ]
    renewals = _renewals(session, since, until)
    by_payer: dict[str, list[Request]] = defaultdict(list)
    for r in in_period:
        by_payer[r.payer_id].append(r)
    payers = set(by_payer) | (set(renewals) - {"overall"})
    return {
        "period": {"since": since.isoformat(), "until": until.isoformat()},
        "definitions": "CMS-0057-F public reporting (first determination in the period)",
        "overall": asdict(figures(in_period, renewals.get("overall", (0, 0)))),
        "payers": {
            p: asdict(figures(by_payer.get(p, []), renewals.get(p, (0, 0)))) for p in sorted(payers)
        },
    }
