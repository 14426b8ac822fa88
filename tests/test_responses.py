"""Payer response files: every fixture reads to the expected records, malformed files fail with a
readable reason, nothing but ResponseFileError ever escapes, and dedup keys identify a file."""

from __future__ import annotations

import dataclasses
import json
import shutil
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import FIXTURES, ROOT
from priorauth.errors import ReferenceDataError
from priorauth.responses import (
    MAX_RESPONSE_FILE_BYTES,
    UNSPECIFIED,
    PayerResponse,
    ResponseFileError,
    load_denial_reasons,
    our_reason_code,
    parse_response_file,
)
from priorauth.statuses import Status

RESPONSES = FIXTURES / "responses"
MALFORMED = RESPONSES / "malformed"
D = date.fromisoformat

# DOMAIN.md §9 plus the documented default.
OUR_CODES = {
    "MISSING_DOCUMENTATION",
    "STEP_THERAPY_NOT_MET",
    "NOT_MEDICALLY_NECESSARY",
    "EXPERIMENTAL_INVESTIGATIONAL",
    "DIAGNOSIS_CODE_ISSUE",
    "DOSE_EXCEEDS_POLICY",
    "NON_PREFERRED_PRODUCT",
    "SITE_OF_CARE",
    "PRESCRIBER_NOT_SPECIALIST",
    "NO_RESPONSE_DOCUMENTED",
    "ADMINISTRATIVE",
    UNSPECIFIED,
}


def rec(**fields: Any) -> dict[str, Any]:
    """An expected record: every field not given must be empty (None, False or ())."""
    base: dict[str, Any] = {
        name: None
        for name in PayerResponse.__dataclass_fields__
        if name not in {"source", "index", "format", "dedup_key"}
    }
    base.update(kind="decision", on_appeal=False, rejection_errors=())
    base.update(fields)
    return base


def actual(response: PayerResponse) -> dict[str, Any]:
    data = dataclasses.asdict(response)
    for name in ("source", "index", "format", "dedup_key"):
        data.pop(name)
    return data


# Expected outcomes live here, not in the inputs (STYLE.md). Keys: file name → (format, records).
EXPECTED: dict[str, tuple[str, list[dict[str, Any]]]] = {
    "ms-1001-approved.x12": (
        "x12-278",
        [
            rec(
                case_id="MS-1001",
                payer_reference="SHP-UM-2026-0091734",
                member_id="SHP448812301",
                hcpcs="J1459",
                service_start=D("2026-12-01"),
                service_end=D("2027-05-29"),
                action_code="A1",
                status=Status.APPROVED,
                certification_number="SHP26A0091734",
                authorized_start=D("2026-12-01"),
                authorized_end=D("2027-05-29"),
                authorized_units=2100,
                decision_date=D("2026-12-03"),
            )
        ],
    ),
    "ms-1004-denied.x12": (
        "x12-278",
        [
            rec(
                case_id="MS-1004",
                payer_reference="SHP-UM-2026-0092210",
                member_id="SHP771204588",
                hcpcs="J1561",
                service_start=D("2026-11-23"),
                service_end=D("2026-12-22"),
                action_code="A3",
                status=Status.DENIED,
                payer_reason_code="0T",
                reason_code="EXPERIMENTAL_INVESTIGATIONAL",
                reason_text=(
                    "Immune globulin for relapsing multiple sclerosis is experimental and "
                    "investigational under Summit policy RX-IG-014. Appeal rights and the "
                    "peer-to-peer line are in the letter mailed to the prescriber."
                ),
                certification_number="SHP26D0092210",
                decision_date=D("2026-11-24"),
            )
        ],
    ),
    "ms-1002-partial.x12": (
        "x12-278",
        [
            rec(
                case_id="MS-1002",
                payer_reference="BSX-PA-2026-440871",
                member_id="BSX902217764",
                hcpcs="J1569",
                service_start=D("2026-12-01"),
                service_end=D("2027-05-29"),
                action_code="A2",
                status=Status.PARTIALLY_APPROVED,
                payer_reason_code="10",
                reason_code="DOSE_EXCEEDS_POLICY",
                reason_text=(
                    "Certified 3 courses (90 days). Renewal requires relapse count and EDSS since "
                    "the first infusion."
                ),
                certification_number="BSX26P0440871",
                authorized_start=D("2026-12-01"),  # DTP*007, not the requested DTP*472 range
                authorized_end=D("2027-02-28"),  # DTP*036
                authorized_units=174,
                decision_date=D("2026-12-04"),  # DTP*102 wins over BHT04 (2026-12-05)
            )
        ],
    ),
    "ms-1003-pended.edi": (
        "x12-278",
        [
            rec(
                case_id="MS-1003",
                payer_reference="RBM-PA-55102",
                member_id="KM48213T",
                service_start=D("2026-12-14"),
                service_end=D("2027-06-11"),
                action_code="A4",
                status=Status.INFO_REQUESTED,  # A4 with 0U + PWK: an information request
                payer_reason_code="0U",
                reason_text=(
                    "Fax the MRI report of 2026-10-24 and the neurology note documenting each DMT "
                    "failure to 518-555-0188 within 14 days."
                ),
                certification_number="RBM-PEND-55102",
                decision_date=D("2026-12-15"),
            )
        ],
    ),
    "ms-1005-contact-payer.278": (
        "x12-278",
        [
            rec(
                case_id="MS-1005",
                member_id="LKD5530917",
                hcpcs="J1568",
                service_start=D("2026-12-07"),
                service_end=D("2027-06-04"),
                action_code="CT",
                status=Status.INFO_REQUESTED,
                reason_text=(
                    "Part B versus Part D coverage cannot be decided electronically. Call "
                    "414-555-0160, option 3."
                ),
                decision_date=D("2026-12-08"),
            )
        ],
    ),
    "evergreen-batch-20261211.x12": (
        "x12-278",
        [
            rec(
                case_id="CIDP-2002",
                payer_reference="EVM-UM-26-118802",
                member_id="EVM2204418721",
                hcpcs="J1459",
                service_start=D("2026-12-10"),
                service_end=D("2027-06-07"),
                action_code="A1",
                status=Status.APPROVED,
                certification_number="EVM26A118802",
                authorized_start=D("2026-12-10"),
                authorized_end=D("2027-06-07"),
                authorized_units=1620,
                decision_date=D("2026-12-11"),
            ),
            rec(
                case_id="CIDP-2002",
                payer_reference="EVM-UM-26-118802",
                member_id="EVM2204418721",
                hcpcs="96366",
                service_start=D("2026-12-10"),
                service_end=D("2027-06-07"),
                action_code="A3",
                status=Status.DENIED,
                payer_reason_code="10",
                reason_code="DOSE_EXCEEDS_POLICY",
                reason_text="Additional infusion hours beyond 4 per session are not certified.",
                certification_number="EVM26D118803",
                decision_date=D("2026-12-11"),
            ),
            rec(
                case_id="ITP-4001",
                member_id="EVM3390018245",
                hcpcs="J1568",
                service_start=D("2026-11-19"),
                service_end=D("2026-12-18"),
                action_code="A4",
                status=Status.PENDING,  # 0V requires medical review: no information request
                payer_reason_code="0V",
                certification_number="EVM-PEND-330018",
                decision_date=D("2026-12-11"),
            ),
            rec(
                case_id="MS-1006",
                payer_reference="EVM-APL-26-0457",
                member_id="EVM1027733590",
                hcpcs="J1576",
                service_start=D("2026-12-03"),
                service_end=D("2027-05-31"),
                action_code="A1",
                status=Status.APPEAL_APPROVED,  # UM02 = 2, appeal (standard)
                on_appeal=True,
                reason_text="Reconsideration decision - the denial of 2026-11-27 is overturned.",
                certification_number="EVM26A119940",
                authorized_start=D("2026-12-03"),
                authorized_end=D("2027-05-31"),
                authorized_units=343,
                decision_date=D("2026-12-10"),
            ),
        ],
    ),
    "ms-1007-rejected.x12": (
        "x12-278",
        [
            rec(
                kind="rejection",
                case_id="MS-1007",
                member_id="BSX600481225",
                hcpcs="J1569",
                service_start=D("2026-11-23"),
                service_end=D("2026-12-22"),
                decision_date=D("2026-11-23"),
                rejection_errors=(
                    ("75", "subscriber/insured not found; please correct and resubmit"),
                    ("AG", "invalid/missing procedure code(s); please correct and resubmit"),
                ),
            )
        ],
    ),
    "pid-3001-payer-reference-only.x12": (
        "x12-278",
        [
            rec(
                payer_reference="BSX-PA-2026-448120",  # REF*NT; there is no TRN at all
                member_id="BSX118840093",
                hcpcs="J1569",
                service_start=D("2026-12-02"),
                service_end=D("2027-05-30"),
                action_code="A1",
                status=Status.APPROVED,
                certification_number="BSX26A0448120",
                authorized_start=D("2026-12-02"),
                authorized_end=D("2027-05-30"),
                authorized_units=266,
                decision_date=D("2026-12-04"),
            )
        ],
    ),
    "pid-3002-member-hcpcs-dates.x12": (
        "x12-278",
        [
            rec(
                member_id="MH20931745",
                hcpcs="J1459",
                service_start=D("2026-12-18"),
                service_end=D("2027-12-17"),
                action_code="A3",
                status=Status.DENIED,
                payer_reason_code="SOC",  # a payer text code in HCR03
                reason_code="SITE_OF_CARE",
                reason_text=(
                    "Hospital outpatient infusion is not approved for this member; home infusion "
                    "with nursing support is the covered site of care."
                ),
                certification_number="RBM-D-77120",
                decision_date=D("2026-12-19"),
            )
        ],
    ),
    "mg-5001-cancelled.txt": (
        "x12-278",
        [
            rec(
                case_id="MG-5001",
                member_id="TC58830126",
                hcpcs="J1459",
                service_start=D("2026-11-23"),
                service_end=D("2026-12-22"),
                action_code="C",
                status=Status.WITHDRAWN,
                reason_text="Cancelled at the prescriber's request: plasma exchange started instead.",
                certification_number="RBM-C-66001",
                decision_date=D("2026-11-24"),
            )
        ],
    ),
    "summit-portal-export.json": (
        "json",
        [
            rec(
                case_id="CIDP-2001",
                payer_reference="SHP-UM-2026-0093001",
                member_id="SHP300918852",
                hcpcs="J1561",
                service_start=D("2026-11-30"),
                service_end=D("2027-05-28"),
                status=Status.NOT_REQUIRED,
                reason_text=(
                    "No prior authorization is required for immune globulin in CIDP under this "
                    "plan's medical benefit."
                ),
                decision_date=D("2026-12-01"),
            ),
            rec(
                case_id="MS-1004",
                payer_reference="SHP-UM-2026-0092210",
                member_id="SHP771204588",
                hcpcs="J1561",
                service_start=D("2026-11-23"),
                service_end=D("2026-12-22"),
                action_code="A3",
                status=Status.APPEAL_DENIED,
                on_appeal=True,
                payer_reason_code="STEP_THERAPY_NOT_MET",
                reason_code="STEP_THERAPY_NOT_MET",  # our own code passes through
                reason_text=(
                    "First-level appeal upheld: plasma exchange must be tried before immune "
                    "globulin for a steroid-refractory relapse."
                ),
                certification_number="SHP26D0092210-A1",
                decision_date=D("2026-12-09"),
            ),
            rec(
                case_id="MS-1001",
                payer_reference="SHP-UM-2026-0091734",
                member_id="SHP448812301",
                hcpcs="J1459",
                service_start=D("2026-12-01"),
                service_end=D("2027-05-29"),
                action_code="A6",
                status=Status.PARTIALLY_APPROVED,
                payer_reason_code="0L",
                reason_code="DOSE_EXCEEDS_POLICY",
                reason_text=(
                    "Modified: certified at 1,800 units; the plan maximum for this regimen is 6 "
                    "courses in 180 days."
                ),
                certification_number="SHP26M0091734",
                authorized_start=D("2026-12-01"),
                authorized_end=D("2027-05-29"),
                authorized_units=1800,
                decision_date=D("2026-12-03"),
            ),
            rec(
                kind="rejection",
                case_id="CIDP-2001",
                member_id="SHP300918852",
                hcpcs="J1561",
                service_start=D("2026-11-30"),
                decision_date=D("2026-11-30"),
                rejection_errors=(
                    ("57", "Service end date is missing"),
                    ("AF", "invalid/missing diagnosis code(s)"),
                ),
            ),
        ],
    ),
    "bluestone-fax-log.csv": (
        "csv",
        [
            rec(
                case_id="MS-1002",
                payer_reference="BSX-PA-2026-440871",
                member_id="BSX902217764",
                hcpcs="J1569",
                service_start=D("2026-12-01"),
                service_end=D("2027-05-29"),
                status=Status.APPEAL_APPROVED,
                on_appeal=True,
                reason_text="Appeal approved in full: 7 courses, 406 units.",
                certification_number="BSX26A0440871",
                authorized_start=D("2026-12-01"),
                authorized_end=D("2027-05-29"),
                authorized_units=406,
                decision_date=D("2026-12-18"),
            ),
            rec(
                case_id="PID-3001",
                payer_reference="BSX-PA-2026-448120",
                member_id="BSX118840093",
                hcpcs="J1569",
                service_start=D("2026-12-02"),
                service_end=D("2027-05-30"),
                status=Status.INFO_REQUESTED,
                payer_reason_code="INFO",
                reason_text=(
                    "Send IgG trough levels and the vaccine titer report, by fax to 614-555-0177."
                ),
                decision_date=D("2026-12-03"),
            ),
            rec(
                case_id="MS-1007",
                payer_reference="BSX-PA-2026-451006",
                member_id="BSX600481225",
                hcpcs="J1569",
                service_start=D("2026-11-23"),
                service_end=D("2026-12-22"),
                action_code="A3",
                status=Status.DENIED,
                payer_reason_code="NMN",
                reason_code="NOT_MEDICALLY_NECESSARY",
                reason_text=(
                    "Medical necessity not established: no trial of plasma exchange, and MS is "
                    "not a covered indication."
                ),
                certification_number="BSX26D0451006",
                decision_date=D("2026-11-24"),
            ),
            rec(
                kind="rejection",
                case_id="MS-1002",
                member_id="BSX902217764",
                hcpcs="J1569",
                service_start=D("2026-12-01"),
                decision_date=D("2026-11-28"),
                rejection_errors=(
                    ("72", "member ID not on file"),
                    ("73", "invalid/missing subscriber/insured name"),
                ),
            ),
        ],
    ),
}

# Malformed files: the reason each must give (a substring of the message).
MALFORMED_REASON = {
    "not-x12.x12": "does not start with an ISA segment",
    "truncated-isa.x12": "the ISA segment is cut short",
    "truncated-body.edi": "transaction 0002 has no SE trailer: truncated file",
    "wrong-st01.x12": "transaction 0001 is a 270 (ST01), not a 278",
    "garbage.json": "not valid JSON (line 3",
    "wrong-fields.json": "responses[1].decision: must be one of 'approved'",
    "missing-header.csv": "the first row is not a header row",
}


def parse(path: Path) -> list[PayerResponse]:
    return parse_response_file(path)


def test_every_fixture_has_an_expectation_and_a_readme_line() -> None:
    files = {p.name for p in RESPONSES.iterdir() if p.is_file() and p.name != "README.md"}
    assert files == set(EXPECTED)
    assert {p.name for p in MALFORMED.iterdir()} == set(MALFORMED_REASON)
    readme = (RESPONSES / "README.md").read_text(encoding="utf-8")
    for name in [*EXPECTED, *MALFORMED_REASON]:
        assert f"`{name}`" in readme, f"{name} needs a line in fixtures/responses/README.md"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_fixture_parses_to_the_expected_records(name: str) -> None:
    fmt, expected = EXPECTED[name]
    responses = parse(RESPONSES / name)
    assert [actual(r) for r in responses] == expected
    assert [r.index for r in responses] == list(range(len(expected)))
    assert {r.source for r in responses} == {name}
    assert {r.format for r in responses} == {fmt}


def test_x12_uses_the_delimiters_the_isa_declares() -> None:
    text = (RESPONSES / "mg-5001-cancelled.txt").read_text(encoding="utf-8")
    assert text.startswith("ISA|") and "HC>J1459" in text  # | elements, > sub-elements, CRLF
    assert parse(RESPONSES / "mg-5001-cancelled.txt")[0].hcpcs == "J1459"


def test_rejections_are_errors_for_the_coordinator_never_denials() -> None:
    every = [r for name in EXPECTED for r in parse(RESPONSES / name)]
    rejections = [r for r in every if r.kind == "rejection"]
    assert len(rejections) == 3
    for r in rejections:
        assert r.status is None and r.action_code is None and r.reason_code is None
        assert r.rejection_errors and all(code and text for code, text in r.rejection_errors)
        assert r.authorized_units is None and r.certification_number is None
    decisions = [r for r in every if r.kind == "decision"]
    assert all(r.status is not None and r.rejection_errors == () for r in decisions)


def test_reason_codes_only_on_adverse_decisions() -> None:
    for name in EXPECTED:
        for r in parse(RESPONSES / name):
            adverse = r.status in {Status.DENIED, Status.PARTIALLY_APPROVED, Status.APPEAL_DENIED}
            assert (r.reason_code is not None) == adverse, (name, r.index)
            assert r.reason_code is None or r.reason_code in OUR_CODES


@pytest.mark.parametrize("name", sorted(MALFORMED_REASON))
def test_malformed_file_gives_a_readable_reason(name: str) -> None:
    with pytest.raises(ResponseFileError) as info:
        parse(MALFORMED / name)
    message = str(info.value)
    assert message.startswith(f"{name}: ")
    assert MALFORMED_REASON[name] in message
    assert "\n" not in message and "Traceback" not in message
    for member_id in ("BSX902217764", "BSX118840093", "SHP448812301"):  # no PHI in reasons
        assert member_id not in message


def test_wrong_fields_json_reports_every_field_at_once() -> None:
    with pytest.raises(ResponseFileError) as info:
        parse(MALFORMED / "wrong-fields.json")
    assert str(info.value) == (
        "wrong-fields.json: responses[1].decision: must be one of 'approved', "
        "'partially_approved', 'denied', 'pending', 'info_requested', 'not_required' or "
        "'withdrawn'; responses[2].auth_no: is not a field of the response format (check the "
        "spelling); responses[3].authorized_start: must be a date written YYYY-MM-DD; "
        "responses[3].authorized_units: must be a whole number"
    )


# ---- the envelope and its checks, on variants of a good file --------------------------------

GOOD = (RESPONSES / "ms-1002-partial.x12").read_text(encoding="utf-8")


def write(tmp_path: Path, name: str, content: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(content, str):
        path.write_text(content, encoding="utf-8", newline="")
    else:
        path.write_bytes(content)
    return path


@pytest.mark.parametrize(
    ("old", "new", "reason"),
    [
        ("DTP*036*D8*20270228~\n", "", "SE01 says 24 segments; found 23"),
        ("IEA*1*000005102", "IEA*1*000005103", "IEA02 does not match the ISA13"),
        ("GE*1*5102", "GE*2*5102", "GE01 says 2 transactions; found 1"),
        ("BHT*0007*11*", "BHT*0007*13*", "is a 278 request (BHT02 13), not a response"),
        ("HCR*A2*BSX26P0440871*10~\nDTP*472", "HCR*ZZ*X~\nDTP*472", "HCR01 'ZZ' is not a 278"),
        ("DTP*036*D8*20270228", "DTP*036*D8*20270231", "DTP*036 is not a real calendar date"),
        ("DTP*007*D8*20261201", "DTP*007*DT*202612011200", "uses date format DT"),
        ("SV1*HC:J1569**UN*174", "SV1*HC:J1569**UN*17.5", "SV104 is not a whole number"),
        ("HL*5*4*SS*0", "HL*5*9*SS*0", "HL 5 names an unknown parent"),
        ("*00501*", "*00601*", "the ISA declares version '00601'"),
        ("IEA*1*000005102~\n", "", "no IEA trailer: truncated file"),
        ("IEA*1*000005102~\n", "IEA*1*000005102~\nGS*HI~\n", "segments follow the IEA"),
        ("~\nSE*24", "~\n\n~\nSE*24", "unterminated or empty segment: truncated file"),
        ("MSG*", "msg*", "segment 25 does not start with a segment ID"),
    ],
)
def test_x12_envelope_and_segment_checks(tmp_path: Path, old: str, new: str, reason: str) -> None:
    assert old in GOOD
    path = write(tmp_path, "variant.x12", GOOD.replace(old, new, 1))
    with pytest.raises(ResponseFileError, match=r"^variant\.x12: ") as info:
        parse(path)
    assert reason in str(info.value)


def test_event_without_decision_or_rejection_is_refused_not_skipped(tmp_path: Path) -> None:
    text = GOOD.replace("HCR*A2*BSX26P0440871*10~\n", "").replace("SE*24*", "SE*22*")
    with pytest.raises(ResponseFileError, match="service HL 5 has no HCR decision"):
        parse(write(tmp_path, "no-hcr.x12", text))


def test_service_level_rejection_leaves_other_services_decided(tmp_path: Path) -> None:
    text = (RESPONSES / "evergreen-batch-20261211.x12").read_text(encoding="utf-8")
    text = text.replace("SV1*HC:96366**UN*18~\n", "SV1*HC:96366**UN*18~\nAAA*N**AG*C~\n", 1)
    text = text.replace("SE*25*0001", "SE*26*0001")
    first, second = parse(write(tmp_path, "svc-aaa.x12", text))[:2]
    assert (first.kind, first.status, first.hcpcs) == ("decision", Status.APPROVED, "J1459")
    assert (second.kind, second.status, second.hcpcs) == ("rejection", None, "96366")
    assert second.rejection_errors == (
        ("AG", "invalid/missing procedure code(s); please correct and resubmit"),
    )


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("resp.pdf", b"%PDF-1.7", "not a payer response file type"),
        ("empty.x12", b"  \n", "the file is empty"),
        ("latin1.csv", "case_id,decision\nMS-1001,approv\xe9\n".encode("latin-1"), "not UTF-8"),
        ("list.json", b'[{"case_id": "MS-1001"}]', 'an object with a "responses" list'),
        ("none.json", b'{"responses": []}', "responses: must not be empty"),
        ("deep.json", b"[" * 100_000, "not valid JSON"),
        (
            "both.json",
            b'{"responses": [{"case_id": "MS-1001", "decision": "approved", "action_code": "A1"}]}',
            "responses[0]: give decision or action_code, not both",
        ),
        (
            "neither.json",
            b'{"responses": [{"case_id": "MS-1001"}]}',
            "responses[0]: needs a decision or an action_code",
        ),
        (
            "mixed.json",
            b'{"responses": [{"decision": "denied", "rejection_errors": [{"code": "72"}]}]}',
            "a rejection (rejection_errors) is not a decision",
        ),
        (
            "backwards.json",
            b'{"responses": [{"decision": "approved", "authorized_start": "2027-01-01", '
            b'"authorized_end": "2026-01-01"}]}',
            "authorized_end is before authorized_start",
        ),
        ("cols.csv", b"case_id,decison\nMS-1001,approved\n", "unknown column(s) 'decison'"),
        ("nodecision.csv", b"case_id,hcpcs\nMS-1001,J1459\n", "needs a decision, action_code"),
        ("headeronly.csv", b"case_id,decision\n", "a header row but no responses"),
        ("wide.csv", b"case_id,decision\nMS-1001,approved,extra\n", "row 2: more cells"),
        ("badrow.csv", b"case_id,decision\n\nMS-1001,maybe\n", "row 3, column decision"),
        ("hcpcs.csv", b"case_id,decision,hcpcs\nMS-1001,approved,J14\n", "5-character HCPCS"),
    ],
)
def test_bad_files_raise_response_file_error(
    tmp_path: Path, name: str, content: bytes, reason: str
) -> None:
    with pytest.raises(ResponseFileError) as info:
        parse(write(tmp_path, name, content))
    assert str(info.value).startswith(f"{name}: ")
    assert reason in str(info.value)


def test_too_big_and_unreadable_files(tmp_path: Path) -> None:
    big = write(tmp_path, "big.x12", b"ISA" + b" " * MAX_RESPONSE_FILE_BYTES)
    with pytest.raises(ResponseFileError, match=r"big\.x12: larger than 5,000,000 bytes"):
        parse(big)
    with pytest.raises(ResponseFileError, match=r"gone\.json: cannot read"):
        parse(tmp_path / "gone.json")


# ---- dedup keys -------------------------------------------------------------------------------


def test_dedup_key_is_stable_and_names_the_content_not_the_file(tmp_path: Path) -> None:
    source = RESPONSES / "evergreen-batch-20261211.x12"
    first = [r.dedup_key for r in parse(source)]
    assert first == [r.dedup_key for r in parse(source)]
    assert len(set(first)) == len(first) == 4
    digest, index = first[2].rsplit(":", 1)
    assert len(digest) == 64 and index == "2"
    renamed = tmp_path / "evergreen-resent.x12"
    shutil.copyfile(source, renamed)
    assert [r.dedup_key for r in parse(renamed)] == first  # re-dropped under a new name
    changed = write(tmp_path, "changed.x12", source.read_text().replace("*2300~", "*2301~", 1))
    assert not set(first) & {r.dedup_key for r in parse(changed)}


# ---- denial reasons -----------------------------------------------------------------------------


def test_denial_reasons_map_only_to_our_stable_codes() -> None:
    reasons = load_denial_reasons(ROOT / "reference")
    assert reasons.default == UNSPECIFIED
    assert set(reasons.values()) <= OUR_CODES
    assert reasons["0F"] == "NOT_MEDICALLY_NECESSARY" and reasons["0T"] == (
        "EXPERIMENTAL_INVESTIGATIONAL"
    )
    assert all(reasons[code] == code for code in OUR_CODES)  # our own codes pass through


def test_unknown_or_missing_reason_gets_the_default_never_a_guess() -> None:
    reasons = load_denial_reasons(ROOT / "reference")
    assert our_reason_code(Status.DENIED, "ZZ-NEW", reasons) == UNSPECIFIED
    assert our_reason_code(Status.DENIED, None, reasons) == UNSPECIFIED
    assert our_reason_code(Status.DENIED, " nmn ", reasons) == "NOT_MEDICALLY_NECESSARY"
    assert our_reason_code(Status.APPROVED, "0F", reasons) is None
    assert our_reason_code(Status.DENIED, "0F", {}) == UNSPECIFIED  # a plain dict works too


def test_parse_uses_the_reasons_it_is_given(tmp_path: Path) -> None:
    [response] = parse_response_file(
        RESPONSES / "ms-1004-denied.x12", reasons={"0T": "NOT_MEDICALLY_NECESSARY"}
    )
    assert response.reason_code == "NOT_MEDICALLY_NECESSARY"


def test_broken_denial_reasons_file_is_a_reference_data_error(tmp_path: Path) -> None:
    data = yaml.safe_load((ROOT / "reference" / "denial_reasons.yaml").read_text())
    (tmp_path / "denial_reasons.yaml").write_text(
        "default: UNSPECIFIED\ncodes: [UNSPECIFIED, ADMINISTRATIVE]\nx12_hcr03:\n  07: ADMINISTRATIVE\n"
    )
    with pytest.raises(ReferenceDataError, match="must be quoted"):
        load_denial_reasons(tmp_path)
    data["x12_hcr03"]["0F"] = "NOT_A_CODE"
    (tmp_path / "denial_reasons.yaml").write_text(yaml.safe_dump(data))
    with pytest.raises(ReferenceDataError, match="not one of `codes`"):
        load_denial_reasons(tmp_path)


# ---- properties: bad input only ever raises ResponseFileError -------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(["responses", "case_id", "decision", "action_code", "authorized_units"])
            | st.text(max_size=8),
            children,
            max_size=4,
        )
    ),
    max_leaves=20,
)
X12_SAMPLES = [p.read_bytes() for p in sorted(RESPONSES.glob("*")) if p.suffix in {".x12", ".txt"}]
SUFFIXES = [".x12", ".278", ".edi", ".txt", ".json", ".csv"]
PROPERTY = settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def _only_response_file_errors(path: Path) -> None:
    try:
        result = parse_response_file(path)
    except ResponseFileError as exc:
        assert str(exc).startswith(f"{path.name}: ")
    else:
        assert result and all(isinstance(r, PayerResponse) for r in result)


@PROPERTY
@given(data=st.binary(max_size=600), suffix=st.sampled_from(SUFFIXES))
def test_arbitrary_bytes_never_raise_anything_else(
    tmp_path: Path, data: bytes, suffix: str
) -> None:
    _only_response_file_errors(write(tmp_path, f"any{suffix}", data))


@PROPERTY
@given(value=json_values)
def test_arbitrary_json_never_raises_anything_else(tmp_path: Path, value: Any) -> None:
    wrapped = {"responses": [value]} if not isinstance(value, dict) else value
    for i, doc in enumerate((value, wrapped)):
        _only_response_file_errors(write(tmp_path, f"any{i}.json", json.dumps(doc)))


@PROPERTY
@given(
    sample=st.sampled_from(X12_SAMPLES),
    edits=st.lists(
        st.tuples(st.integers(min_value=0), st.binary(max_size=3), st.integers(0, 8)), max_size=4
    ),
)
def test_damaged_x12_never_raises_anything_else(
    tmp_path: Path, sample: bytes, edits: list[tuple[int, bytes, int]]
) -> None:
    data = bytearray(sample)
    for at, insert, cut in edits:
        at %= len(data) + 1
        data[at : at + cut] = insert
    _only_response_file_errors(write(tmp_path, "damaged.x12", bytes(data)))
