"""The fixture set itself: each invalid case fails on exactly the field it was written for, and
a batch mixing all of them with the valid cases finishes every valid one."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import CASES, INVALID
from priorauth.intake import find_case_files
from priorauth.pipeline import generate_case

# Expected outcomes live here, not in the inputs (STYLE.md).
EXPECTED_FIELD = {
    "bad-attachment-corrupt.yaml": "attachments[1].path",
    "bad-attachment-encrypted.yaml": "attachments[0].path",
    "bad-attachment-missing.yaml": "attachments[1].path",
    "bad-bmi-inches-as-cm.yaml": "patient",
    "bad-case-id.yaml": "case_id",
    "bad-future-date.yaml": "clinical.relapses[1].date",
    "bad-g35-category.yaml": "diagnoses[0].code",
    "bad-group-number-unquoted.yaml": "coverage.group_number",
    "bad-height-unit-mixup.yaml": "patient.height",
    "bad-missing-date-of-birth.yaml": "patient.date_of_birth",
    "bad-ms-without-situation.yaml": "clinical_situation",
    "bad-not-yaml.yaml": "(file)",
    "bad-npi-check-digit.yaml": "prescriber.npi",
    "bad-therapy-stop-before-start.yaml": "prior_therapies[2].stop",
    "bad-top-level-list.json": "(file)",
    "bad-unknown-payer.yaml": "coverage.payer_id",
    "bad-unknown-product.yaml": "request.product_id",
    "bad-weight-950-kg.yaml": "patient.weight",
    "bad-weight-text.json": "patient.weight.value",
}


def test_every_invalid_fixture_has_an_expectation() -> None:
    names = {p.name for p in find_case_files([INVALID])}
    assert len(names) >= 8
    assert names == set(EXPECTED_FIELD), "every invalid fixture needs an expected field here"


@pytest.mark.parametrize("name", sorted(EXPECTED_FIELD))
def test_invalid_fixture_fails_on_its_field(bench, tmp_path: Path, name: str) -> None:
    path = INVALID / name
    if not path.exists():
        pytest.fail(f"fixture {name} is missing")
    result = generate_case(path, bench=bench, out_dir=tmp_path)
    assert result.status == "invalid"
    fields = [e["field"] for e in result.errors]
    assert fields == [EXPECTED_FIELD[name]], result.errors
    assert all(e["message"] for e in result.errors)
    summary = json.loads((tmp_path / result.case_id / "summary.json").read_text())
    assert summary["status"] == "invalid" and summary["errors"] == result.errors


def test_mixed_batch_finishes_every_valid_case(bench, tmp_path: Path) -> None:
    valid = find_case_files([CASES])
    mixed = [p for pair in zip(find_case_files([INVALID]), valid, strict=False) for p in pair]
    mixed += valid[len(mixed) // 2 :]
    results = [generate_case(p, bench=bench, out_dir=tmp_path) for p in mixed]
    ready = {r.case_id for r in results if r.ok}
    assert len(ready) == len(valid)
    for case_id in ready:
        assert (tmp_path / case_id / "packet.pdf").exists()
