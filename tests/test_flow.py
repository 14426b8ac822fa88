"""A real Prefect flow run of generate-letters on the fixtures, against a temporary Prefect server
(one per test session). Checks outputs, and that Prefect's own stores hold no patient data."""

from __future__ import annotations

import asyncio
import json
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
    assert summary["ready"] == len(cases)
    assert summary["invalid"] == 1
    for case in summary["cases"]:
        folder = out / case["case_id"]
        if case["status"] == "ready":
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
    assert summary["by_status"] == {"ready": 5}
    assert summary["quarantined"] == 1
    assert summary["responses"] == {"file set aside": 1}
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
                    "logs": [log.message for log in logs],
                },
                default=str,
            )

    stored = asyncio.run(records())
    assert json.loads(stored)["parameters"] == {}
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
        assert {c["status"] for c in cases} == {"ready"}
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
