"""The `priorauth` command: letter (mixed batches), dose (same engine and JSON as summaries),
check, schema."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from conftest import CASES, INVALID, make_case
from priorauth.cli import main


def run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    return result.exit_code, result.output


def test_letter_batch_with_invalid_cases_finishes_the_valid_ones(
    tmp_path: Path, write_case
) -> None:
    good = CASES / "ms-dmt-failure-privigen.yaml"
    bad = write_case(make_case(**{"case_id": "BAD-1", "diagnoses.0.code": "G35"}), "bad.yaml")
    junk = tmp_path / "junk.yaml"
    junk.write_text("case_id: [unclosed")
    code, out = run(
        "letter", str(bad), str(good), str(junk), "--out", str(tmp_path / "o"), "--workers", "1"
    )
    assert code == 1
    assert "ready    MS-1001" in out
    assert "invalid  BAD-1" in out and "diagnoses[0].code" in out
    assert sorted(p.name for p in (tmp_path / "o" / "MS-1001").iterdir()) == [
        "letter.pdf",
        "packet.pdf",
        "summary.json",
    ]
    assert [p.name for p in (tmp_path / "o" / "BAD-1").iterdir()] == ["summary.json"]
    bad_summary = json.loads((tmp_path / "o" / "BAD-1" / "summary.json").read_text())
    assert bad_summary["status"] == "invalid"
    assert bad_summary["errors"][0]["field"] == "diagnoses[0].code"
    junk_summary = json.loads((tmp_path / "o" / "file-junk" / "summary.json").read_text())
    assert junk_summary["errors"][0]["message"].startswith("junk.yaml: not valid YAML")


def test_letter_all_valid_exits_zero_with_two_workers(tmp_path: Path) -> None:
    files = sorted(CASES.glob("*.yaml"))[:3]
    code, out = run("letter", *map(str, files), "--out", str(tmp_path), "--workers", "2")
    assert code == 0, out
    assert len(list(tmp_path.glob("*/packet.pdf"))) == 3


def test_dose_json_matches_the_letter_summary(tmp_path: Path) -> None:
    run(
        "letter",
        str(CASES / "ms-dmt-failure-privigen.yaml"),
        "--out",
        str(tmp_path),
        "--workers",
        "1",
    )
    summary = json.loads((tmp_path / "MS-1001" / "summary.json").read_text())
    code, out = run(
        "dose",
        "--product",
        "privigen",
        "--weight-kg",
        "95",
        "--height-cm",
        "165",
        "--sex",
        "F",
        "--g-per-kg",
        "2",
        "--days",
        "5",
        "--interval-days",
        "28",
        "--auth-days",
        "180",
        "--basis",
        "policy",
        "--json",
    )
    assert code == 0
    printed = json.loads(out)
    for key in ("product", "inputs", "dosing"):
        assert printed[key] == summary[key]


def test_dose_text() -> None:
    code, out = run(
        "dose",
        "--product",
        "gammagard-liquid",
        "--weight-kg",
        "40",
        "--height-cm",
        "165",
        "--sex",
        "M",
        "--g-per-kg",
        "1",
    )
    assert code == 0
    assert "dispensed 40.00 g (1 × 30 g + 1 × 10 g)" in out
    assert "actual body weight" in out


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--product", "nope"], "unknown product 'nope'"),
        (["--product", "privigen", "--weight-kg", "-3"], "must be a number above 0"),
        (["--product", "privigen", "--basis", "vibes"], "'vibes' is not one of"),
    ],
)
def test_dose_errors(args: list[str], words: str) -> None:
    base = {
        "--product": "privigen",
        "--weight-kg": "70",
        "--height-cm": "170",
        "--sex": "F",
        "--g-per-kg": "1",
    }
    for i in range(0, len(args), 2):
        base[args[i]] = args[i + 1]
    result = CliRunner().invoke(main, ["dose", *[x for kv in base.items() for x in kv]])
    assert result.exit_code == 2
    assert words in result.output


def test_check_lists_every_invalid_fixture() -> None:
    code, out = run("check", str(INVALID))
    assert code == 1
    lines = [line for line in out.splitlines() if line.startswith(("ok", "invalid"))]
    assert lines and all(
        line.startswith("invalid")
        or "attachment" in line
        or "encrypted" in line
        or "corrupt" in line
        for line in lines
    )


def test_schema_prints_json_schema() -> None:
    code, out = run("schema")
    assert code == 0
    schema = json.loads(out)
    assert schema["title"] == "Case"
    assert "patient" in schema["properties"]


def test_console_script_is_installed() -> None:
    exe = Path(sys.executable).parent / "priorauth"
    result = subprocess.run([str(exe), "--help"], capture_output=True, text=True, check=False)
    assert result.returncode == 0
    for command in ("letter", "dose", "check", "schema"):
        assert command in result.stdout


# ---- the payer criteria checklist ---------------------------------------------------------------

NCS = "ncs_report"


def ncs_case() -> dict:
    """A fixture case that meets its payer's criteria with a nerve conduction study attached."""
    import yaml

    for path in sorted(CASES.iterdir()):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        if any(a.get("kind") == NCS for a in data.get("attachments", [])):
            return data
    pytest.skip(f"no fixture case encloses an attachment of kind {NCS} yet")


def without_ncs(data: dict) -> dict:
    return {**data, "attachments": [a for a in data["attachments"] if a.get("kind") != NCS]}


def test_check_prints_the_checklist_and_the_document_request(write_case) -> None:
    data = ncs_case()
    complete = write_case(data, "complete.yaml")
    lacking = write_case(without_ncs(data), "lacking.yaml")
    code, out = run("check", str(complete), str(lacking))
    assert code == 0, out  # needs_info is valid: only invalid cases exit 1
    blocks = out.split(str(lacking))
    ok_part, needs_part = blocks[0], blocks[1]
    assert ok_part.splitlines()[0].startswith("ok ")
    assert "criteria SYN-" in ok_part and "effective 20" in ok_part
    assert "INSUFFICIENT" not in ok_part and "request:" not in ok_part
    assert ok_part.count(" met ") >= 2
    assert blocks[0].splitlines()[-1].startswith("needs_info")
    head = needs_part.splitlines()[1]
    assert head.strip().startswith("criteria SYN-") and head.endswith("INSUFFICIENT")
    requests = [line.strip() for line in needs_part.splitlines() if "request:" in line]
    assert any(f"no attachment of kind `{NCS}`" in line for line in requests), needs_part
    # Each insufficient item: its id, verdict and wording, then its request.
    lines = needs_part.splitlines()
    for i, line in enumerate(lines):
        if " INSUFFICIENT " in line:
            assert "request:" in lines[i + 1], line


def test_check_keeps_exit_1_for_invalid_cases_next_to_needs_info_ones(write_case) -> None:
    lacking = write_case(without_ncs(ncs_case()), "lacking.yaml")
    bad = write_case(make_case(**{"case_id": "BAD-1", "diagnoses.0.code": "G35"}), "bad.yaml")
    code, out = run("check", str(lacking), str(bad))
    assert code == 1
    assert f"needs_info {lacking}" in out and f"invalid    {bad}" in out


def test_letter_prints_needs_info_and_the_checklist(tmp_path: Path, write_case) -> None:
    data = ncs_case()
    lacking = write_case(without_ncs(data), "lacking.yaml")
    code, out = run("letter", str(lacking), "--out", str(tmp_path / "o"), "--workers", "1")
    assert code == 0, out
    case_id = data["case_id"]
    summary = json.loads((tmp_path / "o" / case_id / "summary.json").read_text())
    missing = [i["id"] for i in summary["criteria"]["items"] if i["verdict"] == "insufficient"]
    assert summary["status"] == "needs_info" and missing
    assert f"needs_info {case_id} (payer criteria insufficient: {', '.join(missing)};" in out
    assert f"no attachment of kind `{NCS}`" in out
    assert out.rstrip().splitlines()[-1].startswith("0 ready, 1 needs_info, 0 invalid")
    assert sorted(p.name for p in (tmp_path / "o" / case_id).iterdir()) == [
        "letter.pdf",
        "packet.pdf",
        "summary.json",
    ]
