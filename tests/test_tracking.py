"""The tracking store on SQLite and PostgreSQL: migrations, the state machine applied, documents
versions, submissions and deadlines, the outbox, the payer-response ledger, the audit log."""

from __future__ import annotations

import threading
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import func, select, text

from conftest import CASES, TODAY
from priorauth.intake import load_case
from priorauth.responses import PayerResponse
from priorauth.settings import load_settings
from priorauth.statuses import IllegalTransition, Status
from priorauth.store import (
    AuditRow,
    CaseRow,
    DocumentRow,
    NotificationRow,
    StatusChangeRow,
    Store,
    current_revision,
    head_revision,
)
from priorauth.tracking import (
    NIGHTLY,
    Actor,
    case_view,
    expire_ended,
    expiring,
    flag_overdue,
    ingest_response,
    list_cases,
    record_documents,
    register_case,
    set_status,
    submit,
)

NOW = datetime(2026, 11, 25, 14, 0, tzinfo=UTC)
COORDINATOR = Actor("jdoe", "coordinator", "coordinator")


@pytest.fixture
def store(db_url: str):
    store = Store(db_url)
    yield store
    store.dispose()


@pytest.fixture
def settings(tmp_path: Path):
    return load_settings(
        home=tmp_path,
        notify_urls="json://127.0.0.1:9/a, mailto://127.0.0.1:9?from=pa@example.org&to=x@example.org",
    )


def add_case(
    store: Store, catalog, name: str = "ms-dmt-failure-privigen.yaml", *, ready: bool = True
) -> str:
    path = CASES / name
    case = load_case(path, catalog=catalog, today=TODAY)
    with store.session() as session:
        register_case(
            session,
            case,
            source_file=str(path),
            case_sha256="sha-" + name,
            summary={"product": {"hcpcs": catalog.product(case.request.product_id).hcpcs}},
            now=NOW,
        )
        if ready:
            record_documents(
                session,
                case.case_id,
                [("letter", "l.pdf", "a" * 64), ("packet", "p.pdf", "b" * 64)],
                actor=NIGHTLY,
                now=NOW,
            )
    return case.case_id


def response(**fields) -> PayerResponse:
    base = dict(
        source="r.x12",
        index=0,
        format="x12-278",
        kind="decision",
        case_id=None,
        payer_reference=None,
        member_id=None,
        hcpcs=None,
        service_start=None,
        service_end=None,
        action_code="A3",
        status=Status.DENIED,
        on_appeal=False,
        payer_reason_code="N",
        reason_code="STEP_THERAPY_NOT_MET",
        reason_text="Preferred agents must be tried first",
        certification_number=None,
        authorized_start=None,
        authorized_end=None,
        authorized_units=None,
        decision_date=None,
        rejection_errors=(),
        dedup_key="k1",
    )
    base.update(fields)
    return PayerResponse(**base)


def test_migrations_run_on_first_use_and_are_idempotent(db_url: str) -> None:
    store = Store(db_url)
    assert current_revision(store.engine) == head_revision(db_url)
    Store(db_url).dispose()  # a second open is a no-op
    assert current_revision(store.engine) == head_revision(db_url)
    store.dispose()


def test_audit_log_is_append_only(store: Store) -> None:
    with store.session() as session:
        session.add(AuditRow(at=NOW, actor="t", action="test", outcome="ok"))
    for statement in ("UPDATE audit_log SET actor = 'x'", "DELETE FROM audit_log"):
        with pytest.raises(Exception, match="append-only"), store.session() as session:
            session.execute(text(statement))
    with store.session() as session:
        assert session.scalar(select(AuditRow.actor)) == "t"


def test_case_reaches_ready_with_history_and_versions(store: Store, catalog) -> None:
    case_id = add_case(store, catalog)
    with store.session() as session:
        view = case_view(session, case_id)
        assert view["status"] == "ready"
        assert [(h["from"], h["to"]) for h in view["history"]] == [
            (None, "draft"),
            ("draft", "ready"),
        ]
        # Same bytes again: no new version. New bytes: version 2, the first kept.
        record_documents(session, case_id, [("letter", "l.pdf", "a" * 64)], actor=NIGHTLY, now=NOW)
        record_documents(session, case_id, [("letter", "l.pdf", "c" * 64)], actor=NIGHTLY, now=NOW)
        versions = session.execute(
            select(DocumentRow.kind, DocumentRow.version)
            .where(DocumentRow.kind == "letter")
            .order_by(DocumentRow.version)
        ).all()
        assert versions == [("letter", 1), ("letter", 2)]


@pytest.mark.parametrize(
    ("case_file", "urgent", "hours"),
    [
        ("ms-dmt-failure-privigen.yaml", False, 360),  # commercial: 15 days
        ("ms-dmt-failure-privigen.yaml", True, 72),
    ],  # commercial urgent: 72 hours
)
def test_submission_sets_the_decision_deadline(store, catalog, case_file, urgent, hours) -> None:
    case_id = add_case(store, catalog, case_file)
    with store.session() as session:
        session.get(CaseRow, case_id).urgent = urgent
    with store.session() as session:
        sub = submit(
            session,
            case_id,
            method="fax",
            reference="FX-1",
            actor=COORDINATOR,
            now=NOW,
            catalog=catalog,
        )
        assert sub.due_by == NOW + timedelta(hours=hours)
        assert session.get(CaseRow, case_id).status == "submitted"


def test_medicare_advantage_deadline_is_72_hours(store, catalog) -> None:
    case_id = add_case(store, catalog)
    with store.session() as session:
        session.get(CaseRow, case_id).payer_id = "evergreen-medicare-advantage"
    with store.session() as session:
        sub = submit(
            session,
            case_id,
            method="portal",
            reference=None,
            actor=COORDINATOR,
            now=NOW,
            catalog=catalog,
        )
        assert sub.due_by - NOW == timedelta(hours=72)


def test_illegal_transition_changes_nothing(store, catalog, settings) -> None:
    case_id = add_case(store, catalog)
    with (
        pytest.raises(IllegalTransition, match="cannot move from ready to approved"),
        store.session() as session,
    ):
        set_status(
            session,
            case_id,
            "approved",
            actor=COORDINATOR,
            now=NOW,
            catalog=catalog,
            settings=settings,
        )
    with store.session() as session:
        assert session.get(CaseRow, case_id).status == "ready"
        assert session.scalar(select(func.count(StatusChangeRow.id))) == 2


def test_denial_sets_appeal_deadline_and_queues_one_notice_per_channel(
    store, catalog, settings
) -> None:
    case_id = add_case(store, catalog)
    with store.session() as session:
        submit(
            session,
            case_id,
            method="fax",
            reference="FX-1",
            actor=COORDINATOR,
            now=NOW,
            catalog=catalog,
        )
        set_status(
            session,
            case_id,
            "denied",
            actor=COORDINATOR,
            now=NOW,
            catalog=catalog,
            settings=settings,
            reason_code="EXPERIMENTAL_INVESTIGATIONAL",
            reason_text="IVIG for MS is investigational",
        )
    with store.session() as session:
        row = session.get(CaseRow, case_id)
        assert row.appeal_deadline == date(2026, 11, 25) + timedelta(days=180)  # commercial
        notices = session.scalars(select(NotificationRow)).all()
        assert sorted(n.channel.split(":")[0] for n in notices) == [
            "json",
            "mailto",
            "prefect-event",
        ]
        for notice in notices:
            assert case_id in notice.body and "2027-05-24" in notice.body
            for secret in (row.patient_name, row.member_id, row.date_of_birth.isoformat(), "G35"):
                assert secret not in notice.body and secret not in notice.title


def test_payer_response_applied_once(store, catalog, settings) -> None:
    case_id = add_case(store, catalog)
    with store.session() as session:
        submit(
            session,
            case_id,
            method="fax",
            reference="FX-1",
            actor=COORDINATOR,
            now=NOW,
            catalog=catalog,
        )
    payer = Actor("payer-file:r.x12", "payer_file", "payer")
    with store.session() as session:
        first = ingest_response(
            session,
            response(case_id=case_id),
            catalog=catalog,
            settings=settings,
            now=NOW,
            actor=payer,
        )
    with store.session() as session:
        second = ingest_response(
            session,
            response(case_id=case_id),
            catalog=catalog,
            settings=settings,
            now=NOW,
            actor=payer,
        )
    assert (first.outcome, first.adverse) == ("applied", True)
    assert second.outcome == "duplicate"
    with store.session() as session:
        assert (
            session.scalar(
                select(func.count(StatusChangeRow.id)).where(StatusChangeRow.to_status == "denied")
            )
            == 1
        )
        assert session.scalar(select(func.count(NotificationRow.id))) == 3  # 2 channels + event
        history = case_view(session, case_id)["history"][-1]
        assert (history["payer_code"], history["reason_code"], history["source"]) == (
            "A3",
            "STEP_THERAPY_NOT_MET",
            "payer_file",
        )


@pytest.mark.parametrize(
    ("decided", "denied_on"),
    [
        (date(2026, 11, 18), date(2026, 11, 18)),  # read a week late: the window started then
        (date(2026, 12, 9), NOW.date()),  # a decision date after today is not believed
        (None, NOW.date()),  # no date in the response: the day it is recorded
    ],
)
def test_appeal_window_runs_from_the_payers_decision_date(
    store, catalog, settings, decided, denied_on
) -> None:
    case_id = add_case(store, catalog)
    with store.session() as session:
        submit(
            session, case_id, method="fax", reference="FX-1", actor=COORDINATOR, now=NOW,
            catalog=catalog,
        )  # fmt: skip
    payer = Actor("payer-file:r.x12", "payer_file", "payer")
    with store.session() as session:
        ingest_response(
            session,
            response(case_id=case_id, decision_date=decided),
            catalog=catalog,
            settings=settings,
            now=NOW,
            actor=payer,
        )
    deadline = denied_on + timedelta(days=180)  # commercial plan
    with store.session() as session:
        assert session.get(CaseRow, case_id).appeal_deadline == deadline
        notices = session.scalars(
            select(NotificationRow).where(NotificationRow.channel != "prefect-event")
        ).all()
        assert notices
        for notice in notices:
            assert f"Denied on {denied_on.isoformat()}" in notice.body
            assert deadline.isoformat() in notice.body


def test_matching_order(store, catalog, settings) -> None:
    case_id = add_case(store, catalog)
    with store.session() as session:
        submit(
            session,
            case_id,
            method="fax",
            reference="PAYER-77",
            actor=COORDINATOR,
            now=NOW,
            catalog=catalog,
        )
        row = session.get(CaseRow, case_id)
        member, hcpcs = row.member_id, row.hcpcs
    payer = Actor("payer", "payer_file")
    with store.session() as session:
        by_ref = ingest_response(
            session,
            response(
                payer_reference="PAYER-77",
                action_code="A4",
                status=Status.PENDING,
                dedup_key="k-ref",
            ),
            catalog=catalog,
            settings=settings,
            now=NOW,
            actor=payer,
        )
        by_member = ingest_response(
            session,
            response(
                member_id=member,
                hcpcs=hcpcs,
                action_code="A1",
                status=Status.APPROVED,
                certification_number="AUTH-9",
                authorized_start=date(2026, 12, 1),
                authorized_end=date(2027, 5, 29),
                authorized_units=2100,
                dedup_key="k-mem",
            ),
            catalog=catalog,
            settings=settings,
            now=NOW,
            actor=payer,
        )
        nobody = ingest_response(
            session,
            response(case_id="NOPE", dedup_key="k-none"),
            catalog=catalog,
            settings=settings,
            now=NOW,
            actor=payer,
        )
    # A response for no known case is never dropped: kept pending with the reason, retried.
    assert [by_ref.outcome, by_member.outcome, nobody.outcome] == [
        "applied",
        "applied",
        "pending",
    ]
    assert nobody.case_id is None and "no case matches" in (nobody.detail or "")
    with store.session() as session:
        view = case_view(session, case_id)
        assert [r["matched_by"] for r in view["payer_responses"]] == [
            "payer_reference",
            "member_hcpcs_dates",
        ]
        assert view["status"] == "approved"
        assert view["authorization"] == {
            "number": "AUTH-9",
            "start": "2026-12-01",
            "end": "2027-05-29",
            "units": 2100,
            "units_run_out_on": None,  # no dosing stored with this case: nothing to project
        }


def test_rejection_is_not_a_denial(store, catalog, settings) -> None:
    case_id = add_case(store, catalog)
    with store.session() as session:
        submit(
            session,
            case_id,
            method="epa",
            reference=None,
            actor=COORDINATOR,
            now=NOW,
            catalog=catalog,
        )
        got = ingest_response(
            session,
            response(
                case_id=case_id,
                kind="rejection",
                status=None,
                action_code=None,
                rejection_errors=(("72", "invalid member ID"),),
            ),
            catalog=catalog,
            settings=settings,
            now=NOW,
            actor=Actor("payer", "payer_file"),
        )
    assert got.outcome == "rejection" and not got.adverse
    with store.session() as session:
        view = case_view(session, case_id)
        assert view["status"] == "submitted"
        # the code's standard meaning, never the file's own words (free text may quote PHI)
        assert view["payer_responses"][0]["detail"] == "72: invalid/missing subscriber/insured ID"
        notices = session.scalars(select(NotificationRow)).all()
        # no denial notice and no appeal clock: one "correct and resend" notice per channel
        assert {n.event for n in notices} == {"rejection"} and len(notices) == 2
        assert all("no appeal clock starts" in n.body for n in notices)
        assert session.get(CaseRow, case_id).appeal_deadline is None
        assert list_cases(session)[0]["rejection"] == "72: invalid/missing subscriber/insured ID"


def test_overdue_and_expiry(store, catalog, settings) -> None:
    case_id = add_case(store, catalog)
    with store.session() as session:
        submit(
            session,
            case_id,
            method="fax",
            reference=None,
            actor=COORDINATOR,
            now=NOW,
            catalog=catalog,
        )
    with store.session() as session:
        assert flag_overdue(session, NOW + timedelta(days=14)) == []
        assert flag_overdue(session, NOW + timedelta(days=16)) == [case_id]
    with store.session() as session:
        set_status(
            session,
            case_id,
            "approved",
            actor=COORDINATOR,
            now=NOW,
            catalog=catalog,
            settings=settings,
            reference="AUTH-1",
            auth_start=date(2026, 12, 1),
            auth_end=date(2027, 5, 29),
            auth_units=2100,
        )
        assert session.get(CaseRow, case_id).overdue_since is None
    with store.session() as session:
        assert expiring(session, date(2027, 4, 28), 30) == []
        assert [r.case_id for r in expiring(session, date(2027, 4, 29), 30)] == [case_id]
        assert expire_ended(session, date(2027, 5, 30), NOW) == [case_id]
        assert session.get(CaseRow, case_id).status == "expired"


def test_two_coordinators_submit_the_same_case_at_once(store, catalog) -> None:
    case_id = add_case(store, catalog)
    barrier = threading.Barrier(2)
    outcomes: list[str] = []

    def coordinator(name: str) -> None:
        barrier.wait()
        try:
            with store.session() as session:
                submit(
                    session,
                    case_id,
                    method="fax",
                    reference=name,
                    now=NOW,
                    catalog=catalog,
                    actor=Actor(name, "coordinator"),
                )
            outcomes.append("submitted")
        except IllegalTransition:
            outcomes.append("refused")

    threads = [threading.Thread(target=coordinator, args=(n,)) for n in ("ann", "bob")]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(outcomes) == ["refused", "submitted"]
    with store.session() as session:
        assert (
            session.scalar(
                select(func.count(StatusChangeRow.id)).where(
                    StatusChangeRow.to_status == "submitted"
                )
            )
            == 1
        )


def test_follow_up_every_two_business_days(store, catalog) -> None:
    from priorauth.tracking import business_days_before, follow_ups_due

    assert business_days_before(date(2026, 11, 24), 2) == date(2026, 11, 20)  # Tue → Fri
    friday = datetime(2026, 11, 20, 15, 0, tzinfo=UTC)
    case_id = add_case(store, catalog)
    with store.session() as session:
        submit(
            session,
            case_id,
            method="fax",
            reference=None,
            actor=COORDINATOR,
            now=friday,
            catalog=catalog,
        )
    with store.session() as session:
        assert follow_ups_due(session, datetime(2026, 11, 23, 9, tzinfo=UTC), 2) == []  # Monday
        assert follow_ups_due(session, datetime(2026, 11, 24, 9, tzinfo=UTC), 2) == [case_id]


def test_units_run_out_follows_a_loading_phase() -> None:
    """CIDP: loading 320 units on day 0, then 160 units every 21 days from day 21 (tests/
    test_dosing.py works it by hand); authorization 2026-12-01 to 2027-05-29 (days 0-179)."""
    from decimal import Decimal
    from types import SimpleNamespace

    from priorauth.catalog import load_catalog
    from priorauth.dosing import DoseRequest, LoadingPhase, compute_regimen
    from priorauth.tracking import units_run_out

    gamunex = load_catalog(Path(__file__).parents[1] / "reference").product("gamunex-c")
    maintenance = DoseRequest(
        sex="M",
        height_cm=Decimal(175),
        weight_kg=Decimal(80),
        g_per_kg_per_course=Decimal(1),
        interval_days=21,
    )
    phased = compute_regimen(maintenance, gamunex, LoadingPhase(Decimal(2), 2)).as_dict()
    single = compute_regimen(maintenance, gamunex).as_dict()
    inputs = {"interval_days": 21}

    def run_out(dosing: dict, units: int) -> date | None:
        row = SimpleNamespace(
            auth_start=date(2026, 12, 1),
            auth_end=date(2027, 5, 29),
            auth_units=units,
            service_start=date(2026, 12, 1),
            summary={"inputs": inputs, "dosing": dosing},
        )
        return units_run_out(row)

    assert run_out(phased, 1600) is None  # 320 + 8 × 160: every course covered
    # 1,440 units (the maintenance regimen alone): loading + 7 maintenance courses; the one on
    # day 168 (2027-05-18) is not covered. Read as one regimen it would look covered.
    assert run_out(phased, 1440) == date(2027, 5, 18)
    assert run_out(single, 1440) is None
    assert run_out(phased, 300) == date(2026, 12, 1)  # not even the loading course
    assert run_out(phased, 480) == date(2027, 1, 12)  # loading + day 21; day 42 uncovered
    assert run_out(single, 1280) == date(2027, 5, 18)  # one regimen: unchanged


# ---- payer criteria: needs_info, a fixed case file, a coordinator's override ------------------

CRITERIA = {
    "policy_id": "SYN-CIDP",
    "version": 1,
    "title": "Immune globulin: CIDP",
    "effective_date": "2026-01-01",
    "source": "synthetic",
    "coverage": "covered",
    "phase": "initial",
    "verdict": "insufficient",
    "items": [
        {"id": "CIDP-1", "text": "Diagnosis", "verdict": "met", "evidence": [], "request": None,
         "detail": None},
        {"id": "CIDP-2", "text": "Nerve conduction study", "verdict": "insufficient",
         "evidence": [], "request": "Criterion CIDP-2: no attachment of kind `ncs_report`",
         "detail": None},
    ],
}  # fmt: skip


def add_needs_info_case(store: Store, catalog) -> str:
    """MS-1001 registered with a DRAFT letter: payer criterion CIDP-2 insufficient."""
    path = CASES / "ms-dmt-failure-privigen.yaml"
    case = load_case(path, catalog=catalog, today=TODAY)
    with store.session() as session:
        register_case(
            session,
            case,
            source_file=str(path),
            case_sha256="sha-v1",
            summary={"status": "needs_info", "criteria": CRITERIA},
            now=NOW,
        )
        record_documents(
            session,
            case.case_id,
            [("letter", "l.pdf", "a" * 64), ("packet", "p.pdf", "b" * 64)],
            actor=NIGHTLY,
            now=NOW,
            result_status="needs_info",
            missing=["CIDP-2"],
        )
    return case.case_id


def test_a_needs_info_result_stays_needs_info_until_a_ready_one(store, catalog) -> None:
    case_id = add_needs_info_case(store, catalog)
    with store.session() as session:
        view = case_view(session, case_id)
        row = session.get(CaseRow, case_id)
        assert view["status"] == "needs_info"
        assert (view["letter_status"], view["missing"]) == ("needs_info", ["CIDP-2"])
        assert view["criteria"]["items"][1]["request"].startswith("Criterion CIDP-2")
        last = view["history"][-1]
        assert (last["from"], last["to"]) == ("draft", "needs_info")
        assert "CIDP-2" in last["reason"]
        for secret in (row.patient_name, row.member_id):  # ids only, no patient data
            assert secret not in last["reason"]
        # The same DRAFT again (a regeneration): still needs_info, no new history.
        record_documents(
            session, case_id, [("letter", "l.pdf", "c" * 64)], actor=NIGHTLY, now=NOW,
            result_status="needs_info", missing=["CIDP-2"],
        )  # fmt: skip
        assert len(case_view(session, case_id)["history"]) == 2
        assert session.get(CaseRow, case_id).status == "needs_info"
        # A later version of the case file meets the criteria: ready.
        record_documents(
            session, case_id, [("letter", "l.pdf", "d" * 64)], actor=NIGHTLY, now=NOW,
        )  # fmt: skip
        assert session.get(CaseRow, case_id).status == "ready"
        assert [h["to"] for h in case_view(session, case_id)["history"]] == [
            "draft",
            "needs_info",
            "ready",
        ]


def test_override_to_ready_needs_a_reason_and_is_recorded(store, catalog, settings) -> None:
    from priorauth.tracking import (
        OVERRIDE_REASON_CODE,
        CaseFileChanged,
        ReasonRequired,
        override_to_ready,
    )

    case_id = add_needs_info_case(store, catalog)
    for blank in (None, "", "   "):
        with pytest.raises(ReasonRequired, match="reason is required"), store.session() as s:
            set_status(
                s, case_id, "ready", actor=COORDINATOR, now=NOW, catalog=catalog,
                settings=settings, reason_text=blank,
            )  # fmt: skip
    with pytest.raises(CaseFileChanged), store.session() as s:
        override_to_ready(
            s, case_id, reason="NCS faxed separately", actor=COORDINATOR, now=NOW,
            case_sha256="sha-v2",
        )  # fmt: skip
    with store.session() as s:
        assert s.get(CaseRow, case_id).status == "needs_info"
        assert not s.scalar(select(func.count(AuditRow.id)).where(AuditRow.action.like("crit%")))
    later = NOW + timedelta(hours=1)
    with store.session() as s:
        set_status(
            s, case_id, "ready", actor=COORDINATOR, now=later, catalog=catalog,
            settings=settings, reason_text="NCS report faxed by the neurologist's office",
        )  # fmt: skip
    with store.session() as s:
        view = case_view(s, case_id)
        assert (view["status"], view["override"]) == ("ready", True)
        assert view["criteria"]["override"] is True
        last = view["history"][-1]
        assert (last["from"], last["to"], last["actor"], last["source"], last["reason_code"]) == (
            "needs_info",
            "ready",
            "jdoe",
            "coordinator",
            OVERRIDE_REASON_CODE,
        )
        assert last["reason"] == "NCS report faxed by the neurologist's office"
        assert last["at"] == later.isoformat()
        audited = s.scalars(select(AuditRow).where(AuditRow.action == "criteria_override")).one()
        assert (audited.actor, audited.role, audited.case_id) == ("jdoe", "coordinator", case_id)
        assert "CIDP-2" in audited.detail and "faxed" not in audited.detail  # no free text
    # Only a needs_info case can be overridden.
    with pytest.raises(IllegalTransition), store.session() as s:
        override_to_ready(s, case_id, reason="again", actor=COORDINATOR, now=NOW)


def test_a_ready_case_whose_new_version_lacks_a_document_keeps_its_status_and_says_so(
    store, catalog
) -> None:
    """ready → needs_info is not a move of the state machine (DOMAIN.md §7): the status stays,
    the audit log flags it, and the case view shows the DRAFT."""
    case_id = add_case(store, catalog)
    with store.session() as session:
        session.get(CaseRow, case_id).summary = {"status": "needs_info", "criteria": CRITERIA}
        record_documents(
            session, case_id, [("letter", "l.pdf", "e" * 64)], actor=NIGHTLY, now=NOW,
            result_status="needs_info", missing=["CIDP-2"],
        )  # fmt: skip
    with store.session() as session:
        view = case_view(session, case_id)
        assert (view["status"], view["letter_status"]) == ("ready", "needs_info")
        flagged = session.scalars(
            select(AuditRow).where(AuditRow.action == "criteria_insufficient")
        ).one()
        assert "CIDP-2" in flagged.detail
