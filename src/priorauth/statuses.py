"""The prior-authorization status state machine (DOMAIN.md §7) and its payer code mappings.

Pure rules: which moves are allowed, what an X12 278 HCR01 or Da Vinci PAS reviewAction code
means. It stores nothing; the tracking store applies a move only after `check_transition`.
"""

from __future__ import annotations

from enum import StrEnum

from priorauth.errors import PriorAuthError


class Status(StrEnum):
    DRAFT = "draft"
    NEEDS_INFO = "needs_info"
    READY = "ready"
    SUBMITTED = "submitted"
    PENDING = "pending"
    INFO_REQUESTED = "info_requested"
    APPROVED = "approved"
    PARTIALLY_APPROVED = "partially_approved"
    DENIED = "denied"
    NOT_REQUIRED = "not_required"
    APPEAL_SUBMITTED = "appeal_submitted"
    APPEAL_APPROVED = "appeal_approved"
    APPEAL_DENIED = "appeal_denied"
    EXPIRED = "expired"
    WITHDRAWN = "withdrawn"


S = Status
ALLOWED: dict[Status, frozenset[Status]] = {
    S.DRAFT: frozenset({S.NEEDS_INFO, S.READY}),
    S.NEEDS_INFO: frozenset({S.READY}),
    S.READY: frozenset({S.SUBMITTED, S.WITHDRAWN}),
    S.SUBMITTED: frozenset(
        {
            S.PENDING,
            S.INFO_REQUESTED,
            S.APPROVED,
            S.PARTIALLY_APPROVED,
            S.DENIED,
            S.NOT_REQUIRED,
            S.WITHDRAWN,
        }
    ),
    S.PENDING: frozenset(
        {S.INFO_REQUESTED, S.APPROVED, S.PARTIALLY_APPROVED, S.DENIED, S.NOT_REQUIRED, S.WITHDRAWN}
    ),
    S.INFO_REQUESTED: frozenset(
        {S.SUBMITTED, S.PENDING, S.APPROVED, S.PARTIALLY_APPROVED, S.DENIED, S.WITHDRAWN}
    ),
    S.APPROVED: frozenset({S.EXPIRED}),
    S.PARTIALLY_APPROVED: frozenset({S.APPEAL_SUBMITTED, S.READY, S.EXPIRED}),
    S.DENIED: frozenset({S.APPEAL_SUBMITTED, S.READY}),
    S.NOT_REQUIRED: frozenset(),
    S.APPEAL_SUBMITTED: frozenset({S.APPEAL_APPROVED, S.APPEAL_DENIED, S.PENDING}),
    S.APPEAL_APPROVED: frozenset({S.EXPIRED}),
    S.APPEAL_DENIED: frozenset({S.APPEAL_SUBMITTED}),
    S.EXPIRED: frozenset(),
    S.WITHDRAWN: frozenset(),
}

# Statuses that start a denial notification and an appeal clock.
ADVERSE = frozenset({S.DENIED, S.PARTIALLY_APPROVED, S.APPEAL_DENIED})
# Statuses where the payer's decision clock runs.
AWAITING_DECISION = frozenset({S.SUBMITTED, S.PENDING, S.INFO_REQUESTED, S.APPEAL_SUBMITTED})
# Statuses that hold a live authorization with dates and units.
AUTHORIZED = frozenset({S.APPROVED, S.PARTIALLY_APPROVED, S.APPEAL_APPROVED})


class IllegalTransition(PriorAuthError):
    """Raised when a status change is not an allowed move; nothing is changed."""


def check_transition(current: Status | str, new: Status | str) -> Status:
    """The new status if `current → new` is allowed, else IllegalTransition saying what is."""
    try:
        old, target = Status(current), Status(new)
    except ValueError as exc:
        raise IllegalTransition(f"unknown status: {exc}") from None
    if target not in ALLOWED[old]:
        allowed = ", ".join(sorted(ALLOWED[old])) or "none (final status)"
        raise IllegalTransition(
            f"cannot move from {old} to {target}; allowed from {old}: {allowed}"
        )
    return target


# X12 278 (005010X217) HCR01 action codes → status. A4 with an information request is
# info_requested; CT (contact payer) too. The decision on an appeal maps A1/A3 to appeal_*.
HCR01_STATUS: dict[str, Status] = {
    "A1": S.APPROVED,
    "A2": S.PARTIALLY_APPROVED,
    "A3": S.DENIED,
    "A4": S.PENDING,
    "A6": S.PARTIALLY_APPROVED,  # modified: flag it
    "CT": S.INFO_REQUESTED,
    "NA": S.NOT_REQUIRED,
    "C": S.WITHDRAWN,
}
# Da Vinci PAS reviewAction codes use the same X12 values.
PAS_REVIEW_ACTION_STATUS = HCR01_STATUS


def status_for_decision(
    code: str, *, on_appeal: bool = False, info_requested: bool = False
) -> Status:
    """The status an HCR01 / reviewAction code means, for a first review or an appeal."""
    code = code.strip().upper()
    if code not in HCR01_STATUS:
        raise IllegalTransition(f"unknown payer decision code {code!r}")
    status = HCR01_STATUS[code]
    if status is S.PENDING and info_requested:
        return S.INFO_REQUESTED
    if on_appeal:
        return {S.APPROVED: S.APPEAL_APPROVED, S.DENIED: S.APPEAL_DENIED}.get(status, status)
    return status
