"""ICD-10-CM FY2026 billability and the NPI check digit."""

from __future__ import annotations

import pytest

from priorauth.codes import icd_problem, icd_title, is_billable, normalize_icd, npi_is_valid


@pytest.mark.parametrize(
    "code",
    [
        "G35.A",
        "G35.B0",
        "G35.B1",
        "G35.B2",
        "G35.C0",
        "G35.C1",
        "G35.C2",
        "G35.D",
        "G61.81",
        "D83.9",
        "D69.3",
        "G70.00",
        "G70.01",
        "Z33.1",
    ],
)
def test_billable_fy2026_codes(code: str) -> None:
    assert is_billable(code)
    assert icd_problem(code) is None
    assert icd_title(code)


def test_bare_g35_is_a_category_and_the_message_names_the_billable_codes() -> None:
    problem = icd_problem("G35")
    assert problem is not None
    assert "not a billable code" in problem
    for code in ["G35.A", "G35.B0", "G35.B1", "G35.B2", "G35.C0", "G35.C1", "G35.C2", "G35.D"]:
        assert code in problem


def test_unknown_code() -> None:
    assert "not an ICD-10-CM code" in (icd_problem("Q99.99") or "")


def test_dotless_codes_are_normalized() -> None:
    assert normalize_icd(" g35a ") == "G35.A"
    assert normalize_icd("G6181") == "G61.81"
    assert normalize_icd("D693") == "D69.3"


@pytest.mark.parametrize("npi", ["1234567893", "1538296470"])
def test_valid_npis(npi: str) -> None:
    assert npi_is_valid(npi)


@pytest.mark.parametrize("npi", ["1234567890", "123456789", "12345678931", "12345678X3", ""])
def test_invalid_npis(npi: str) -> None:
    assert not npi_is_valid(npi)


def test_every_single_digit_error_is_caught() -> None:
    # The Luhn check digit catches any single-digit substitution.
    good = "1234567893"
    for i in range(10):
        for d in "0123456789":
            if d != good[i]:
                assert not npi_is_valid(good[:i] + d + good[i + 1 :])
