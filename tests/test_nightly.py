"""The nightly run end to end on a real data folder: intake (valid and invalid files), letters,
payer responses, exactly-once denial e-mail to a real SMTP server, and crash safety: a run killed
with SIGKILL at named points (and at random moments) and re-run ends in the same state as one
clean run."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select

from conftest import ATTACHMENTS, CASES, FIXTURES, INVALID
from priorauth import nightly
from priorauth.catalog import load_catalog
from priorauth.files import sha256_file
from priorauth.nightly import run_night
from priorauth.settings import load_settings
from priorauth.store import (
    AuditRow,
    CaseRow,
    DocumentRow,
    NotificationRow,
    PayerResponseRow,
    StatusChangeRow,
    Store,
)
from priorauth.tracking import Actor, submit
from sinks import smtp_sink

DENIAL = FIXTURES / "responses" / "ms-1004-denied.x12"
FIRST = ["ms-dmt-failure-privigen.yaml", "ms-1004.yaml", "pid-3001.yaml", "cidp-2001.json"]
LATER = ["ms-1002.yaml", "ms-1005.yaml", "itp-4001.yaml"]


def make_home(root: Path, names: list[str]) -> Path:
    home = root / "home"
    (home / "intake").mkdir(parents=True)
    shutil.copytree(ATTACHMENTS, home / "attachments")
    for name in names:
        shutil.copy(CASES / name, home / "intake" / name)
    return home


def settings_for(home: Path, smtp_port: int | None = None, **extra):
    urls = (
        f"mailto://127.0.0.1:{smtp_port}?from=pa@example.org&to=team@example.org&mode=insecure"
        if smtp_port
        else ""
    )
    return load_settings(home=home, workers=1, notify_urls=urls, **extra)


def rows(result) -> list[tuple]:
    return sorted((tuple(r) for r in result), key=repr)


def snapshot(home: Path, db_url: str | None = None) -> dict:
    """The end state, without timestamps or row ids: what must match a clean run."""
    store = Store(db_url or f"sqlite:///{(home / 'priorauth.sqlite3').resolve()}")
    with store.session() as s:
        state = {
            "cases": rows(
                s.execute(
                    select(
                        CaseRow.case_id,
                        CaseRow.status,
                        CaseRow.case_sha256,
                        CaseRow.appeal_deadline,
                        CaseRow.auth_number,
                    )
                )
            ),
            "history": rows(
                s.execute(
                    select(
                        StatusChangeRow.case_id,
                        StatusChangeRow.from_status,
                        StatusChangeRow.to_status,
                        StatusChangeRow.payer_code,
                        StatusChangeRow.reason_code,
                    )
                )
            ),
            "documents": rows(
                s.execute(
                    select(
                        DocumentRow.case_id,
                        DocumentRow.kind,
                        DocumentRow.version,
                        DocumentRow.sha256,
                    )
                )
            ),
            "responses": rows(
                s.execute(
                    select(
                        PayerResponseRow.dedup_key,
                        PayerResponseRow.case_id,
                        PayerResponseRow.outcome,
                    )
                )
            ),
            "notices": rows(
                s.execute(
                    select(NotificationRow.case_id, NotificationRow.event, NotificationRow.state)
                )
            ),
        }
    store.dispose()
    files = {}
    for folder in ("letters", "quarantine", "responses", "intake"):
        for path in sorted((home / folder).rglob("*")):
            if path.name == "summary.json":  # names its source file, under this home folder
                text = path.read_text(encoding="utf-8").replace(str(home), "HOME")
                files[str(path.relative_to(home))] = text
            elif path.is_file():
                files[str(path.relative_to(home))] = sha256_file(path)
    state["files"] = files
    return state


def first_night_then_submit(home: Path, settings) -> None:
    now = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
    run_night(settings, now)
    catalog = load_catalog(settings.reference_dir)
    store = Store(settings.db_url)
    with store.session() as session:
        submit(
            session,
            "MS-1004",
            method="fax",
            reference="FAX-1",
            now=now,
            catalog=catalog,
            actor=Actor("jdoe", "coordinator"),
        )
    store.dispose()


def test_nightly_fills_the_store_sets_bad_files_aside_and_emails_a_denial_once(tmp_path):
    home = make_home(tmp_path, FIRST)
    shutil.copy(INVALID / "bad-g35-category.yaml", home / "intake" / "bad-g35-category.yaml")
    with smtp_sink() as smtp:
        settings = settings_for(home, smtp.port)
        first_night_then_submit(home, settings)
        state = snapshot(home)
        assert {c[0]: c[1] for c in state["cases"]} == {
            "MS-1001": "ready",
            "MS-1004": "submitted",
            "PID-3001": "needs_info",  # one IgG result where its policy asks for two
            "CIDP-2001": "ready",
        }
        reason = (home / "quarantine" / "bad-g35-category.yaml.reason.txt").read_text()
        assert "diagnoses[0].code" in reason and "G35.A" in reason
        assert (home / "quarantine" / "bad-g35-category.yaml").exists()  # moved, not deleted

        shutil.copy(DENIAL, home / "responses" / DENIAL.name)
        now = datetime(2026, 11, 25, 3, 0, tzinfo=UTC)
        report = run_night(settings, now)
        assert [d["case_id"] for d in report.denials] == ["MS-1004"]
        digest = sha256_file(DENIAL)[:16]
        assert (home / "responses" / "processed" / f"{digest}-{DENIAL.name}").exists()
        # Dropping the same file again and re-running sends nothing more; both copies are kept.
        shutil.copy(DENIAL, home / "responses" / DENIAL.name)
        run_night(settings, now)
        run_night(settings, now)
        assert len(smtp.messages) == 1
        assert (
            home / "responses" / "processed" / f"{digest}-{DENIAL.stem}-2{DENIAL.suffix}"
        ).exists()
        mail = smtp.messages[0]
        assert "MS-1004" in mail.text and "EXPERIMENTAL_INVESTIGATIONAL" in mail.text
        # commercial: 180 days from the payer's decision date (BHT04 2026-11-24), not from the
        # night that read the file (2026-11-25)
        assert "2027-05-23" in mail.text and "2027-05-24" not in mail.text
        raw = mail.raw.decode("utf-8", "replace")
        for secret in ("Nguyễn", "Nguyen", "Łukasz", "LUKASZ", "SHP771204588"):
            assert secret not in raw and secret not in mail.text


def test_a_failed_send_is_retried_next_run_and_visible(tmp_path):
    home = make_home(tmp_path, ["ms-1004.yaml"])
    with smtp_sink() as smtp:
        port = smtp.port
        settings = settings_for(home, port)
        first_night_then_submit(home, settings)
    # The SMTP server is gone now: the send fails and stays queued.
    shutil.copy(DENIAL, home / "responses" / DENIAL.name)
    report = run_night(settings, datetime(2026, 11, 25, 3, 0, tzinfo=UTC))
    assert report.notices_failed == 1
    store = Store(settings.db_url)
    mail = select(NotificationRow).where(NotificationRow.channel != "prefect-event")
    with store.session() as s:
        row = s.scalars(mail).one()
        assert row.state == "failed" and row.last_error
    with smtp_sink(port=port) as smtp:
        report = run_night(settings, datetime(2026, 11, 25, 4, 0, tzinfo=UTC))
        assert report.notices_sent == 1 and len(smtp.messages) == 1
    with store.session() as s:
        assert s.scalars(mail).one().state == "sent"
    store.dispose()


def test_a_denial_recorded_by_hand_gets_its_prefect_event_from_the_next_flow_run(tmp_path):
    """The event rides the outbox: a run without an emitter (CLI, plain run) leaves it waiting,
    a failed emit is retried, and it is emitted once across runs."""
    from priorauth.tracking import set_status

    home = make_home(tmp_path, ["ms-1004.yaml"])
    settings = settings_for(home)
    first_night_then_submit(home, settings)
    now = datetime(2026, 11, 26, 2, 0, tzinfo=UTC)
    store = Store(settings.db_url)
    with store.session() as session:
        set_status(
            session,
            "MS-1004",
            "denied",
            actor=Actor("jdoe", "coordinator"),
            now=now,
            catalog=load_catalog(settings.reference_dir),
            settings=settings,
            reason_code="STEP_THERAPY_NOT_MET",
        )
        deadline = session.get(CaseRow, "MS-1004").appeal_deadline.isoformat()
    store.dispose()
    assert run_night(settings, now).events_emitted == 0  # no emitter: the event waits

    def broken(name: str, payload: dict) -> None:
        raise ConnectionError("Prefect API unreachable")

    failed = run_night(settings, now, emit=broken)
    assert (failed.events_emitted, failed.notices_failed) == (0, 1)
    emitted: list[tuple[str, dict]] = []
    nights = [
        run_night(settings, now, emit=lambda name, payload: emitted.append((name, payload)))
        for _ in range(2)
    ]
    assert [n.events_emitted for n in nights] == [1, 0]
    assert emitted == [
        (
            "priorauth.case.denied",
            {
                "case_id": "MS-1004",
                "status": "denied",
                "reason_code": "STEP_THERAPY_NOT_MET",
                "appeal_deadline": deadline,
            },
        )
    ]


# ---- crash safety ----------------------------------------------------------------------------

CRASH_POINTS = [
    "after_case_recorded",
    "after_letter_written",
    "after_response_applied",
    "before_send",
    "after_send",
]


def run_subprocess(
    home: Path, smtp_port: int, crash_at: str | None = None, kill_after: float | None = None
) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIORAUTH_")}
    env.update(
        PRIORAUTH_HOME=str(home),
        PRIORAUTH_WORKERS="1",
        PRIORAUTH_NOTIFY_URLS=f"mailto://127.0.0.1:{smtp_port}?from=pa@example.org"
        "&to=team@example.org&mode=insecure",
    )
    if crash_at:
        env["PRIORAUTH_CRASH_AT"] = crash_at
    proc = subprocess.Popen(
        [sys.executable, "-m", "priorauth.nightly"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if kill_after is not None:
        time.sleep(kill_after)
        proc.send_signal(signal.SIGKILL)
    _, err = proc.communicate(timeout=120)
    if crash_at is None and kill_after is None:
        assert proc.returncode == 0, err.decode()[-2000:]
    return proc.returncode


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """A data folder after a first night and a submission, with new cases and a denial waiting."""
    root = tmp_path_factory.mktemp("crash")
    home = make_home(root, FIRST)
    with smtp_sink() as smtp:
        first_night_then_submit(home, settings_for(home, smtp.port))
    for name in LATER:
        shutil.copy(CASES / name, home / "intake" / name)
    shutil.copy(INVALID / "bad-npi-check-digit.yaml", home / "intake" / "bad-npi.yaml")
    shutil.copy(DENIAL, home / "responses" / DENIAL.name)
    return home


@pytest.fixture(scope="module")
def clean_state(prepared, tmp_path_factory):
    home = tmp_path_factory.mktemp("clean") / "home"
    shutil.copytree(prepared, home)
    with smtp_sink() as smtp:
        run_subprocess(home, smtp.port)
        assert len(smtp.messages) == 1
    return snapshot(home)


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_at_a_named_point_then_rerun_matches_a_clean_run(
    prepared, clean_state, tmp_path, point
):
    home = tmp_path / "home"
    shutil.copytree(prepared, home)
    with smtp_sink() as smtp:
        code = run_subprocess(home, smtp.port, crash_at=point)
        assert code == -signal.SIGKILL, f"the run did not reach {point}"
        run_subprocess(home, smtp.port)
        state = snapshot(home)
        # A crash after the SMTP hand-off and before it is recorded may send once more
        # (same References/X-Priorauth-Dedup header); anywhere else, exactly once.
        assert len(smtp.messages) == (2 if point == "after_send" else 1)
        keys = {m.message["X-Priorauth-Dedup"] for m in smtp.messages}
        assert len(keys) == 1
    assert not list(home.rglob("*.tmp")), "a half-written file is visible"
    assert state == clean_state


@pytest.mark.parametrize("seed", [1, 2])
def test_kill_at_a_random_moment_then_rerun_matches_a_clean_run(
    prepared, clean_state, tmp_path, seed
):
    home = tmp_path / "home"
    shutil.copytree(prepared, home)
    with smtp_sink() as smtp:
        run_subprocess(home, smtp.port, kill_after=random.Random(seed).uniform(0.8, 3.0))
        run_subprocess(home, smtp.port)
        assert 1 <= len(smtp.messages) <= 2
    assert not list(home.rglob("*.tmp"))
    assert snapshot(home) == clean_state


def _stored(settings, case_id: str) -> tuple[str, str, int]:
    store = Store(settings.db_url)
    try:
        with store.reader() as session:
            row = session.get(CaseRow, case_id)
            versions = len(
                session.scalars(select(DocumentRow.id).where(DocumentRow.case_id == case_id)).all()
            )
            return Path(row.source_file).name, row.case_sha256, versions
    finally:
        store.dispose()


def test_two_intake_files_for_one_case_keep_the_first_and_set_the_other_aside(tmp_path):
    """Without this the stored case flipped between the two files night after night."""
    home = make_home(tmp_path, ["ms-1004.yaml"])
    original = (home / "intake" / "ms-1004.yaml").read_text()
    changed = original.replace("weight: {value: 101,", "weight: {value: 102,")
    assert changed != original
    (home / "intake" / "resent-ms-1004.yaml").write_text(changed)
    settings = settings_for(home)
    nights = [run_night(settings, datetime(2026, 11, 25 + n, 2, 0, tzinfo=UTC)) for n in range(3)]
    assert nights[0].accepted == ["MS-1004"]
    assert nights[0].quarantined == ["resent-ms-1004.yaml"]
    assert [n.accepted for n in nights[1:]] == [[], []]
    assert [n.quarantined for n in nights[1:]] == [[], []]
    name, sha, versions = _stored(settings, "MS-1004")
    assert (name, sha) == ("ms-1004.yaml", sha256_file(home / "intake" / "ms-1004.yaml"))
    assert versions == 2  # one letter, one packet
    reason = (home / "quarantine" / "resent-ms-1004.yaml.reason.txt").read_text()
    assert "MS-1004 already comes from ms-1004.yaml" in reason
    assert (home / "quarantine" / "resent-ms-1004.yaml").read_text() == changed  # kept whole


def test_a_corrected_case_file_replaces_the_stored_case_once(tmp_path):
    """Edited in place, or handed in under a new name once the old file left intake."""
    home = make_home(tmp_path, ["ms-1004.yaml"])
    settings = settings_for(home)
    run_night(settings, datetime(2026, 11, 25, 2, 0, tzinfo=UTC))
    path = home / "intake" / "ms-1004.yaml"
    path.write_text(path.read_text().replace("weight: {value: 101,", "weight: {value: 102,"))
    edited = run_night(settings, datetime(2026, 11, 26, 2, 0, tzinfo=UTC))
    assert (edited.accepted, edited.quarantined) == (["MS-1004"], [])
    assert _stored(settings, "MS-1004")[:2] == ("ms-1004.yaml", sha256_file(path))
    renamed = home / "intake" / "ms-1004-v3.yaml"
    renamed.write_text(path.read_text().replace("weight: {value: 102,", "weight: {value: 103,"))
    path.unlink()
    moved = run_night(settings, datetime(2026, 11, 27, 2, 0, tzinfo=UTC))
    assert (moved.accepted, moved.quarantined) == (["MS-1004"], [])
    assert _stored(settings, "MS-1004")[:2] == ("ms-1004-v3.yaml", sha256_file(renamed))
    quiet = run_night(settings, datetime(2026, 11, 28, 2, 0, tzinfo=UTC))
    assert (quiet.accepted, quiet.quarantined) == ([], [])


def ms_1001_after_its_first_night(tmp_path: Path):
    """MS-1001 (28-day maintenance from 2026-12-01) through the night of 2026-11-25."""
    home = make_home(tmp_path, ["ms-dmt-failure-privigen.yaml"])
    settings = settings_for(home)
    now = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
    run_night(settings, now)
    return home, settings, load_catalog(settings.reference_dir), now, Store(settings.db_url)


def test_authorized_units_that_run_out_before_the_end_date_are_flagged(tmp_path):
    """The payer approved fewer units than the schedule needs until the end date: the night that
    the first uncovered course comes within the renewal window lists the case, and the case view
    says when the units run out. MS-1001 is 28-day maintenance from 2026-12-01."""
    from datetime import date

    from priorauth.tracking import case_view, set_status

    _, settings, catalog, now, store = ms_1001_after_its_first_night(tmp_path)
    coordinator = Actor("jdoe", "coordinator")
    with store.session() as session:
        row = session.get(CaseRow, "MS-1001")
        per_course = row.summary["dosing"]["billing_units_per_course"]
        assert row.summary["inputs"]["interval_days"] == 28
        assert row.service_start == date(2026, 12, 1)
        submit(
            session, "MS-1001", method="fax", reference="F", now=now, catalog=catalog,
            actor=coordinator,
        )  # fmt: skip
        set_status(
            session,
            "MS-1001",
            "partially_approved",
            actor=coordinator,
            now=now,
            catalog=catalog,
            settings=settings,
            reason_code="quantity",
            reference="AUTH-88",
            auth_start=date(2026, 12, 1),
            auth_end=date(2027, 5, 29),  # 7 courses: Dec 1, Dec 29, ..., May 18
            auth_units=3 * per_course,  # covers Dec 1, Dec 29, Jan 26
        )
    with store.session() as session:
        view = case_view(session, "MS-1001")
    assert view["authorization"]["units_run_out_on"] == "2027-02-23"
    before = run_night(settings, datetime(2027, 1, 23, 2, 0, tzinfo=UTC))  # 31 days before
    assert before.units_running_out == []
    within = run_night(settings, datetime(2027, 1, 24, 2, 0, tzinfo=UTC))  # 30 days before
    assert within.units_running_out == ["MS-1001"]
    assert within.summary()["units_running_out"] == ["MS-1001"]
    assert {"what": "authorized units run out", "count": 1, "cases": "MS-1001"} in within.table()
    with store.session() as session:  # enough units for every course: nothing to say
        session.get(CaseRow, "MS-1001").auth_units = 7 * per_course
    with store.session() as session:
        assert case_view(session, "MS-1001")["authorization"]["units_run_out_on"] is None
    assert run_night(settings, datetime(2027, 2, 20, 2, 0, tzinfo=UTC)).units_running_out == []
    store.dispose()


def test_bad_input_of_every_kind_is_set_aside_and_the_rest_completes(tmp_path):
    """Every invalid case fixture and every malformed payer file in one night."""
    home = make_home(tmp_path, [p.name for p in sorted(CASES.iterdir())])
    invalid = sorted(p for p in INVALID.iterdir() if p.suffix in (".yaml", ".json"))
    for path in invalid:
        shutil.copy(path, home / "intake" / path.name)
    malformed = sorted((FIXTURES / "responses" / "malformed").iterdir())
    (home / "responses").mkdir()
    for path in malformed:
        shutil.copy(path, home / "responses" / path.name)
    assert len(invalid) + len(malformed) >= 20
    report = run_night(settings_for(home), datetime(2026, 11, 25, 2, 0, tzinfo=UTC))
    assert len(report.letters) == len(list(CASES.iterdir()))
    quarantined = {
        p.name for p in (home / "quarantine").iterdir() if not p.name.endswith(".reason.txt")
    }
    assert quarantined == {p.name for p in invalid} | {p.name for p in malformed}
    for name in quarantined:
        reason = (home / "quarantine" / f"{name}.reason.txt").read_text()
        assert name in reason and len(reason.splitlines()) >= 1
    assert not list((home / "intake").glob("bad-*"))
    assert not [p for p in (home / "responses").iterdir() if p.is_file()]


def test_expiring_authorization_gets_one_renewal_letter(tmp_path, monkeypatch):
    home, settings, catalog, now, store = ms_1001_after_its_first_night(tmp_path)
    from datetime import date

    from priorauth.tracking import set_status

    with store.session() as session:
        submit(
            session,
            "MS-1001",
            method="fax",
            reference="F",
            now=now,
            catalog=catalog,
            actor=Actor("jdoe", "coordinator"),
        )
        set_status(
            session,
            "MS-1001",
            "approved",
            actor=Actor("jdoe", "coordinator"),
            now=now,
            catalog=catalog,
            settings=settings,
            reference="AUTH-77",
            auth_start=date(2026, 6, 1),
            auth_end=date(2026, 12, 20),
            auth_units=2100,
        )
    first = run_night(settings, now)
    rendered: list[dict] = []
    real_generate = nightly.generate_case

    def counting_generate(*args, **kwargs):
        rendered.append(kwargs.get("renewal"))
        return real_generate(*args, **kwargs)

    monkeypatch.setattr(nightly, "generate_case", counting_generate)
    second = run_night(settings, now)
    assert first.renewals == ["MS-1001"] and second.renewals == ["MS-1001"]
    assert rendered == []  # listed again, not rendered again
    with store.session() as session:
        kinds = session.execute(
            select(DocumentRow.kind, DocumentRow.version)
            .where(DocumentRow.kind.like("renewal_%"))
            .order_by(DocumentRow.kind)
        ).all()
    assert [tuple(k) for k in kinds] == [("renewal_letter", 1), ("renewal_packet", 1)]
    letter = home / "letters" / "MS-1001" / "renewal-2026-12-20" / "letter.pdf"
    from pypdf import PdfReader

    text = " ".join(" ".join(page.extract_text() for page in PdfReader(letter).pages).split())
    assert "renewal" in text and "AUTH-77" in text and "December 20, 2026" in text
    # After the end date the authorization expires.
    run_night(settings, datetime(2026, 12, 21, 2, 0, tzinfo=UTC))
    with store.session() as session:
        assert session.get(CaseRow, "MS-1001").status == "expired"
    store.dispose()


# ---- payer criteria: needs_info, the case file fixed, a coordinator's override -----------------

NCS = "ncs_report"


def ncs_fixture() -> Path:
    """A fixture case that meets its payer's criteria with a nerve conduction study attached."""
    import yaml

    for path in sorted(CASES.iterdir()):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if any(a.get("kind") == NCS for a in data.get("attachments", [])):
            return path
    pytest.skip(f"no fixture case encloses an attachment of kind {NCS} yet")


def write_ncs_case(home: Path, *, with_ncs: bool, weight_kg: float | None = None) -> Path:
    """That case in intake/ (always under the same file name), with or without its NCS report."""
    import yaml

    source = ncs_fixture()
    data = yaml.safe_load(source.read_text(encoding="utf-8"))
    if not with_ncs:
        data["attachments"] = [a for a in data["attachments"] if a.get("kind") != NCS]
    if weight_kg is not None:
        data["patient"]["weight"]["value"] = weight_kg
    path = home / "intake" / f"{source.stem}.yaml"
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
    return path


def stored(settings, case_id: str) -> dict:
    from priorauth.tracking import case_view

    store = Store(settings.db_url)
    try:
        with store.reader() as session:
            view = case_view(session, case_id)
            view["summary"] = session.get(CaseRow, case_id).summary
            view["audit"] = [
                (a.action, a.actor, a.detail)
                for a in session.scalars(
                    select(AuditRow).where(AuditRow.case_id == case_id).order_by(AuditRow.id)
                )
            ]
            return view
    finally:
        store.dispose()


def letter_text(home: Path, path: str) -> str:
    from pypdf import PdfReader

    return " ".join(page.extract_text() for page in PdfReader(home / path).pages)


def test_a_case_missing_a_required_document_needs_info_until_its_file_is_fixed(tmp_path):
    home = make_home(tmp_path, ["ms-1004.yaml"])
    path = write_ncs_case(home, with_ncs=False)
    settings = settings_for(home)
    first = run_night(settings, datetime(2026, 11, 25, 2, 0, tzinfo=UTC))
    case_id = next(c for c in first.accepted if c != "MS-1004")
    # Registered, with a letter and a packet (DRAFTs), listed under needs_info, not set aside.
    assert first.needs_info == [case_id] and case_id in first.letters
    assert (first.invalid, first.quarantined) == ([], [])
    assert first.summary()["needs_info"] == [case_id]
    table = {row["what"]: row for row in first.table()}
    assert table["needs info (payer criteria insufficient, draft letter)"]["cases"] == case_id
    assert table["invalid (case file set aside)"]["count"] == 0
    assert path.exists()
    view = stored(settings, case_id)
    assert view["status"] == "needs_info"
    assert view["summary"]["status"] == "needs_info"
    criteria = view["summary"]["criteria"]
    assert criteria["verdict"] == "insufficient"
    missing = [i["id"] for i in criteria["items"] if i["verdict"] == "insufficient"]
    assert missing and view["missing"] == missing
    assert any(NCS in (i["request"] or "") for i in criteria["items"])
    moved = view["history"][-1]
    assert (moved["from"], moved["to"]) == ("draft", "needs_info")
    assert all(criterion in moved["reason"] for criterion in missing)
    names = {d["kind"]: d for d in view["documents"]}
    assert sorted(names) == ["letter", "packet"]
    assert "DRAFT" in letter_text(home, names["letter"]["path"])
    # The night again: nothing new.
    again = run_night(settings, datetime(2026, 11, 26, 2, 0, tzinfo=UTC))
    assert (again.accepted, again.needs_info) == ([], [])
    # The NCS report is added to the case file: evaluated afresh, ready, final letter v2.
    write_ncs_case(home, with_ncs=True)
    fixed = run_night(settings, datetime(2026, 11, 27, 2, 0, tzinfo=UTC))
    assert (fixed.accepted, fixed.needs_info) == ([case_id], [])
    view = stored(settings, case_id)
    assert view["status"] == "ready" and view["missing"] == []
    assert view["summary"]["criteria"]["verdict"] == "met"
    assert [(h["from"], h["to"]) for h in view["history"]][-1] == ("needs_info", "ready")
    letters = [d for d in view["documents"] if d["kind"] == "letter"]
    assert [d["version"] for d in letters] == [1, 2]
    assert "DRAFT" not in letter_text(home, letters[-1]["path"])


def cli(home: Path, *args: str) -> tuple[int, str]:
    from click.testing import CliRunner

    from priorauth.cli import main

    env = {"PRIORAUTH_HOME": str(home), "PRIORAUTH_WORKERS": "1", "SOURCE_DATE_EPOCH": "1795996800"}
    result = CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def test_a_coordinator_override_is_audited_makes_the_letter_final_and_survives_the_night(
    tmp_path,
):
    home = make_home(tmp_path, [])
    write_ncs_case(home, with_ncs=False)
    settings = settings_for(home)
    (case_id,) = run_night(settings, datetime(2026, 11, 25, 2, 0, tzinfo=UTC)).needs_info
    missing = stored(settings, case_id)["missing"]

    code, out = cli(home, "cases", "--status", "needs_info")
    assert code == 0 and case_id in out and f"missing: {', '.join(missing)}" in out
    code, out = cli(home, "status", case_id)
    assert code == 0 and f"{case_id}: needs_info" in out
    assert "INSUFFICIENT" in out and "request:" in out and NCS in out
    # Without a reason: refused, saying what is missing and how to proceed; nothing changes.
    for blank in ([], ["--reason", "  "]):
        code, out = cli(home, "status", case_id, "ready", *blank)
        assert code == 2
        assert "--reason" in out and all(m in out for m in missing)
    assert stored(settings, case_id)["status"] == "needs_info"

    reason = "NCS report faxed separately by the neurologist's office"
    code, out = cli(home, "status", case_id, "ready", "--reason", reason, "--actor", "jdoe")
    assert code == 0, out
    assert "criteria override" in out
    view = stored(settings, case_id)
    assert (view["status"], view["override"], view["letter_status"]) == ("ready", True, "ready")
    last = view["history"][-1]
    assert (last["from"], last["to"], last["actor"], last["source"]) == (
        "needs_info",
        "ready",
        "jdoe",
        "coordinator",
    )
    assert (last["reason_code"], last["reason"]) == ("CRITERIA_OVERRIDE", reason)
    overrides = [a for a in view["audit"] if a[0] == "criteria_override"]
    assert len(overrides) == 1 and overrides[0][1] == "jdoe"
    assert all(m in overrides[0][2] for m in missing) and "faxed" not in overrides[0][2]
    # The letter is final: a new version without the DRAFT watermark; the DRAFT stays on file.
    letters = [d for d in view["documents"] if d["kind"] == "letter"]
    assert [d["version"] for d in letters] == [1, 2]
    assert "DRAFT" in letter_text(home, letters[0]["path"])
    assert "DRAFT" not in letter_text(home, letters[1]["path"])
    assert view["summary"]["criteria"]["override"] is True

    # Re-running the night (same case-file version) undoes nothing.
    for day in (26, 27):
        night = run_night(settings, datetime(2026, 11, day, 2, 0, tzinfo=UTC))
        assert (night.accepted, night.needs_info) == ([], [])
    again = stored(settings, case_id)
    assert (again["status"], again["override"]) == ("ready", True)
    assert again["documents"] == view["documents"] and again["history"] == view["history"]
    # Overriding twice is refused (the case is ready now).
    code, out = cli(home, "status", case_id, "ready", "--reason", reason)
    assert code == 2 and "cannot move from ready to ready" in out

    # A changed case file is evaluated afresh: the override does not carry over to it.
    write_ncs_case(home, with_ncs=False, weight_kg=81)
    changed = run_night(settings, datetime(2026, 11, 28, 2, 0, tzinfo=UTC))
    assert changed.needs_info == [case_id]
    fresh = stored(settings, case_id)
    assert (fresh["override"], fresh["letter_status"]) == (False, "needs_info")
    assert fresh["status"] == "ready"  # the state machine has no ready → needs_info move
    assert any(a[0] == "criteria_insufficient" for a in fresh["audit"])
