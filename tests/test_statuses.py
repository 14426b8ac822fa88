"""The status state machine (DOMAIN.md §7) and the X12 278 / Da Vinci code mapping."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from priorauth.statuses import (
    ALLOWED,
    IllegalTransition,
    Status,
    check_transition,
    status_for_decision,
)

S = Status
# DOMAIN.md §7, "Allowed moves", written out once more by hand as the test's oracle.
DOMAIN_MOVES = {
    ("draft", "needs_info"),
    ("draft", "ready"),
    ("needs_info", "ready"),
    ("ready", "submitted"),
    ("ready", "withdrawn"),
    *{
        ("submitted", t)
        for t in [
            "pending",
            "info_requested",
            "approved",
            "partially_approved",
            "denied",
            "not_required",
            "withdrawn",
        ]
    },
    *{
        ("pending", t)
        for t in [
            "info_requested",
            "approved",
            "partially_approved",
            "denied",
            "not_required",
            "withdrawn",
        ]
    },
    *{
        ("info_requested", t)
        for t in ["submitted", "pending", "approved", "partially_approved", "denied", "withdrawn"]
    },
    ("denied", "appeal_submitted"),
    ("denied", "ready"),
    ("partially_approved", "appeal_submitted"),
    ("partially_approved", "ready"),
    ("appeal_submitted", "appeal_approved"),
    ("appeal_submitted", "appeal_denied"),
    ("appeal_submitted", "pending"),
    ("appeal_denied", "appeal_submitted"),
    ("approved", "expired"),
    ("partially_approved", "expired"),
    ("appeal_approved", "expired"),
}


def test_the_table_is_exactly_the_domain_moves() -> None:
    table = {(str(a), str(b)) for a, targets in ALLOWED.items() for b in targets}
    assert table == DOMAIN_MOVES


@given(st.sampled_from(list(S)), st.sampled_from(list(S)))
@settings(max_examples=300)
def test_every_pair_is_allowed_or_refused_with_a_reason(a: Status, b: Status) -> None:
    if (str(a), str(b)) in DOMAIN_MOVES:
        assert check_transition(a, b) is b
    else:
        with pytest.raises(IllegalTransition, match=f"cannot move from {a} to {b}"):
            check_transition(a, b)


def test_unknown_status() -> None:
    with pytest.raises(IllegalTransition, match="unknown status"):
        check_transition("draft", "lost")


@pytest.mark.parametrize(
    ("code", "kwargs", "expected"),
    [
        ("A1", {}, S.APPROVED),
        ("A2", {}, S.PARTIALLY_APPROVED),
        ("A3", {}, S.DENIED),
        ("A4", {}, S.PENDING),
        ("A4", {"info_requested": True}, S.INFO_REQUESTED),
        ("A6", {}, S.PARTIALLY_APPROVED),
        ("CT", {}, S.INFO_REQUESTED),
        ("NA", {}, S.NOT_REQUIRED),
        ("C", {}, S.WITHDRAWN),
        ("A1", {"on_appeal": True}, S.APPEAL_APPROVED),
        ("a3", {"on_appeal": True}, S.APPEAL_DENIED),
    ],
)
def test_hcr01_codes(code: str, kwargs: dict, expected: Status) -> None:
    assert status_for_decision(code, **kwargs) is expected


def test_unknown_decision_code() -> None:
    with pytest.raises(IllegalTransition, match="unknown payer decision code"):
        status_for_decision("Z9")
