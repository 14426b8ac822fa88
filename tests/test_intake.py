"""Case validation: every error at once, as field path + plain-English reason, no PHI echoed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import TODAY, make_case
from priorauth.domain import Case
from priorauth.errors import CaseFileError, CaseValidationError
from priorauth.intake import case_id_for, field_path, load_case, parse_case_file, validate_case


def errors_of(data: dict[str, Any], catalog, case_dir: Path | None = None) -> dict[str, str]:
    with pytest.raises(CaseValidationError) as info:
        validate_case(data, catalog=catalog, today=TODAY, case_dir=case_dir)
    return {e.field: e.message for e in info.value.errors}


def test_the_base_case_is_valid(catalog) -> None:
    case = validate_case(make_case(), catalog=catalog, today=TODAY)
    assert isinstance(case, Case)
    assert case.diagnoses[0].code == "G35.A"
    assert case.patient.weight.kg == 95


def test_every_error_is_reported_at_once(catalog) -> None:
    data = make_case(
        **{
            "diagnoses.0.code": "G35",
            "prescriber.npi": "1234567890",
            "request.product_id": "no-such-product",
            "coverage.payer_id": "no-such-payer",
            "patient.date_of_birth": ...,
        }
    )
    errors = errors_of(data, catalog)
    assert set(errors) == {
        "diagnoses[0].code",
        "prescriber.npi",
        "request.product_id",
        "coverage.payer_id",
        "patient.date_of_birth",
    }
    assert (
        "G35.A" in errors["diagnoses[0].code"]
        and "not a billable code" in errors["diagnoses[0].code"]
    )
    assert "check digit" in errors["prescriber.npi"]
    assert "privigen" in errors["request.product_id"]  # lists the known products
    assert errors["patient.date_of_birth"] == "is required"


@pytest.mark.parametrize(
    ("overrides", "field", "words"),
    [
        ({"diagnoses.0.code": "G35"}, "diagnoses[0].code", "use one of: G35.A"),
        ({"diagnoses.0.code": "G35.Z9"}, "diagnoses[0].code", "not an ICD-10-CM code"),
        ({"diagnoses.0.code": "g35a"}, None, None),  # dotless lower case is normalized, valid
        ({"prescriber.npi": "123456789"}, "prescriber.npi", "exactly 10 digits"),
        (
            {"patient.weight": {"value": 950, "unit": "kg"}},
            "patient.weight",
            "not a plausible weight",
        ),
        ({"patient.weight": {"value": 95, "unit": "stone"}}, "patient.weight.unit", "must be"),
        (
            {"patient.height": {"value": 165, "unit": "in"}},
            "patient.height",
            "not a plausible height",
        ),
        ({"patient.weight": {"value": 9.5, "unit": "kg"}}, "patient", "BMI"),
        ({"patient.date_of_birth": "2030-01-01"}, "patient.date_of_birth", "in the future"),
        ({"patient.date_of_birth": "1890-01-01"}, "patient.date_of_birth", "over 120 years"),
        ({"patient.date_of_birth": "14/03/1986"}, "patient.date_of_birth", "YYYY-MM-DD"),
        ({"prior_therapies.0.stop": "2016-01-01"}, "prior_therapies[0].stop", "is before start"),
        ({"patient.conditions": ["hyperprolinaemia"]}, "patient.conditions", "unknown condition"),
        ({"patient.height": {"value": 95, "unit": "cm"}}, "patient", "BMI"),
        ({"prior_therapies.0.start": ...}, "prior_therapies[0]", "needs the date"),
        ({"prior_therapies.0.outcome": "meh"}, "prior_therapies[0].outcome", "failure"),
        ({"clinical.relapses.0.date": "2027-03-01"}, "clinical.relapses[0].date", "in the future"),
        (
            {"diagnoses.0.diagnosed_on": "1970-01-01"},
            "diagnoses[0].diagnosed_on",
            "before the date of birth",
        ),
        ({"clinical_situation": ...}, "clinical_situation", "dmt_failure"),
        ({"clinical_situation": "bored"}, "clinical_situation", "not a situation of ms"),
        ({"indication": "gout"}, "indication", "unknown indication"),
        ({"case_id": "../../etc"}, "case_id", "must match pattern"),
        ({"request.g_per_kg_per_course": 0}, "request.g_per_kg_per_course", "greater than 0"),
        ({"request.days_per_course": 0}, "request.days_per_course", "greater than or equal to 1"),
        ({"coverage.group_number": 48810}, "coverage.group_number", "must be text"),
        ({"favourite_colour": "blue"}, "favourite_colour", "not a field of the case format"),
        ({"site_of_care.setting": "moon"}, "site_of_care.setting", "infusion_center"),
    ],
)
def test_one_error_each(catalog, overrides, field, words) -> None:
    data = make_case(**overrides)
    if field is None:
        validate_case(data, catalog=catalog, today=TODAY)
        return
    errors = errors_of(data, catalog)
    assert field in errors, errors
    assert words in errors[field]


def test_attachments_are_checked_relative_to_the_case_file(catalog, tmp_path: Path) -> None:
    case_dir = tmp_path / "cases"
    case_dir.mkdir()
    data = make_case(**{"attachments.0.path": "missing.pdf", "attachments.1.path": "notes.docx"})
    data["attachments"] += [
        {"title": "elsewhere", "kind": "other", "path": "../../../../etc/x.pdf"},
        {"title": "absolute", "kind": "other", "path": "/etc/x.pdf"},
    ]
    errors = errors_of(data, catalog, case_dir=case_dir)
    assert errors["attachments[0].path"] == "file not found: missing.pdf"
    assert errors["attachments[1].path"] == "must be a PDF file"
    assert "inside the case file's folder" in errors["attachments[2].path"]
    assert "inside the case file's folder" in errors["attachments[3].path"]


def test_messages_never_echo_patient_identifiers(catalog) -> None:
    data = make_case(
        **{
            "patient.date_of_birth": "2031-02-03",
            "coverage.member_id": "",
            "patient.first_name": "",
            "prescriber.npi": "12",
        }
    )
    text = json.dumps(errors_of(data, catalog))
    for secret in ["2031-02-03", "Whitfield", "SHP448812301"]:
        assert secret not in text


def test_field_paths() -> None:
    assert field_path(("prior_therapies", 1, "stop")) == "prior_therapies[1].stop"
    assert field_path(()) == "(case)"


@pytest.mark.parametrize(
    ("name", "content", "words"),
    [
        ("a.yaml", "case_id: [unclosed", "not valid YAML"),
        ("a.json", "{nope", "not valid JSON"),
        ("a.json", "[1, 2]", "expected a mapping"),
        ("a.txt", "case_id: X", "not a case file"),
    ],
)
def test_unreadable_files(tmp_path: Path, name: str, content: str, words: str) -> None:
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(CaseFileError, match=words):
        parse_case_file(path)


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("case_id: Zoë".encode("latin-1"))
    with pytest.raises(CaseFileError, match="not UTF-8"):
        parse_case_file(path)


def test_yaml_and_json_give_the_same_case(catalog, write_case) -> None:
    data = make_case()
    yaml_path = write_case(data)
    json_path = yaml_path.with_suffix(".json")
    json_path.write_text(json.dumps(data, default=str), encoding="utf-8")
    from_json = load_case(json_path, catalog=catalog, today=TODAY)
    assert from_json == load_case(yaml_path, catalog=catalog, today=TODAY)


def test_case_id_for_unreadable_files_is_safe(tmp_path: Path) -> None:
    assert case_id_for(tmp_path / "x.yaml", {"case_id": "MS-1"}) == "MS-1"
    assert case_id_for(tmp_path / "../evil name.yaml", {"case_id": "../x"}) == "file-evil_name"
    assert case_id_for(tmp_path / "ok.yaml", None) == "file-ok"


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(json_values)
def test_any_json_gives_a_case_or_field_errors(catalog, value) -> None:
    data = value if isinstance(value, dict) else {"case_id": value}
    try:
        validate_case(data, catalog=catalog, today=TODAY)
    except CaseValidationError as exc:
        assert exc.errors and all(e.field and e.message for e in exc.errors)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(["patient", "coverage", "prescriber", "request", "clinical", "site_of_care"]),
    json_values,
)
def test_any_section_value_gives_field_errors_not_crashes(catalog, section, value) -> None:
    data = make_case(**{section: value})
    try:
        validate_case(data, catalog=catalog, today=TODAY)
    except CaseValidationError as exc:
        assert all(e.field.startswith(section) or e.field == "(case)" for e in exc.errors)
