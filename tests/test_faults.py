"""Fault injection for issue 8: payer responses out of order, long fields, PHI in free text,
files with the same name, crashes and concurrent nights. Each test runs on SQLite and, when
configured, PostgreSQL (the `db_url` fixture), except the process tests (SQLite: what they
check lives in the operating system, not the database).

The plain `run_night` core is used throughout (no Prefect start-up); the CLI is driven through
click's runner, or as a real process where a kill -9 or a second process is the point.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import select, update

from conftest import ATTACHMENTS, CASES, FIXTURES, make_case
from priorauth import runguard
from priorauth.catalog import load_catalog
from priorauth.cli import main
from priorauth.nightly import NightFailed, raise_for_failures, run_night
from priorauth.responses import ResponseFileError, parse_response_file
from priorauth.settings import load_settings
from priorauth.statuses import Status
from priorauth.store import CaseRow, NotificationRow, PayerResponseRow, StatusChangeRow, Store
from priorauth.tracking import Actor, case_view, submit
from sinks import refusing_port, smtp_sink

DENIAL = FIXTURES / "responses" / "ms-1004-denied.x12"  # MS-1004, A3 0T, BHT04 2026-11-24
NIGHT = datetime(2026, 11, 25, 2, 0, tzinfo=UTC)
COORDINATOR = Actor("jdoe", "coordinator", "coordinator")
CANARY = {
    "first": "Zebulon",
    "last": "Quixotecanary",
    "dob": "1977-07-07",
    "member": "CANARYMEMBER7777" + "X" * 54,  # 70 characters: more than the old 64-column
}
CANARY_STRINGS = [CANARY["first"], CANARY["last"], CANARY["dob"], "07/07/1977", CANARY["member"]]
REPO = Path(__file__).resolve().parents[1]


def mail_url(port: int) -> str:
    return f"mailto://127.0.0.1:{port}?from=pa@example.org&to=team@example.org&mode=insecure"


def make_home(root: Path, names: list[str] = ()) -> Path:  # type: ignore[assignment]
    home = root / "home"
    (home / "intake").mkdir(parents=True)
    (home / "responses").mkdir()
    shutil.copytree(ATTACHMENTS, home / "attachments")
    for name in names:
        shutil.copy(CASES / name, home / "intake" / name)
    return home


def cli(monkeypatch, settings, *args: str) -> tuple[int, str]:
    monkeypatch.setenv("PRIORAUTH_HOME", str(settings.home))
    monkeypatch.setenv("PRIORAUTH_DATABASE_URL", settings.db_url)
    monkeypatch.setenv("PRIORAUTH_NOTIFY_URLS", settings.notify_urls)
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def ledger(settings) -> list[tuple[str, str | None, str]]:
    store = Store(settings.db_url)
    try:
        with store.reader() as session:
            return [
                (r.outcome, r.case_id, r.source_file)
                for r in session.scalars(select(PayerResponseRow).order_by(PayerResponseRow.id))
            ]
    finally:
        store.dispose()


def json_file(path: Path, *responses: dict) -> Path:
    path.write_text(json.dumps({"responses": list(responses)}), encoding="utf-8")
    return path


# ---- 1. responses are never dropped ----------------------------------------------------------


def test_a_denial_before_its_submission_applies_after_submit_and_is_notified_once(
    tmp_path, db_url, monkeypatch
) -> None:
    """The "Done when": the denial waits (pending, shown, one notice), `priorauth submit`
    applies it at once, its appeal deadline runs from the payer's decision date, and the
    nightly run e-mails it once through a real SMTP server."""
    home = make_home(tmp_path, ["ms-1004.yaml"])
    with smtp_sink() as smtp:
        settings = load_settings(
            home=home, workers=1, notify_urls=mail_url(smtp.port), database_url=db_url
        )
        run_night(settings, NIGHT)  # MS-1004 registered, letter written: ready
        shutil.copy(DENIAL, home / "responses" / DENIAL.name)
        report = run_night(settings, NIGHT + timedelta(hours=1))
        assert report.denials == [] and report.responses["pending"] == 1
        assert len(report.pending) == 1 and report.pending[0].startswith("#1 MS-1004:")
        assert "not yet submitted" in report.pending[0]
        assert ledger(settings) == [("pending", "MS-1004", DENIAL.name)]
        # One notice about the waiting response, none about a denial yet.
        assert len(smtp.messages) == 1
        assert "payer response waiting" in smtp.messages[0].message["Subject"]
        # the payer's file name is outside data (could name the patient): the ledger number only
        assert DENIAL.name not in smtp.messages[0].text and "#1" in smtp.messages[0].text
        code, out = cli(monkeypatch, settings, "cases")
        assert code == 0 and "PAYER RESPONSE WAITING" in out and "not yet submitted" in out

        # The same file dropped again is not a duplicate while it waits: still one response.
        shutil.copy(DENIAL, home / "responses" / DENIAL.name)
        run_night(settings, NIGHT + timedelta(hours=2))
        assert len(ledger(settings)) == 1 and len(smtp.messages) == 1

        code, out = cli(
            monkeypatch, settings, "submit", "MS-1004", "--method", "fax", "--reference", "FAX-1"
        )
        assert code == 0, out
        assert "1 payer response(s) that arrived earlier applied now" in out
        assert ledger(settings)[0][0] == "applied"
        store = Store(settings.db_url)
        with store.reader() as session:
            view = case_view(session, "MS-1004")
        store.dispose()
        assert view["status"] == "denied"
        # commercial plan: 180 days from the payer's decision (BHT04 2026-11-24)
        assert view["appeal_deadline"] == "2027-05-23"

        for hours in (3, 4):
            run_night(settings, NIGHT + timedelta(hours=hours))
        denials = [m for m in smtp.messages if "Prior auth denied" in m.message["Subject"]]
        assert len(denials) == 1
        assert "2027-05-23" in denials[0].text and "EXPERIMENTAL_INVESTIGATIONAL" in denials[0].text
        assert "Authorization number" not in denials[0].text  # a denial certifies nothing
        assert "Payer reference: SHP26D0092210" in denials[0].text
        # Every received file is kept, never overwritten: two drops, two copies.
        assert len(list((home / "responses" / "processed").iterdir())) == 2


def test_responses_apply_in_the_payers_decision_date_order(tmp_path, db_url) -> None:
    home = make_home(tmp_path)
    settings = load_settings(home=home, workers=1, database_url=db_url)
    catalog = load_catalog(settings.reference_dir)
    _register(settings, catalog, "ms-1004.yaml", submitted=True)
    # One file, the later decision first: applied pended (11-20) then denied (11-22).
    json_file(
        home / "responses" / "batch.json",
        {"case_id": "MS-1004", "decision": "denied", "decision_date": "2026-11-22"},
        {"case_id": "MS-1004", "decision": "pending", "decision_date": "2026-11-20"},
    )
    run_night(settings, NIGHT)
    history = _history(settings, "MS-1004")
    assert history[-2:] == ["pending", "denied"]
    # An older decision arriving later is kept as superseded, never applied.
    json_file(
        home / "responses" / "batch.json",  # the same name, other content
        {"case_id": "MS-1004", "decision": "approved", "decision_date": "2026-11-19"},
    )
    report = run_night(settings, NIGHT + timedelta(hours=1))
    assert report.responses["superseded"] == 1 and _history(settings, "MS-1004")[-1] == "denied"
    # processed/ keeps both files called batch.json (content-addressed names).
    kept = sorted(p.name for p in (home / "responses" / "processed").iterdir())
    assert len(kept) == 2 and all(name.endswith("-batch.json") for name in kept)


def test_an_unknown_case_waits_and_a_coordinator_can_dismiss_it(
    tmp_path, db_url, monkeypatch
) -> None:
    home = make_home(tmp_path)
    settings = load_settings(home=home, workers=1, database_url=db_url)
    json_file(home / "responses" / "stray.json", {"case_id": "NOPE-1", "decision": "denied"})
    report = run_night(settings, NIGHT)
    assert report.responses["pending"] == 1 and report.pending[0].startswith("#1 ?:")
    code, out = cli(monkeypatch, settings, "cases")
    assert "1 payer response(s) match no case yet" in out and "stray.json" in out
    code, out = cli(monkeypatch, settings, "responses", "dismiss", "1", "--reason", "not ours")
    assert code == 0 and ledger(settings)[0][0] == "dismissed"
    assert (home / "responses" / "processed").iterdir()  # the file stays on record


# ---- 3. field limits from one place ---------------------------------------------------------


def test_over_long_fields_fail_only_their_case_or_file(tmp_path, db_url) -> None:
    home = make_home(tmp_path)
    settings = load_settings(home=home, workers=1, database_url=db_url)
    catalog = load_catalog(settings.reference_dir)
    _register(settings, catalog, "ms-1004.yaml", submitted=True)
    long_member = make_case(case_id="MS-7001", **{"coverage.member_id": "M" * 81})
    (home / "intake" / "long-member.yaml").write_text(yaml.safe_dump(long_member))
    ok_member = make_case(case_id="MS-7002", **{"coverage.member_id": "M" * 80})
    (home / "intake" / "ok-member.yaml").write_text(yaml.safe_dump(ok_member))
    json_file(
        home / "responses" / "long-ref.json",
        {"case_id": "MS-1004", "decision": "denied", "payer_reference": "R" * 80},
    )
    x12 = DENIAL.read_text().replace("HCR*A3*SHP26D0092210*0T", "HCR*A3*" + "C" * 80 + "*0T")
    (home / "responses" / "long-hcr02.x12").write_text(x12)
    shutil.copy(DENIAL, home / "responses" / DENIAL.name)
    report = run_night(settings, NIGHT)
    assert report.set_aside == {
        "case file: invalid": 1,
        "payer file: over-long field": 2,
    }
    assert "MS-7002" in report.accepted and report.invalid == ["MS-7001"]
    assert [d["case_id"] for d in report.denials] == ["MS-1004"]  # the good file still applied
    reason = (home / "quarantine" / "long-hcr02.x12.reason.txt").read_text()
    assert "certification_number is 80 characters; at most 50" in reason
    reason = (home / "quarantine" / "long-member.yaml.reason.txt").read_text()
    assert "coverage.member_id" in reason and "M" * 81 not in reason


def test_x12_keys_are_held_to_the_standards_lengths(tmp_path) -> None:
    x12 = DENIAL.read_text().replace("TRN*1*SHP-UM-2026-0092210", "TRN*1*" + "B" * 51)
    path = tmp_path / "long.x12"
    path.write_text(x12)
    with pytest.raises(ResponseFileError, match="payer_reference is 51 characters; at most 50"):
        parse_response_file(path)


def test_a_database_error_never_carries_the_values(tmp_path, db_url) -> None:
    """hide_parameters: a refused row's error names the statement, never the patient."""
    store = Store(db_url)
    try:
        if store.engine.dialect.name != "postgresql":
            pytest.skip("SQLite does not enforce column lengths")
        with pytest.raises(Exception) as caught, store.session() as session:
            session.add(
                CaseRow(
                    case_id="X-1", status="draft", source_file="x", case_sha256="x",
                    payer_id="p", product_id="p", hcpcs="J1459", indication="ms",
                    patient_name=f"{CANARY['first']} {CANARY['last']}",
                    date_of_birth=date(1977, 7, 7), member_id=CANARY["member"] * 2,
                )
            )  # fmt: skip
        text = str(caught.value)
        assert "hidden" in text.lower() or "parameters" not in text.lower()
        for secret in CANARY_STRINGS:
            assert secret not in text
    finally:
        store.dispose()


# ---- 2 and 8. PHI minimum, loud failures: one fault-injected night ---------------------------


def test_phi_scan_of_a_fault_injected_night(tmp_path, db_url, caplog) -> None:
    """A canary patient (70-character member ID) is registered and submitted; the payer's
    denial quotes the patient's name, birth date and member ID in its free text; a case file
    with an over-long member ID, an unreadable payer file and a channel that refuses every
    connection are mixed in. Every log line, the night's summary, the failure message, every
    notice and every quarantine reason is scanned: none holds the canary's identifiers."""
    caplog.set_level(logging.DEBUG)
    home = make_home(tmp_path)
    canary = make_case(
        case_id="MS-9001",
        **{
            "patient.first_name": CANARY["first"],
            "patient.last_name": CANARY["last"],
            "patient.date_of_birth": date.fromisoformat(CANARY["dob"]),
            "coverage.member_id": CANARY["member"],
        },
    )
    (home / "intake" / "canary.yaml").write_text(yaml.safe_dump(canary, allow_unicode=True))
    too_long = make_case(
        case_id="MS-9002",
        **{"patient.last_name": CANARY["last"], "coverage.member_id": CANARY["member"] + "Y" * 11},
    )
    (home / "intake" / "too-long.yaml").write_text(yaml.safe_dump(too_long))
    with smtp_sink() as smtp, refusing_port() as dead:
        urls = f"{mail_url(smtp.port)}, json://127.0.0.1:{dead}/hook"
        settings = load_settings(home=home, workers=1, notify_urls=urls, database_url=db_url)
        errors: list[str] = []
        first = run_night(settings, NIGHT)
        assert first.accepted == ["MS-9001"] and first.invalid == ["MS-9002"]
        store = Store(settings.db_url)
        with store.session() as session:
            submit(
                session, "MS-9001", method="fax", reference="FAX-9", actor=COORDINATOR,
                now=NIGHT, catalog=load_catalog(settings.reference_dir),
            )  # fmt: skip
        quote = (
            f"Member {CANARY['member']}, {CANARY['first']} {CANARY['last']} (DOB "
            f"{CANARY['dob']}, 07/07/1977): IVIG for MULTIPLE SCLEROSIS is not covered."
        )
        json_file(
            home / "responses" / "summit.json",
            {
                "case_id": "MS-9001",
                "decision": "denied",
                "reason_code": "0T",
                "reason_text": quote,
                "certification_number": "SHP-D-9001",
                "decision_date": "2026-11-24",
            },
            {
                "case_id": "MS-9001",
                "member_id": CANARY["member"],
                "rejection_errors": [{"code": "75", "message": quote}],
            },
        )
        (home / "responses" / "broken.x12").write_text("ISA*00*" + CANARY["member"])
        second = run_night(settings, NIGHT + timedelta(hours=1))
        with pytest.raises(NightFailed) as failed:
            raise_for_failures(second)
        errors.append(str(failed.value))
        assert "notice(s) failed to send" in str(failed.value)
        assert second.set_aside == {"payer file: unreadable": 1}
        assert second.rejections == ["MS-9001"]  # AAA: listed, not a denial
        with store.reader() as session:
            notices = [
                f"{n.title}\n{n.body}\n{n.last_error}"
                for n in session.scalars(select(NotificationRow))
            ]
            history = session.scalars(
                select(StatusChangeRow.reason_text).where(StatusChangeRow.to_status == "denied")
            ).all()
        store.dispose()
        assert history == [quote]  # the payer's words are kept for the portal (behind sign-in)
        mails = [m.raw.decode("utf-8", "replace") + m.text for m in smtp.messages]
        assert any("Prior auth denied" in m for m in mails)
        assert any("payer rejected the request" in m for m in mails)
    reasons = [p.read_text() for p in (home / "quarantine").glob("*.reason.txt")]
    texts = {
        "logs": [r.getMessage() for r in caplog.records]
        + [r.exc_text or "" for r in caplog.records],
        "summary": [json.dumps(first.summary()), json.dumps(second.summary())],
        "errors": errors,
        "notices": notices + mails,
        "quarantine reasons": reasons,
    }
    for where, items in texts.items():
        for text in items:
            for secret in [*CANARY_STRINGS, "MULTIPLE SCLEROSIS"]:
                assert secret not in text, f"{secret!r} found in {where}"


def test_info_request_and_pending_too_long_are_loud(tmp_path, db_url, monkeypatch) -> None:
    home = make_home(tmp_path)
    settings = load_settings(
        home=home, workers=1, database_url=db_url, pending_response_max_age_hours=24
    )
    catalog = load_catalog(settings.reference_dir)
    _register(settings, catalog, "ms-1004.yaml", submitted=True)
    _register(settings, catalog, "ms-dmt-failure-privigen.yaml", submitted=False)
    json_file(
        home / "responses" / "a4.json",
        {
            "case_id": "MS-1004",
            "action_code": "A4",
            "reason_code": "0U",
            "reason_text": "Send the latest MRI report and EDSS scores.",
        },
        {"case_id": "MS-1001", "decision": "approved"},  # not yet submitted: waits
    )
    report = run_night(settings, NIGHT)
    raise_for_failures(report)  # pending for minutes only: not a failure yet
    store = Store(settings.db_url)
    with store.reader() as session:
        view = case_view(session, "MS-1004")
    assert view["status"] == Status.INFO_REQUESTED
    assert view["history"][-1]["reason"] == "Send the latest MRI report and EDSS scores."
    later = run_night(settings, NIGHT + timedelta(hours=25))
    assert later.pending_too_old == ["#2 MS-1001"]
    with pytest.raises(NightFailed, match="pending too long"):
        raise_for_failures(later)
    store.dispose()
    # The CLI says so and exits 1 (the night's work is still done).
    with store_at(settings) as s, s.session() as session:
        session.execute(update(PayerResponseRow).values(at=datetime.now(UTC) - timedelta(days=3)))
    night = _night(settings)
    assert night.returncode == 1 and "pending too long" in night.stderr


class store_at:  # a tiny context manager for one Store
    def __init__(self, settings) -> None:
        self.store = Store(settings.db_url)

    def __enter__(self) -> Store:
        return self.store

    def __exit__(self, *exc: object) -> None:
        self.store.dispose()


# ---- 7. runs refuse to overlap --------------------------------------------------------------


def test_two_concurrent_nights_one_runs_one_exits_saying_why(tmp_path, db_url) -> None:
    home = make_home(tmp_path)
    settings = load_settings(home=home, workers=1, database_url=db_url)
    env = _env(settings)
    with store_at(settings) as store, runguard.night_lock(store):  # a night in progress here
        with pytest.raises(runguard.NightAlreadyRunning, match="another nightly run"):
            run_night(settings, NIGHT)
        second = subprocess.run(
            [sys.executable, "-m", "priorauth.cli", "nightly", "--no-prefect"],
            env=env, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert second.returncode == 3, second.stderr
        assert "another nightly run is in progress" in second.stderr
    after = subprocess.run(
        [sys.executable, "-m", "priorauth.cli", "nightly", "--no-prefect"],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert after.returncode == 0, after.stderr
    assert "quiet night" not in after.stderr  # --no-prefect: it was asked for plainly


def test_a_dead_holders_lease_is_taken_over(tmp_path) -> None:
    home = make_home(tmp_path)
    settings = load_settings(home=home, workers=1)
    with store_at(settings) as store, store.session() as session:
        from priorauth.store import RunLockRow

        dead = runguard.holder_id().rsplit(":", 2)[0] + ":999999:0"
        session.add(RunLockRow(name="nightly", holder=dead, acquired_at=NIGHT, renewed_at=NIGHT))
    run_night(settings, NIGHT)  # not refused: pid 999999 does not run here


# ---- 5 and 6. a killed night leaves nothing behind; a quiet night skips Prefect --------------


def _group(pgid: int) -> list[int]:
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            pids.append(int(stat.parent.name))
    return pids


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="needs Linux /proc")
def test_kill_9_of_a_night_leaves_no_process_or_temporary_folder(tmp_path) -> None:
    home = make_home(tmp_path, sorted(p.name for p in CASES.iterdir())[:10])
    settings = load_settings(home=home, workers=2)
    env = {**_env(settings), "PRIORAUTH_WORKERS": "2"}
    night = subprocess.Popen(
        [sys.executable, "-m", "priorauth.cli", "nightly", "--no-prefect"],
        env=env, stdout=subprocess.DEVNULL, stderr=(tmp_path / "night.err").open("wb"),
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        # the night, its watchdog, the forkserver and a render worker (at least)
        while len(_group(night.pid)) < 4 and time.monotonic() < deadline:
            if night.poll() is not None:
                err = (tmp_path / "night.err").read_text()[-2000:]
                pytest.fail(f"the night ended before its render processes started: {err}")
            time.sleep(0.05)
        assert len(_group(night.pid)) >= 4
        scratch = runguard.scratch_folder(home, night.pid)
        assert scratch.is_dir()
        os.kill(night.pid, signal.SIGKILL)
        night.wait(timeout=10)
        deadline = time.monotonic() + 15
        while _group(night.pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert _group(night.pid) == [], "children of the killed night still run"
        assert not scratch.exists()
    finally:
        for pid in _group(night.pid):
            os.kill(pid, signal.SIGKILL)
    # A leftover from an earlier crash (a watchdog cannot run after a power cut): the next run
    # removes it, and its own, and converges.
    (runguard.scratch_root(home) / "run-424242" / "pymp-abc123").mkdir(parents=True)
    done = subprocess.run(
        [sys.executable, "-m", "priorauth.cli", "nightly", "--no-prefect"],
        env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert list(runguard.scratch_root(home).iterdir()) == []


def test_a_quiet_night_skips_prefect_and_says_so(tmp_path) -> None:
    home = make_home(tmp_path)
    settings = load_settings(home=home, workers=1)
    night = _night(settings, prefect=None)
    assert night.returncode == 0, night.stderr
    assert "quiet night" in night.stderr and "without Prefect" in night.stderr


def test_the_prefect_start_limit_is_raised_before_prefect_reads_it() -> None:
    code = (
        "import os, importlib.util, sys;"
        f"spec = importlib.util.spec_from_file_location('f', {str(REPO / 'flows' / 'nightly.py')!r});"
        "m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m);"
        "from prefect.settings import get_current_settings as g;"
        "print(g().server.ephemeral.startup_timeout_seconds)"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_SERVER_EPHEMERAL")}
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.stdout.strip() == "120", out.stderr


# ---- helpers ----------------------------------------------------------------------------------


def _night(settings, *, prefect: bool | None = False) -> subprocess.CompletedProcess:
    """`priorauth nightly` as its own process (it leads a process group and forks a watchdog:
    never inside the test process)."""
    flag = [] if prefect is None else ["--prefect" if prefect else "--no-prefect"]
    return subprocess.run(
        [sys.executable, "-m", "priorauth.cli", "nightly", *flag],
        env=_env(settings), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


def _env(settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PRIORAUTH_")}
    env.update(
        PRIORAUTH_HOME=str(settings.home),
        PRIORAUTH_DATABASE_URL=settings.db_url,
        PRIORAUTH_WORKERS=str(settings.workers),
        PREFECT_SERVER_EPHEMERAL_ENABLED="false",
    )
    return env


def _register(settings, catalog, name: str, *, submitted: bool) -> str:
    from conftest import TODAY
    from priorauth.intake import load_case
    from priorauth.tracking import record_documents, register_case

    case = load_case(CASES / name, catalog=catalog, today=TODAY)
    with store_at(settings) as store:
        with store.session() as session:
            register_case(
                session, case, source_file=str(CASES / name), case_sha256="sha-" + name,
                summary={"product": {"hcpcs": catalog.product(case.request.product_id).hcpcs}},
                now=NIGHT - timedelta(days=2),
            )  # fmt: skip
            record_documents(session, case.case_id, [], actor=COORDINATOR, now=NIGHT)
        if submitted:
            with store.session() as session:
                submit(
                    session, case.case_id, method="fax", reference=f"FAX-{case.case_id}",
                    actor=COORDINATOR, now=NIGHT - timedelta(days=1), catalog=catalog,
                )  # fmt: skip
    return case.case_id


def _history(settings, case_id: str) -> list[str]:
    with store_at(settings) as store, store.reader() as session:
        return [h["to"] for h in case_view(session, case_id)["history"]]
