"""Prior-authorization metrics (CMS-0057-F definitions plus our own) on a small store whose every
figure is worked out by hand below."""

from __future__ import annotations

from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest

from priorauth.metrics import report
from priorauth.store import CaseRow, DocumentRow, StatusChangeRow, Store, SubmissionRow

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)

# case: (payer, urgent, [(hours after submission, status, reason code)])
STORY = {
    "A": ("summit", False, [(24, "approved", None)]),
    "B": ("summit", False, [(24, "info_requested", None), (72, "approved", None)]),
    "C": (
        "summit",
        True,
        [
            (12, "denied", "STEP_THERAPY_NOT_MET"),
            (5 * 24, "appeal_submitted", None),
            (10 * 24, "appeal_approved", None),
        ],
    ),
    "D": (
        "bluestone",
        False,
        [
            (48, "denied", "EXPERIMENTAL_INVESTIGATIONAL"),
            (6 * 24, "appeal_submitted", None),
            (20 * 24, "appeal_denied", None),
        ],
    ),
    "E": ("bluestone", True, [(6, "partially_approved", None)]),
    "F": ("bluestone", False, [(24, "pending", None)]),  # not decided: not counted
}


@pytest.fixture
def store(tmp_path: Path):
    store = Store(f"sqlite:///{tmp_path / 'm.sqlite3'}")
    with store.session() as s:
        for case_id, (payer, urgent, events) in STORY.items():
            s.add(
                CaseRow(
                    case_id=case_id,
                    status=events[-1][1],
                    source_file=f"{case_id}.yaml",
                    case_sha256="0" * 64,
                    payer_id=payer,
                    product_id="privigen",
                    hcpcs="J1459",
                    indication="ms",
                    urgent=urgent,
                    patient_name="Synthetic Patient",
                    date_of_birth=date(1980, 1, 1),
                    member_id=f"M{case_id}",
                    created_at=T0 - D,  # received a day before submission
                    updated_at=T0,
                    auth_end=date(2026, 6, 1) if case_id == "A" else None,
                )
            )
            s.flush()
            s.add(
                SubmissionRow(
                    case_id=case_id,
                    payer_id=payer,
                    method="fax",
                    submitted_at=T0,
                    due_by=T0 + 15 * D,
                    actor="coord",
                )
            )
            previous = "submitted"
            for hours, status, reason in events:
                s.add(
                    StatusChangeRow(
                        case_id=case_id,
                        from_status=previous,
                        to_status=status,
                        at=T0 + hours * H,
                        source="payer_file",
                        actor="payer",
                        reason_code=reason,
                    )
                )
                previous = status
        s.add(
            DocumentRow(
                case_id="A",
                kind="renewal_letter",
                version=1,
                path="letters/A/renewal.pdf",
                sha256="1" * 64,
                created_at=datetime(2026, 5, 2, tzinfo=UTC),  # 30 days before the end
            )
        )
    yield store
    store.dispose()


def test_metrics_match_a_hand_computation(store) -> None:
    with store.reader() as s:
        got = report(s, since=date(2026, 1, 1), until=date(2027, 1, 1))
    overall = got["overall"]
    # Decided: A, B, C, D, E (F is pending). Approved A, B, E (E partially); denied C, D.
    assert overall["requests_decided"] == 5
    assert overall["approved_pct"] == 60.0
    assert overall["partially_approved_pct"] == 20.0
    assert overall["denied_pct"] == 40.0
    assert overall["approved_after_appeal_pct"] == 20.0  # C, of 5
    # First pass: approved in full with no information request first: A only.
    assert overall["first_pass_approval_pct"] == 20.0
    # Standard decisions: A 24 h, B 72 h, D 48 h; expedited: C 12 h, E 6 h.
    assert overall["decision_hours_standard_mean"] == 48.0
    assert overall["decision_hours_standard_median"] == 48.0
    assert overall["decision_hours_expedited_mean"] == 9.0
    assert overall["decision_hours_expedited_median"] == 9.0
    assert overall["denials_by_reason"] == {
        "EXPERIMENTAL_INVESTIGATIONAL": 1,
        "STEP_THERAPY_NOT_MET": 1,
    }
    assert overall["appeals"] == 2 and overall["appeal_overturn_pct"] == 50.0
    # Received a day before submission; approved after 1 + (1, 3, 10, 0.25) days:
    # median of 2, 4, 11, 1.25 = 3.0
    assert overall["days_received_to_approval_median"] == 3.0
    assert overall["renewals_due"] == 1 and overall["renewals_drafted_before_expiry_pct"] == 100.0

    summit = got["payers"]["summit"]
    assert summit["requests_decided"] == 3
    assert summit["approved_pct"] == 66.7 and summit["denied_pct"] == 33.3
    bluestone = got["payers"]["bluestone"]
    assert bluestone["requests_decided"] == 2 and bluestone["appeal_overturn_pct"] == 0.0


def test_the_period_counts_first_determinations_inside_it(store) -> None:
    with store.reader() as s:
        before = report(s, since=date(2025, 1, 1), until=date(2026, 3, 2))
        first_day = report(s, since=date(2026, 3, 2), until=date(2026, 3, 3))
    assert before["overall"]["requests_decided"] == 0
    assert before["overall"]["approved_pct"] is None  # nothing to divide by, never 0
    # decided on 2026-03-02: C (12 h) and E (6 h) only
    assert first_day["overall"]["requests_decided"] == 2


def test_priorauth_metrics_prints_the_figures(store, monkeypatch) -> None:
    import json

    from click.testing import CliRunner

    from priorauth.cli import main

    monkeypatch.setenv("PRIORAUTH_DATABASE_URL", store.url)
    out = CliRunner().invoke(
        main, ["metrics", "--since", "2026-01-01", "--until", "2027-01-01", "--json"]
    )
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["overall"]["approved_pct"] == 60.0
    text = CliRunner().invoke(main, ["metrics", "--since", "2026-01-01", "--until", "2027-01-01"])
    assert text.exit_code == 0, text.output
    assert "overall" in text.output and "60.0%" in text.output
    assert "STEP_THERAPY_NOT_MET 1" in text.output
