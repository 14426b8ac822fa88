"""A real Prefect flow run of generate-letters on the fixtures, against a temporary Prefect server
(one per test session). Checks outputs, and that Prefect's own stores hold no patient data."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest
import yaml

from conftest import CASES, INVALID

pytestmark = pytest.mark.flow


@pytest.fixture(scope="module")
def harness():
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=90):
        yield


def _phi_strings() -> list[str]:
    """Patient names, birth dates and member IDs of every fixture case (the canary strings)."""
    found = []
    for path in [*CASES.iterdir(), *INVALID.iterdir()]:
        if path.suffix not in (".yaml", ".json"):
            continue
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            continue
        if not isinstance(data, dict) or not isinstance(data.get("patient"), dict):
            continue
        patient, coverage = data["patient"], data.get("coverage") or {}
        found += [
            str(patient.get("last_name")),
            str(patient.get("date_of_birth")),
            str(coverage.get("member_id")),
        ]
    return [s for s in found if s and s != "None"]


def test_flow_run_generates_every_fixture_and_keeps_phi_out_of_prefect(harness, tmp_path: Path):
    from prefect.client.orchestration import get_client

    import flows.letters as letters_flow

    bad = tmp_path / "in" / "bad.yaml"
    bad.parent.mkdir()
    bad.write_text(
        (INVALID / "bad-g35-category.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    out = tmp_path / "out"
    state = letters_flow.generate_letters(
        paths=[str(CASES), str(bad)], out_dir=str(out), return_state=True
    )
    assert state.is_completed()
    summary = state.result()
    cases = sorted(CASES.glob("*.y*ml")) + sorted(CASES.glob("*.json"))
    # every valid fixture is written; those whose payer criteria lack a document are needs_info
    assert summary["ready"] + summary["needs_info"] == len(cases)
    assert summary["needs_info"] == sum(
        json.loads((out / c["case_id"] / "summary.json").read_text())["status"] == "needs_info"
        for c in summary["cases"]
        if c["status"] != "invalid"
    )
    assert summary["invalid"] == 1
    for case in summary["cases"]:
        folder = out / case["case_id"]
        if case["status"] in ("ready", "needs_info"):
            assert (folder / "letter.pdf").stat().st_size > 0
            assert (folder / "packet.pdf").stat().st_size > 0
        else:
            assert [p.name for p in folder.iterdir()] == ["summary.json"]

    async def prefect_records() -> str:
        async with get_client() as client:
            run = await client.read_flow_run(state.state_details.flow_run_id)
            logs = await client.read_logs()
            artifacts = await client.read_artifacts()
            return json.dumps(
                {
                    "parameters": run.parameters,
                    "logs": [log.message for log in logs],
                    "artifacts": [a.data for a in artifacts],
                },
                default=str,
            )

    stored = asyncio.run(prefect_records())
    assert set(json.loads(stored)["parameters"]) == {"paths", "out_dir"}
    assert 100.0 in json.loads(stored)["artifacts"]  # the run's progress artifact, complete
    assert "MS-1001" in stored  # case IDs are what Prefect sees
    leaked = [s for s in _phi_strings() if s in stored]
    assert leaked == []


def test_nightly_flow_run(harness, tmp_path: Path, monkeypatch) -> None:
    import shutil

    from prefect.client.orchestration import get_client

    import flows.nightly as nightly_flow
    from conftest import ATTACHMENTS, FIXTURES

    home = tmp_path / "home"
    (home / "intake").mkdir(parents=True)
    shutil.copytree(ATTACHMENTS, home / "attachments")
    for path in sorted(CASES.iterdir())[:5]:
        shutil.copy(path, home / "intake" / path.name)
    shutil.copy(INVALID / "bad-npi-check-digit.yaml", home / "intake")
    (home / "responses").mkdir()
    shutil.copy(FIXTURES / "responses" / "malformed" / "garbage.json", home / "responses")
    monkeypatch.setenv("PRIORAUTH_HOME", str(home))
    monkeypatch.setenv("PRIORAUTH_WORKERS", "2")

    state = nightly_flow.nightly_run(return_state=True)
    assert state.is_completed()
    summary = state.result()
    assert summary["by_status"] == {"ready": 4, "needs_info": 1}  # CIDP-2010 lacks its NCS report
    assert summary["needs_info"] == ["CIDP-2010"]
    assert summary["quarantined"] == 1
    assert summary["set_aside"]["payer file: unreadable"] == 1  # every kind counted
    assert (home / "quarantine" / "garbage.json.reason.txt").exists()
    assert (home / "priorauth.sqlite3").exists()
    assert len(list((home / "letters").glob("*/packet.pdf"))) == 5

    async def records() -> str:
        async with get_client() as client:
            run = await client.read_flow_run(state.state_details.flow_run_id)
            artifacts = await client.read_artifacts()
            logs = await client.read_logs()
            return json.dumps(
                {
                    "parameters": run.parameters,
                    "artifacts": [a.data for a in artifacts if a.key == "nightly-summary"],
                    "progress": [
                        (a.data, a.description)
                        for a in artifacts
                        if a.type == "progress" and a.flow_run_id == run.id
                    ],
                    "logs": [log.message for log in logs],
                },
                default=str,
            )

    stored = asyncio.run(records())
    assert json.loads(stored)["parameters"] == {}
    # the letters step's progress artifact, complete
    assert json.loads(stored)["progress"] == [[100.0, "Nightly letters: 6 of 6 new cases"]]
    assert "new cases" in stored
    assert [s for s in _phi_strings() if s in stored] == []


def test_cli_nightly_on_the_fixtures_then_a_denial_emails_once(
    harness, tmp_path: Path, monkeypatch
) -> None:
    """The issue's 'done when', through the commands a coordinator types."""
    from click.testing import CliRunner

    from conftest import FIXTURES
    from priorauth.cli import main
    from sinks import smtp_sink

    home = tmp_path / "var"
    monkeypatch.setenv("PRIORAUTH_HOME", str(home))
    runner = CliRunner()

    def cli(*args: str) -> str:
        result = runner.invoke(main, list(args), catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return result.output

    with smtp_sink() as smtp:
        monkeypatch.setenv("PRIORAUTH_NOTIFY_URLS", smtp.apprise_url())
        cli("intake", str(CASES))
        cli("nightly")
        cases = json.loads(cli("cases", "--json"))
        assert len(cases) == len(list(CASES.glob("*.*")))
        by_status = {c["case_id"]: c["status"] for c in cases}
        needs_info = {k for k, v in by_status.items() if v == "needs_info"}
        assert needs_info == {"CIDP-2010", "MG-5010", "MS-1010", "MS-1011", "PID-3001", "PID-3012"}
        assert set(by_status.values()) == {"ready", "needs_info"}
        cli("submit", "MS-1004", "--method", "fax", "--reference", "FAX-1")
        (home / "responses" / "denied.x12").write_bytes(
            (FIXTURES / "responses" / "ms-1004-denied.x12").read_bytes()
        )
        cli("nightly")
        cli("nightly")
        assert len(smtp.messages) == 1
        view = json.loads(cli("status", "MS-1004", "--json"))
        assert view["status"] == "denied"
        assert [h["to"] for h in view["history"]] == ["draft", "ready", "submitted", "denied"]
        assert view["notifications"][0]["state"] == "sent"
        assert "denied" in cli("status", "MS-1004")
        # A denial that came by mail, recorded later: its window runs from the letter's date.
        cli("submit", "MS-1001", "--method", "fax")
        cli("status", "MS-1001", "denied", "--reason-code", "STEP_THERAPY_NOT_MET",
            "--decided-on", "2026-11-02")  # fmt: skip
        assert len(smtp.messages) == 2 and "Denied on 2026-11-02" in smtp.messages[1].text
        view = json.loads(cli("status", "MS-1001", "--json"))
        assert view["appeal_deadline"] in smtp.messages[1].text
        assert view["appeal_deadline"] < "2027-05-02"  # 180 days or fewer from 2026-11-02


CANARY = {
    "first": "Zebulon",
    "last": "Quixotecanary",
    "dob": "1977-07-07",
    "member": "CANARYMEMBER7777",
}


def test_phi_canary_stays_where_it_belongs(harness, tmp_path: Path, monkeypatch, caplog) -> None:
    """A patient with unique identifiers goes through intake, letters (a real Prefect flow run),
    submission, a denial, e-mail and webhook notices, and a portal download. Afterwards none of
    the identifiers is found outside the case file, the letter and the store's case row."""
    import logging
    import re
    import shutil

    from fastapi.testclient import TestClient
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_DATABASE_CONNECTION_URL
    from pypdf import PdfReader
    from sqlalchemy import select

    import flows.nightly as nightly_flow
    from conftest import ATTACHMENTS, BASE_CASE
    from priorauth import accounts
    from priorauth.settings import load_settings
    from priorauth.store import CaseRow, Store
    from priorauth.web.app import create_app
    from sinks import http_sink, smtp_sink

    caplog.set_level(logging.DEBUG)
    home = tmp_path / "home"
    (home / "intake").mkdir(parents=True)
    shutil.copytree(ATTACHMENTS, home / "attachments")
    data = yaml.safe_load(BASE_CASE.read_text(encoding="utf-8"))
    data["case_id"] = "CANARY-1"
    data["patient"].update(
        first_name=CANARY["first"], last_name=CANARY["last"], date_of_birth=CANARY["dob"]
    )
    data["coverage"]["member_id"] = CANARY["member"]
    (home / "intake" / "canary.yaml").write_text(yaml.safe_dump(data, allow_unicode=True))
    denial = {
        "responses": [
            {
                "case_id": "CANARY-1",
                "decision": "denied",
                "reason_code": "EXPERIMENTAL_INVESTIGATIONAL",
                "reason_text": "Investigational for this diagnosis",
            }
        ]
    }
    monkeypatch.setenv("PRIORAUTH_HOME", str(home))
    monkeypatch.setenv("PRIORAUTH_WORKERS", "1")
    with smtp_sink() as smtp, http_sink() as hook:
        monkeypatch.setenv("PRIORAUTH_NOTIFY_URLS", f"{smtp.apprise_url()},{hook.apprise_url()}")
        assert nightly_flow.nightly_run(return_state=True).is_completed()
        settings = load_settings()
        store = Store(settings.db_url)
        with store.session() as session:
            from priorauth.catalog import load_catalog
            from priorauth.tracking import Actor, submit

            submit(
                session,
                "CANARY-1",
                method="fax",
                reference="F-1",
                now=datetime.now(UTC),
                catalog=load_catalog(settings.reference_dir),
                actor=Actor("jdoe", "coordinator"),
            )
            accounts.add_user(
                session, "pharm", "correct horse battery", "pharmacist", datetime.now(UTC)
            )
        (home / "responses" / "denial.json").write_text(json.dumps(denial))
        assert nightly_flow.nightly_run(return_state=True).is_completed()
        assert len(smtp.messages) == 1 and len(hook.requests) == 1

        portal = TestClient(create_app(settings))
        form = re.search(r'name="login_token" value="([^"]+)"', portal.get("/login").text)
        portal.post(
            "/login",
            data={"username": "pharm", "password": "correct horse battery", "login_token": form[1]},
        )
        case_page = portal.get("/cases/CANARY-1").text
        assert CANARY["last"] in case_page  # the one page where it belongs
        ids = re.findall(r'href="/documents/(\d+)"', case_page)
        downloads = [portal.get(f"/documents/{i}") for i in ids]
        assert all(r.status_code == 200 for r in downloads)
        portal.app.state.store.dispose()

    async def denial_events() -> list:
        from prefect.events.filters import EventFilter, EventNameFilter, EventResourceFilter

        async with get_client() as client:
            for _ in range(40):  # the server stores events asynchronously
                page = await client.read_events(
                    # other tests in this module share the server and emit their own denials
                    filter=EventFilter(
                        event=EventNameFilter(name=["priorauth.case.denied"]),
                        resource=EventResourceFilter(id=["priorauth.case.CANARY-1"]),
                    ),
                    limit=50,
                )
                if page.events:
                    return page.events
                await asyncio.sleep(0.25)
        return []

    events = asyncio.run(denial_events())
    assert [e.resource.id for e in events] == ["priorauth.case.CANARY-1"]
    assert events[0].payload["reason_code"] == "EXPERIMENTAL_INVESTIGATIONAL"

    letter = downloads[0].content
    assert CANARY["last"] in " ".join(p.extract_text() for p in PdfReader(io_bytes(letter)).pages)

    needles = [CANARY["first"], CANARY["last"], CANARY["member"], CANARY["dob"], "07/07/1977"]
    places: dict[str, str] = {
        "smtp": "\n".join(m.raw.decode("utf-8", "replace") for m in smtp.messages),
        "webhook": "\n".join(r.body.decode("utf-8", "replace") for r in hook.requests),
        "python logs": "\n".join(r.getMessage() for r in caplog.records),
        "pdf metadata": "\n".join(str(PdfReader(io_bytes(r.content)).metadata) for r in downloads),
        "download names": "\n".join(r.headers["content-disposition"] for r in downloads),
    }
    # Every table of our store except the case row itself.
    with store.session() as session:
        for table in CaseRow.metadata.sorted_tables:
            if table.name in ("cases", "users", "sessions"):
                continue
            places[f"store.{table.name}"] = repr(session.execute(select(table)).all())
        row = session.get(CaseRow, "CANARY-1")
        places["store.cases (other columns)"] = repr(
            {
                k: v
                for k, v in vars(row).items()
                if k not in ("patient_name", "date_of_birth", "member_id", "_sa_instance_state")
            }
        )
    store.dispose()
    # Prefect's own database (flow runs, parameters, logs, artifacts, events).
    prefect_db = PREFECT_API_DATABASE_CONNECTION_URL.value().split("///", 1)[-1]
    db_files = [Path(prefect_db), Path(prefect_db + "-wal")]
    places["prefect database"] = "".join(
        p.read_bytes().decode("utf-8", "replace") for p in db_files if p.exists()
    )
    assert "CANARY-1" in places["prefect database"]  # we are reading the right database
    for path in (home / "letters").rglob("summary.json"):
        places[f"summary {path.parent.name}"] = path.read_text(encoding="utf-8")
    leaks = {where: [n for n in needles if n in text] for where, text in places.items()}
    assert {k: v for k, v in leaks.items() if v} == {}


def io_bytes(data: bytes):
    import io

    return io.BytesIO(data)
