"""Dosing (DOMAIN.md section 5): hand-worked examples, then invariants checked with hypothesis."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from decimal import Decimal
from functools import cache
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import DOSING_KEYS
from priorauth.catalog import Product, load_catalog
from priorauth.dosing import (
    IN_TO_CM,
    LB_TO_KG,
    Course,
    Dose,
    DoseRequest,
    DoseWarning,
    LoadingPhase,
    Regimen,
    VialCount,
    compute_dose,
    compute_regimen,
    format_g,
    format_kg,
    inches_to_cm,
    pounds_to_kg,
    round_to_vials,
)
from priorauth.errors import DosingError

D = Decimal
CATALOG = load_catalog(Path(__file__).parents[1] / "reference")
PRIVIGEN = CATALOG.product("privigen")
GAMMAGARD = CATALOG.product("gammagard-liquid")
GAMUNEX = CATALOG.product("gamunex-c")
OCTAGAM = CATALOG.product("octagam-10")

# DOMAIN.md worked example: F, 165 cm, 95 kg, Privigen, 2 g/kg over 5 days every 28 days, 180 days.
WORKED = DoseRequest(
    sex="F",
    height_cm=D(165),
    weight_kg=D(95),
    g_per_kg_per_course=D(2),
    days_per_course=5,
    interval_days=28,
    authorization_days=180,
)


def vials(*pairs: tuple[str | int, int]) -> tuple[VialCount, ...]:
    return tuple(VialCount(D(size), count) for size, count in pairs)


def codes(dose: Dose) -> set[str]:
    return {w.code for w in dose.warnings}


def close(x: Decimal, expected: str, tolerance: str = "0.000001") -> bool:
    return abs(x - D(expected)) < D(tolerance)


def synthetic(sizes: list[Decimal] | tuple[Decimal, ...], billing_unit_mg: int = 500) -> Product:
    return Product(
        id="synthetic",
        name="Synthetic IG",
        maker="Test",
        hcpcs="J9999",
        billing_unit_mg=billing_unit_mg,
        concentration_pct=D(10),
        vial_sizes_g=tuple(sizes),
        source="test fixture",
    )


# --- the worked example ---------------------------------------------------------------------


def test_worked_example_matches_domain_md() -> None:
    dose = compute_dose(WORKED, PRIVIGEN)

    assert dose.requested_basis == "policy"
    assert dose.weight_basis == "adjusted"
    assert dose.actual_weight_kg == D(95)
    # height_in = 165 / 2.54 = 64.9606...; IBW = 45.5 + 2.3 × 4.9606... = 56.9094...
    assert close(dose.ideal_weight_kg, "56.9094488")
    assert format_g(dose.ideal_weight_kg) == "56.91"
    assert format_kg(dose.ideal_weight_kg) == "56.9"
    # BMI = 95 / 1.65² = 34.894...
    assert close(dose.bmi, "34.8943985")
    assert format_kg(dose.bmi) == "34.9"
    # AdjBW = 56.9094 + 0.4 × 38.0906 = 72.1457
    assert close(dose.adjusted_weight_kg, "72.1456693")
    assert format_g(dose.adjusted_weight_kg) == "72.15"
    assert format_kg(dose.adjusted_weight_kg) == "72.1"
    assert dose.dosing_weight_kg == dose.adjusted_weight_kg
    # daily = 2 × 72.1457 / 5 = 28.858...
    assert close(dose.calculated_g_per_day, "28.8582677")
    assert format_g(dose.calculated_g_per_day) == "28.86"
    # 25 g is 13.4% below, 30 g is 3.9% above: 30 g = 20 + 10
    assert dose.dispensed_g_per_day == D(30)
    assert dose.vials_per_day == vials((20, 1), (10, 1))
    assert dose.dispensed_g_per_course == D(150)
    assert dose.billing_units_per_course == 300
    assert dose.courses_in_authorization == 7  # floor(179 / 28) + 1
    assert dose.billing_units_in_authorization == 2100
    assert dose.warnings == ()


def test_worked_example_as_dict() -> None:
    data = compute_dose(WORKED, PRIVIGEN).as_dict()

    assert set(data) == DOSING_KEYS
    assert data["weight_basis"] == "adjusted"
    assert data["requested_basis"] == "policy"
    assert data["vials_per_day"] == [{"size_g": 20.0, "count": 1}, {"size_g": 10.0, "count": 1}]
    assert data["dispensed_g_per_day"] == 30.0
    assert abs(data["calculated_g_per_day"] - 28.8582677165) < 1e-9
    assert abs(data["ideal_weight_kg"] - 56.9094488189) < 1e-9
    assert isinstance(data["billing_units_per_course"], int)
    assert isinstance(data["billing_units_in_authorization"], int)
    assert isinstance(data["courses_in_authorization"], int)
    assert isinstance(data["days_per_course"], int)
    assert isinstance(data["bmi"], float)
    assert data["interval_days"] == 28
    assert data["authorization_days"] == 180
    assert data["warnings"] == []
    assert json.loads(json.dumps(data)) == data


# --- weight basis ---------------------------------------------------------------------------


def test_basis_actual() -> None:
    dose = compute_dose(replace(WORKED, basis="actual"), PRIVIGEN)
    assert dose.weight_basis == "actual"
    assert dose.dosing_weight_kg == D(95)
    assert dose.calculated_g_per_day == D(38)  # 2 × 95 / 5
    assert dose.dispensed_g_per_day == D(40)  # 35 is 3 away, 40 is 2 away
    assert dose.vials_per_day == vials((40, 1))
    assert dose.billing_units_per_course == 400
    assert dose.billing_units_in_authorization == 2800


def test_basis_ideal() -> None:
    dose = compute_dose(replace(WORKED, basis="ideal"), PRIVIGEN)
    assert dose.weight_basis == "ideal"
    assert dose.dosing_weight_kg == dose.ideal_weight_kg
    assert close(dose.calculated_g_per_day, "22.7637795")  # 2 × 56.9094 / 5
    assert dose.dispensed_g_per_day == D(25)  # 20 is 2.76 away, 25 is 2.24 away
    assert dose.vials_per_day == vials((20, 1), (5, 1))
    assert dose.billing_units_per_course == 250
    assert dose.warnings == ()  # 25 is 9.8% above 22.76


def test_basis_adjusted() -> None:
    dose = compute_dose(replace(WORKED, basis="adjusted"), PRIVIGEN)
    assert dose.weight_basis == "adjusted"
    assert dose.requested_basis == "adjusted"
    assert dose.dosing_weight_kg == dose.adjusted_weight_kg
    assert dose.dispensed_g_per_day == D(30)


def test_devine_exact_at_whole_inches() -> None:
    # 65 in = 165.10 cm: IBW 45.5 + 2.3 × 5 = 57.0 (F), 70 in: 50 + 2.3 × 10 = 73.0 (M)
    female = compute_dose(replace(WORKED, height_cm=D("165.10")), PRIVIGEN)
    male = compute_dose(replace(WORKED, sex="M", height_cm=D("177.80")), PRIVIGEN)
    assert female.ideal_weight_kg == D("57.0")
    assert male.ideal_weight_kg == D("73.0")
    assert female.adjusted_weight_kg == D("57.0") + D("0.4") * (D(95) - D("57.0"))


# At 152.4 cm (60 in exactly) a woman's IBW is exactly 45.5 kg; 1.2 × IBW = 54.6 kg.
@pytest.mark.parametrize(
    ("weight", "expected"),
    [
        ("40", "actual"),  # ABW below IBW
        ("45.5", "actual"),  # ABW equal to IBW
        ("54.59", "actual"),  # above IBW, under 1.2 × IBW, BMI 23.5
        ("54.6", "adjusted"),  # exactly 1.2 × IBW, BMI 23.5
        ("60", "adjusted"),  # above 1.2 × IBW, BMI 25.8
        ("70", "adjusted"),  # BMI 30.1
    ],
)
def test_policy_branches(weight: str, expected: str) -> None:
    request = replace(WORKED, height_cm=D("152.4"), weight_kg=D(weight), g_per_kg_per_course=D(1))
    dose = compute_dose(request, GAMUNEX)
    assert dose.ideal_weight_kg == D("45.5")
    assert dose.weight_basis == expected
    assert dose.requested_basis == "policy"
    assert dose.bmi < 30 or expected == "adjusted"


def test_policy_bmi_exactly_30_is_adjusted() -> None:
    # 120 kg / 2.00 m² = 30.0 exactly
    dose = compute_dose(replace(WORKED, sex="M", height_cm=D(200), weight_kg=D(120)), GAMUNEX)
    assert dose.bmi == D(30)
    assert dose.weight_basis == "adjusted"


def test_ideal_basis_with_non_positive_ideal_weight_is_an_error() -> None:
    # 90 cm = 35.4 in: IBW 45.5 + 2.3 × (−24.6) < 0
    short = replace(
        WORKED, height_cm=D(90), weight_kg=D(13), g_per_kg_per_course=D(1), days_per_course=1
    )
    with pytest.raises(DosingError, match="ideal body weight"):
        compute_dose(replace(short, basis="ideal"), GAMUNEX)
    with pytest.raises(DosingError, match="ideal body weight"):
        compute_dose(short, GAMUNEX)  # policy
    dose = compute_dose(replace(short, basis="actual"), GAMUNEX)
    assert dose.dispensed_g_per_day == D(13)
    assert "HEIGHT_UNDER_60_IN" in codes(dose)


# --- vial rounding --------------------------------------------------------------------------


def test_gammagard_40_g_is_30_plus_10() -> None:
    assert round_to_vials(D(40), GAMMAGARD.vial_sizes_g) == (D(40), vials((30, 1), (10, 1)))


@pytest.mark.parametrize(
    ("product", "calculated", "dispensed", "expected_vials"),
    [
        (GAMUNEX, "40", "40", ((40, 1),)),
        (GAMUNEX, "60", "60", ((40, 1), (20, 1))),
        (GAMMAGARD, "60", "60", ((30, 2),)),  # not 20 + 20 + 20
        (GAMMAGARD, "33.5", "33.5", ((30, 1), ("2.5", 1), (1, 1))),
        (OCTAGAM, "6", "6", ((2, 3),)),
        (OCTAGAM, "9", "9", ((5, 1), (2, 2))),
        (PRIVIGEN, "80", "80", ((40, 2),)),
        (PRIVIGEN, "28.86", "30", ((20, 1), (10, 1))),
        (PRIVIGEN, "27.4", "25", ((20, 1), (5, 1))),  # 25 is 8.8% below and nearer than 30
    ],
)
def test_vial_rounding_examples(
    product: Product, calculated: str, dispensed: str, expected_vials: tuple
) -> None:
    assert round_to_vials(D(calculated), product.vial_sizes_g) == (
        D(dispensed),
        vials(*expected_vials),
    )


def test_tie_takes_the_lower_total() -> None:
    # 30.25 is 0.25 from both 30 and 30.5 (Gamunex-C reaches every 0.5 g)
    assert round_to_vials(D("30.25"), GAMUNEX.vial_sizes_g) == (D(30), vials((20, 1), (10, 1)))
    request = DoseRequest(
        sex="F", height_cm=D(165), weight_kg=D("60.5"), g_per_kg_per_course=D("0.5"), basis="actual"
    )
    dose = compute_dose(request, GAMUNEX)
    assert dose.calculated_g_per_day == D("30.25")
    assert dose.dispensed_g_per_day == D(30)
    assert dose.billing_units_per_course == 60


@pytest.mark.parametrize(
    ("product", "calculated", "dispensed"),
    [
        (PRIVIGEN, "4", "5"),  # nearest is 5 anyway
        (PRIVIGEN, "2", "5"),  # nearest is 0 (100% below): smallest total at or above
        (PRIVIGEN, "7.4", "10"),  # nearest is 5 (32.4% below): 10
        (PRIVIGEN, "7.5", "10"),  # tie 5/10 takes 5, 33% below: 10
        (OCTAGAM, "3", "4"),  # tie 2/4 takes 2, 33% below: 4 (2 + 2), not 5
        (OCTAGAM, "1", "2"),  # tie 0/2 takes 0: 2
    ],
)
def test_more_than_10_percent_below_takes_the_next_total_up(
    product: Product, calculated: str, dispensed: str
) -> None:
    assert round_to_vials(D(calculated), product.vial_sizes_g)[0] == D(dispensed)


def test_exactly_10_percent_below_is_kept() -> None:
    nine = [D(9)]
    assert round_to_vials(D(10), nine) == (D(9), vials((9, 1)))  # exactly 10% below
    assert round_to_vials(D("10.01"), nine) == (D(18), vials((9, 2)))  # 10.09% below


def test_round_to_vials_accepts_unsorted_and_repeated_sizes() -> None:
    assert round_to_vials(D(40), [D(10), D(30), D(10), D("2.5"), D(20), D(1), D(5)]) == (
        D(40),
        vials((30, 1), (10, 1)),
    )


def test_large_dose_uses_the_largest_vials() -> None:
    # 1234.56 g: 1234.5 (0.06 away) beats 1235; 30 × 40 + 34.5 with 20 + 10 + 2.5 + 1 + 1
    assert round_to_vials(D("1234.56"), GAMUNEX.vial_sizes_g) == (
        D("1234.5"),
        vials((40, 30), (20, 1), (10, 1), ("2.5", 1), (1, 2)),
    )


@pytest.mark.parametrize(
    ("calculated", "sizes"),
    [
        ("0", ["5"]),
        ("-1", ["5"]),
        ("NaN", ["5"]),
        ("10", []),
        ("10", ["0"]),
        ("10", ["5", "-5"]),
    ],
)
def test_round_to_vials_errors(calculated: str, sizes: list[str]) -> None:
    with pytest.raises(DosingError):
        round_to_vials(D(calculated), [D(s) for s in sizes])


# --- courses, units and conversions ---------------------------------------------------------


def test_one_time_course() -> None:
    dose = compute_dose(replace(WORKED, interval_days=None), PRIVIGEN)
    assert dose.interval_days is None
    assert dose.courses_in_authorization == 1
    assert dose.billing_units_in_authorization == dose.billing_units_per_course == 300
    assert dose.as_dict()["interval_days"] is None


@pytest.mark.parametrize(
    ("authorization_days", "interval_days", "courses"),
    [(180, 28, 7), (168, 28, 6), (169, 28, 7), (1, 28, 1), (28, 28, 1), (29, 28, 2), (365, 21, 18)],
)
def test_courses_in_authorization(
    authorization_days: int, interval_days: int, courses: int
) -> None:
    request = replace(WORKED, authorization_days=authorization_days, interval_days=interval_days)
    dose = compute_dose(request, PRIVIGEN)
    assert dose.courses_in_authorization == courses
    assert dose.billing_units_in_authorization == 300 * courses


def test_pound_and_inch_conversion() -> None:
    assert D("0.45359237") == LB_TO_KG
    assert D("2.54") == IN_TO_CM
    assert pounds_to_kg(D(1)) == D("0.45359237")
    assert pounds_to_kg(D(150)) == D("68.0388555")
    assert inches_to_cm(D(65)) == D("165.10")
    assert inches_to_cm(D("64.5")) == D("163.830")
    # 5 ft 5 in, 209.5 lb: height is exactly 65 in again, so IBW (F) is exactly 57.0 kg
    request = replace(WORKED, height_cm=inches_to_cm(D(65)), weight_kg=pounds_to_kg(D("209.5")))
    dose = compute_dose(request, PRIVIGEN)
    assert dose.actual_weight_kg == D("95.027601515")
    assert dose.ideal_weight_kg == D("57.0")


def test_billing_units_must_be_whole() -> None:
    with pytest.raises(DosingError, match="whole"):
        compute_dose(
            replace(WORKED, days_per_course=1, g_per_kg_per_course=D("0.01")),
            synthetic([D(1)], 3000),
        )


def test_format_rounds_half_up() -> None:
    assert format_kg(D("72.15")) == "72.2"
    assert format_kg(D("72.1456")) == "72.1"
    assert format_kg(D(95)) == "95.0"
    assert format_g(D("28.855")) == "28.86"
    assert format_g(D("28.8582677")) == "28.86"
    assert format_g(D("0.125")) == "0.13"
    assert format_g(30) == "30.00"


# --- warnings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"g_per_kg_per_course": D("2.5")}, {"G_PER_KG_ABOVE_2"}),
        ({"g_per_kg_per_course": D("2.0")}, set()),
        ({"g_per_kg_per_course": D(2), "days_per_course": 1}, {"DAILY_ABOVE_1_G_PER_KG"}),
        ({"g_per_kg_per_course": D(2), "days_per_course": 2}, set()),  # exactly 1 g/kg a day
        ({"days_per_course": 6}, {"MORE_THAN_5_DAYS"}),
        (
            {"basis": "actual", "weight_kg": D(20), "g_per_kg_per_course": D("0.5")},
            {"DISPENSED_DIFFERS_10PCT"},
        ),
        ({"height_cm": D(150)}, {"HEIGHT_UNDER_60_IN"}),
        ({"height_cm": D("152.4")}, set()),  # exactly 60 in
        ({"interval_days": 14}, {"INTERVAL_UNDER_21_DAYS"}),
        ({"interval_days": 21}, set()),
        ({"interval_days": None}, set()),
    ],
)
def test_each_warning(changes: dict, expected: set[str]) -> None:
    dose = compute_dose(replace(WORKED, **changes), PRIVIGEN)
    assert codes(dose) == expected
    for warning in dose.warnings:
        assert isinstance(warning, DoseWarning)
        assert warning.message and any(ch.isdigit() for ch in warning.message)
        assert warning.as_dict() == {"code": warning.code, "message": warning.message}


def test_warning_messages_carry_the_numbers() -> None:
    many = replace(
        WORKED, g_per_kg_per_course=D(3), days_per_course=6, interval_days=14, height_cm=D(150)
    )
    messages = {w.code: w.message for w in compute_dose(many, PRIVIGEN).warnings}
    assert "3 g/kg" in messages["G_PER_KG_ABOVE_2"]
    assert "6 days" in messages["MORE_THAN_5_DAYS"]
    assert "14 days" in messages["INTERVAL_UNDER_21_DAYS"]
    assert (
        "150 cm" in messages["HEIGHT_UNDER_60_IN"] and "59.1 in" in messages["HEIGHT_UNDER_60_IN"]
    )
    small = replace(WORKED, basis="actual", weight_kg=D(20), g_per_kg_per_course=D("0.5"))
    dose = compute_dose(small, PRIVIGEN)  # 2 g a day, 5 g dispensed
    assert dose.as_dict()["warnings"] == [
        {
            "code": "DISPENSED_DIFFERS_10PCT",
            "message": (
                "The dispensed 5.00 g a day is 150% above the calculated 2.00 g, more than 10%."
            ),
        }
    ]
    daily = compute_dose(replace(WORKED, g_per_kg_per_course=D(2), days_per_course=1), PRIVIGEN)
    assert "2 g/kg over 1 day is 2 g/kg on one day" in daily.warnings[0].message


# --- errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "changes",
    [
        {"weight_kg": D(0)},
        {"weight_kg": D(-70)},
        {"weight_kg": D("NaN")},
        {"weight_kg": D("Infinity")},
        {"weight_kg": None},
        {"height_cm": D(0)},
        {"height_cm": D(-165)},
        {"g_per_kg_per_course": D(0)},
        {"g_per_kg_per_course": D("-0.4")},
        {"days_per_course": 0},
        {"days_per_course": -1},
        {"days_per_course": 1.5},
        {"days_per_course": True},
        {"authorization_days": 0},
        {"interval_days": 0},
        {"interval_days": -28},
        {"basis": "lean"},
        {"sex": "X"},
        {"sex": "f"},
    ],
)
def test_errors(changes: dict) -> None:
    with pytest.raises(DosingError):
        compute_dose(replace(WORKED, **changes), PRIVIGEN)


def test_errors_from_the_product() -> None:
    with pytest.raises(DosingError):
        compute_dose(WORKED, synthetic([D(0)]))
    with pytest.raises(DosingError):
        compute_dose(WORKED, PRIVIGEN.model_copy(update={"vial_sizes_g": ()}))


# --- properties -----------------------------------------------------------------------------

# Vial sizes in half grams, so every total is a whole number of 0.5 g steps and of 500 mg units.
SIZE_CHOICES = [D(s) for s in ("0.5", "1", "2", "2.5", "3", "5", "10", "20", "30", "40")]


def hundredths(low: int, high: int) -> st.SearchStrategy[Decimal]:
    return st.integers(low, high).map(lambda n: D(n).scaleb(-2))


def tenths(low: int, high: int) -> st.SearchStrategy[Decimal]:
    return st.integers(low, high).map(lambda n: D(n).scaleb(-1))


def some_sizes(choices: list[Decimal]) -> st.SearchStrategy[list[Decimal]]:
    """One to four different sizes (a prefix of a shuffle: no duplicates to reject)."""
    return st.tuples(st.permutations(choices), st.integers(1, 4)).map(lambda t: t[0][: t[1]])


sizes_st = some_sizes(SIZE_CHOICES)


def steps(x: Decimal) -> int:
    assert x * 2 == (x * 2).to_integral_value()
    return int(x * 2)


@cache
def reachable_steps(units: tuple[int, ...], limit: int) -> frozenset[int]:
    reached = {0}
    frontier = [0]
    while frontier:
        total = frontier.pop()
        for unit in units:
            if total + unit <= limit and total + unit not in reached:
                reached.add(total + unit)
                frontier.append(total + unit)
    return frozenset(reached)


def expected_total(calculated: Decimal, sizes: list[Decimal]) -> Decimal:
    """Step 7 restated over an explicit list of reachable totals."""
    units = tuple(steps(s) for s in sizes)
    limit = math.ceil(calculated * 2) + max(units)
    totals = [D(t) / 2 for t in reachable_steps(units, limit)]
    nearest = min(totals, key=lambda t: (abs(t - calculated), t))
    if nearest < calculated * D("0.9"):
        return min(t for t in totals if t >= calculated)
    return nearest


def all_combinations(total: int, units: tuple[int, ...]) -> list[tuple[int, ...]]:
    """Every way to make `total` from `units` (largest first), as counts per unit."""
    if not units:
        return [()] if total == 0 else []
    found = []
    for count in range(total // units[0] + 1):
        for rest in all_combinations(total - count * units[0], units[1:]):
            found.append((count, *rest))
    return found


def preferred(combos: list[tuple[int, ...]]) -> tuple[int, ...]:
    return min(combos, key=lambda c: (sum(c), tuple(-n for n in c)))


def preferred_by_plain_dp(total: int, units: tuple[int, ...]) -> tuple[int, ...]:
    """Fewest vials, then most of the largest, ... by a DP over every total from 0 (no shortcut)."""
    best: list[tuple[int, ...] | None] = [tuple(0 for _ in units)]
    for t in range(1, total + 1):
        options = []
        for i, unit in enumerate(units):
            if unit <= t and (previous := best[t - unit]) is not None:
                options.append(tuple(n + (j == i) for j, n in enumerate(previous)))
        best.append(preferred(options) if options else None)
    result = best[total]
    assert result is not None
    return result


def check_rounding(
    calculated: Decimal, sizes: list[Decimal]
) -> tuple[Decimal, tuple[VialCount, ...]]:
    dispensed, chosen = round_to_vials(calculated, sizes)
    assert dispensed == sum((v.size_g * v.count for v in chosen), D(0))
    assert all(v.count > 0 and v.size_g in sizes for v in chosen)
    assert [v.size_g for v in chosen] == sorted((v.size_g for v in chosen), reverse=True)
    assert dispensed >= calculated * D("0.9")
    assert dispensed == expected_total(calculated, sizes)
    return dispensed, chosen


@settings(max_examples=200, deadline=None)
@given(sizes=sizes_st, calculated=hundredths(1, 30_000))
def test_rounding_is_nearest_reachable_unless_too_far_below(
    calculated: Decimal, sizes: list[Decimal]
) -> None:
    dispensed, _ = check_rounding(calculated, sizes)
    units = tuple(steps(s) for s in sizes)
    totals = [D(t) / 2 for t in reachable_steps(units, math.ceil(calculated * 2) + max(units))]
    nearer = [t for t in totals if abs(t - calculated) < abs(dispensed - calculated)]
    if nearer:  # only the fallback may pass over a nearer total, and only one too far below
        assert dispensed == min(t for t in totals if t >= calculated)
        assert all(t < calculated * D("0.9") for t in nearer)


@settings(max_examples=200, deadline=None)
@given(
    sizes=some_sizes(SIZE_CHOICES[1:]),
    calculated=hundredths(1, 4_000),
)
def test_vial_combination_is_the_preferred_one_by_brute_force(
    calculated: Decimal, sizes: list[Decimal]
) -> None:
    dispensed, chosen = check_rounding(calculated, sizes)
    ordered = sorted(sizes, reverse=True)
    counts = {v.size_g: v.count for v in chosen}
    got = tuple(counts.get(s, 0) for s in ordered)
    assert got == preferred(all_combinations(steps(dispensed), tuple(steps(s) for s in ordered)))


@settings(max_examples=100, deadline=None)
@given(sizes=sizes_st, calculated=hundredths(4_000, 200_000))
def test_large_doses_match_a_plain_dp(calculated: Decimal, sizes: list[Decimal]) -> None:
    dispensed, chosen = check_rounding(calculated, sizes)
    ordered = sorted(sizes, reverse=True)
    counts = {v.size_g: v.count for v in chosen}
    got = tuple(counts.get(s, 0) for s in ordered)
    assert got == preferred_by_plain_dp(steps(dispensed), tuple(steps(s) for s in ordered))


products_st = st.one_of(
    st.sampled_from(sorted(CATALOG.products.values(), key=lambda p: p.id)),
    sizes_st.map(synthetic),
)
requests_st = st.builds(
    DoseRequest,
    sex=st.sampled_from(["F", "M"]),
    height_cm=tenths(1_400, 2_100),
    weight_kg=tenths(300, 2_500),
    g_per_kg_per_course=tenths(1, 30),
    days_per_course=st.integers(1, 7),
    interval_days=st.none() | st.integers(1, 60),
    authorization_days=st.integers(1, 400),
    basis=st.sampled_from(["actual", "ideal", "adjusted", "policy"]),
)


@settings(max_examples=200, deadline=None)
@given(request=requests_st, product=products_st)
def test_dose_invariants(request: DoseRequest, product: Product) -> None:
    dose = compute_dose(request, product)
    abw, ibw, adj = dose.actual_weight_kg, dose.ideal_weight_kg, dose.adjusted_weight_kg

    weights = {"actual": abw, "ideal": ibw, "adjusted": adj}
    assert dose.dosing_weight_kg == weights[dose.weight_basis]
    assert dose.requested_basis == request.basis
    if request.basis == "policy":
        if abw <= ibw:
            assert dose.weight_basis == "actual"
        elif dose.bmi >= 30 or abw >= D("1.2") * ibw:
            assert dose.weight_basis == "adjusted"
        else:
            assert dose.weight_basis == "actual"
    else:
        assert dose.weight_basis == request.basis
    if abw > ibw:
        assert ibw < adj < abw

    assert dose.dispensed_g_per_day == sum((v.size_g * v.count for v in dose.vials_per_day), D(0))
    assert dose.dispensed_g_per_day >= dose.calculated_g_per_day * D("0.9")
    assert dose.dispensed_g_per_course == dose.dispensed_g_per_day * request.days_per_course
    assert (
        dose.billing_units_per_course
        == dose.dispensed_g_per_day * 1000 / 500 * request.days_per_course
    )
    assert isinstance(dose.billing_units_per_course, int)
    assert (
        dose.billing_units_in_authorization
        == dose.billing_units_per_course * dose.courses_in_authorization
    )
    if request.interval_days is None:
        assert dose.courses_in_authorization == 1
    else:  # every course starts inside the period, and the next one would not
        starts = (dose.courses_in_authorization - 1) * request.interval_days
        assert starts <= request.authorization_days - 1 < starts + request.interval_days

    found = codes(dose)
    g_per_kg, days, calc = (
        request.g_per_kg_per_course,
        request.days_per_course,
        dose.calculated_g_per_day,
    )
    assert ("G_PER_KG_ABOVE_2" in found) == (g_per_kg > 2)
    assert ("DAILY_ABOVE_1_G_PER_KG" in found) == (g_per_kg > days)
    assert ("MORE_THAN_5_DAYS" in found) == (days > 5)
    assert ("DISPENSED_DIFFERS_10PCT" in found) == (
        abs(dose.dispensed_g_per_day - calc) > calc / 10
    )
    assert ("HEIGHT_UNDER_60_IN" in found) == (request.height_cm < D("152.4"))
    assert ("INTERVAL_UNDER_21_DAYS" in found) == (
        request.interval_days is not None and request.interval_days < 21
    )

    data = dose.as_dict()
    assert set(data) == DOSING_KEYS
    assert json.loads(json.dumps(data)) == data


# --- regimens with a loading phase ----------------------------------------------------------

# CIDP: M, 175 cm, 80 kg, Gamunex-C (vials 1, 2.5, 5, 10, 20, 40 g), basis `policy`, 180 days;
# loading 2 g/kg over 2 days, then maintenance 1 g/kg over 1 day every 21 days.
#   height_in = 175 / 2.54 = 68.8976; IBW = 50 + 2.3 × 8.8976 = 70.4646 kg
#   BMI = 80 / 1.75² = 26.12 (< 30) and 80 < 1.2 × 70.4646 = 84.56 → actual weight, 80 kg
#   loading:     2 × 80 / 2 = 80 g a day (exactly 1 g/kg a day: no warning) = 2 × 40 g;
#                160 g a course = 320 units; one course, on day 0
#   maintenance: 1 × 80 / 1 = 80 g = 2 × 40 g; 80 g a course = 160 units;
#                first course on day 0 + 21 = 21, then 42, 63, 84, 105, 126, 147, 168
#                (189 is past day 179): 8 courses = 1,280 units
#   authorization: 320 + 1,280 = 1,600 units (the maintenance regimen alone from day 0 would be
#                floor(179 / 21) + 1 = 9 courses = 1,440 units)
CIDP_MAINTENANCE = DoseRequest(
    sex="M",
    height_cm=D(175),
    weight_kg=D(80),
    g_per_kg_per_course=D(1),
    days_per_course=1,
    interval_days=21,
    authorization_days=180,
)
CIDP_LOADING = LoadingPhase(g_per_kg_per_course=D(2), days_per_course=2)


def test_cidp_loading_then_maintenance_by_hand() -> None:
    regimen = compute_regimen(CIDP_MAINTENANCE, GAMUNEX, CIDP_LOADING)
    loading, maintenance = regimen.loading, regimen.maintenance
    assert loading is not None

    for dose in (loading, maintenance):
        assert close(dose.ideal_weight_kg, "70.4645669")
        assert close(dose.bmi, "26.1224490")
        assert dose.weight_basis == "actual"
        assert dose.dosing_weight_kg == D(80)
        assert dose.warnings == ()

    assert loading.g_per_kg_per_course == D(2)
    assert loading.days_per_course == 2
    assert loading.calculated_g_per_day == D(80)
    assert loading.dispensed_g_per_day == D(80)
    assert loading.vials_per_day == vials((40, 2))
    assert loading.dispensed_g_per_course == D(160)
    assert loading.billing_units_per_course == 320
    assert loading.interval_days is None
    assert loading.courses_in_authorization == 1
    assert loading.billing_units_in_authorization == 320

    assert maintenance.calculated_g_per_day == D(80)
    assert maintenance.vials_per_day == vials((40, 2))
    assert maintenance.dispensed_g_per_course == D(80)
    assert maintenance.billing_units_per_course == 160
    assert maintenance.interval_days == 21
    assert maintenance.courses_in_authorization == 8
    assert maintenance.billing_units_in_authorization == 1280

    assert regimen.maintenance_first_day == 21
    assert regimen.total_billing_units_in_authorization == 1600
    assert regimen.schedule() == (
        Course("loading", 0, 320),
        *(Course("maintenance", day, 160) for day in (21, 42, 63, 84, 105, 126, 147, 168)),
    )
    # the maintenance regimen alone, from day 0
    assert compute_dose(CIDP_MAINTENANCE, GAMUNEX).billing_units_in_authorization == 1440


def test_cidp_regimen_as_dict() -> None:
    regimen = compute_regimen(CIDP_MAINTENANCE, GAMUNEX, CIDP_LOADING)
    data = regimen.as_dict()

    assert set(data) == DOSING_KEYS | {"phases", "total_billing_units_in_authorization"}
    # the top-level keys are the maintenance phase's
    assert data["g_per_kg_per_course"] == 1.0
    assert data["billing_units_per_course"] == 160
    assert data["interval_days"] == 21
    assert data["courses_in_authorization"] == 8
    assert data["billing_units_in_authorization"] == 1280
    assert data["total_billing_units_in_authorization"] == 1600
    loading, maintenance = data["phases"]
    assert set(loading) == DOSING_KEYS | {"phase", "first_course_day", "courses"}
    assert set(maintenance) == DOSING_KEYS | {"phase", "first_course_day"}
    assert (loading["phase"], loading["first_course_day"], loading["courses"]) == ("loading", 0, 1)
    assert (maintenance["phase"], maintenance["first_course_day"]) == ("maintenance", 21)
    assert loading["g_per_kg_per_course"] == 2.0
    assert loading["days_per_course"] == 2
    assert loading["dispensed_g_per_course"] == 160.0
    assert loading["vials_per_day"] == [{"size_g": 40.0, "count": 2}]
    assert loading["billing_units_in_authorization"] == 320
    assert loading["interval_days"] is None
    assert {k: v for k, v in maintenance.items() if k in DOSING_KEYS} == {
        k: v for k, v in data.items() if k in DOSING_KEYS
    }
    assert json.loads(json.dumps(data)) == data


def test_single_regimen_is_todays_dose_plus_a_total() -> None:
    regimen = compute_regimen(WORKED, PRIVIGEN)
    assert regimen.loading is None
    assert regimen.maintenance == compute_dose(WORKED, PRIVIGEN)
    assert regimen.phases == (("maintenance", regimen.maintenance),)
    assert regimen.as_dict() == {
        **compute_dose(WORKED, PRIVIGEN).as_dict(),
        "total_billing_units_in_authorization": 2100,
    }
    assert [c.day for c in regimen.schedule()] == [0, 28, 56, 84, 112, 140, 168]
    one_time = compute_regimen(replace(WORKED, interval_days=None), PRIVIGEN)
    assert one_time.schedule() == (Course("maintenance", 0, 300),)
    assert one_time.as_dict()["total_billing_units_in_authorization"] == 300


def test_two_loading_courses_on_the_worked_example_patient() -> None:
    # Adjusted weight 72.1457 kg (DOMAIN.md worked example), Privigen (vials 5, 10, 20, 40 g).
    # Loading: 2 g/kg over 5 days, 2 courses 28 days apart: 28.86 g a day → 30 g, 150 g =
    #   300 units a course, on days 0 and 28: 600 units.
    # Maintenance: 1 g/kg over 2 days every 28 days: 72.1457 / 2 = 36.07 g a day; 35 g is 3.0%
    #   below, 40 g 10.9% above → 35 g = 20 + 10 + 5; 70 g = 140 units a course; first course
    #   28 + 28 = day 56, then 84, 112, 140, 168 (196 is past day 179): 5 courses = 700 units.
    # Total 600 + 700 = 1,300 units.
    maintenance = replace(WORKED, g_per_kg_per_course=D(1), days_per_course=2)
    loading = LoadingPhase(D(2), days_per_course=5, courses=2, interval_days=28)
    regimen = compute_regimen(maintenance, PRIVIGEN, loading)
    assert regimen.loading is not None
    assert regimen.loading.billing_units_per_course == 300
    assert regimen.loading.interval_days == 28
    assert regimen.loading.courses_in_authorization == 2
    assert regimen.maintenance.dispensed_g_per_day == D(35)
    assert regimen.maintenance.vials_per_day == vials((20, 1), (10, 1), (5, 1))
    assert regimen.maintenance.billing_units_per_course == 140
    assert regimen.maintenance_first_day == 56
    assert regimen.maintenance.courses_in_authorization == 5
    assert regimen.total_billing_units_in_authorization == 1300
    assert [(c.phase, c.day) for c in regimen.schedule()] == [
        ("loading", 0),
        ("loading", 28),
        *(("maintenance", day) for day in (56, 84, 112, 140, 168)),
    ]
    assert regimen.as_dict()["phases"][0]["courses"] == 2


def test_loading_courses_past_the_authorization_do_not_count() -> None:
    # Loading every 14 days × 3 (days 0, 14, 28) in a 28-day authorization: days 0 and 14 only;
    # maintenance would start on day 28 + 21 = 49: none.
    short = replace(CIDP_MAINTENANCE, authorization_days=28)
    loading = LoadingPhase(D("0.4"), days_per_course=1, courses=3, interval_days=14)
    regimen = compute_regimen(short, GAMUNEX, loading)
    assert regimen.loading is not None
    assert regimen.loading.courses_in_authorization == 2
    assert regimen.loading_courses == 3
    assert regimen.maintenance_first_day == 49
    assert regimen.maintenance.courses_in_authorization == 0
    assert regimen.maintenance.billing_units_in_authorization == 0
    # 0.4 × 80 = 32 g = 64 units a course
    assert regimen.total_billing_units_in_authorization == 2 * 64
    # The loading interval under 21 days is a warning of the loading phase.
    assert [(w.code, w.phase) for w in regimen.warnings] == [("INTERVAL_UNDER_21_DAYS", "loading")]
    assert regimen.as_dict()["warnings"] == [
        {
            "code": "INTERVAL_UNDER_21_DAYS",
            "message": "Loading phase: courses every 14 days is an interval under 21 days.",
            "phase": "loading",
        }
    ]


def test_maintenance_exactly_at_the_end_of_the_authorization() -> None:
    # Loading on day 0; maintenance every 21 days from day 21: with 22 days, day 21 is the last
    # day of the authorization (1 course); with 21 days it is outside (0 courses).
    for days, courses in ((22, 1), (21, 0), (42, 1), (43, 2)):
        request = replace(CIDP_MAINTENANCE, authorization_days=days)
        regimen = compute_regimen(request, GAMUNEX, CIDP_LOADING)
        assert regimen.maintenance.courses_in_authorization == courses, days
        assert regimen.total_billing_units_in_authorization == 320 + 160 * courses


def test_phase_warnings_name_their_phase() -> None:
    # 2 g/kg in one day is above 1 g/kg a day (2 g/kg over 2 days is exactly 1 g/kg a day, which
    # DOMAIN.md §5.10 does not flag: "more than 1 g/kg on one day").
    regimen = compute_regimen(CIDP_MAINTENANCE, GAMUNEX, LoadingPhase(D(2), days_per_course=1))
    assert regimen.loading is not None
    (warning,) = regimen.loading.warnings
    assert warning == DoseWarning(
        "DAILY_ABOVE_1_G_PER_KG",
        "Loading phase: 2 g/kg over 1 day is 2 g/kg on one day, above 1 g/kg a day.",
        "loading",
    )
    assert regimen.maintenance.warnings == ()
    assert regimen.warnings == (warning,)
    data = regimen.as_dict()
    assert data["warnings"] == [warning.as_dict()]
    assert data["warnings"][0]["phase"] == "loading"
    assert data["phases"][0]["warnings"] == [warning.as_dict()]
    assert data["phases"][1]["warnings"] == []

    # Both phases warn, each in its own words; a height warning is the patient's and shows once.
    short = replace(CIDP_MAINTENANCE, height_cm=D(150), days_per_course=6, interval_days=14)
    regimen = compute_regimen(short, GAMUNEX, LoadingPhase(D(3), days_per_course=2))
    found = [(w.code, w.phase) for w in regimen.warnings]
    assert found == [
        ("G_PER_KG_ABOVE_2", "loading"),
        ("DAILY_ABOVE_1_G_PER_KG", "loading"),
        ("HEIGHT_UNDER_60_IN", None),
        ("MORE_THAN_5_DAYS", "maintenance"),
        ("INTERVAL_UNDER_21_DAYS", "maintenance"),
    ]
    messages = {(w.code, w.phase): w.message for w in regimen.warnings}
    assert messages[("MORE_THAN_5_DAYS", "maintenance")] == (
        "Maintenance phase: 6 days of infusion in one course is more than 5."
    )
    assert messages[("HEIGHT_UNDER_60_IN", None)].startswith("Height 150 cm")
    assert "phase" not in regimen.warnings[2].as_dict()


@pytest.mark.parametrize(
    ("request_changes", "loading", "words"),
    [
        ({"interval_days": None}, LoadingPhase(D(2)), "maintenance interval_days"),
        ({}, LoadingPhase(D(2), courses=2), "2 loading courses need"),
        ({}, LoadingPhase(D(2), interval_days=21), "only with more than 1 loading course"),
        ({}, LoadingPhase(D(2), courses=0), "loading courses must be at least 1"),
        ({}, LoadingPhase(D(2), courses=2, interval_days=0), "at least 1"),
        ({}, LoadingPhase(D(0)), "loading phase: g/kg per course must be above 0"),
        ({}, LoadingPhase(D(2), days_per_course=0), "loading phase: infusion days"),
        ({"g_per_kg_per_course": D(0)}, LoadingPhase(D(2)), "g/kg per course must be above 0"),
    ],
)
def test_regimen_errors(request_changes: dict, loading: LoadingPhase, words: str) -> None:
    with pytest.raises(DosingError, match=words):
        compute_regimen(replace(CIDP_MAINTENANCE, **request_changes), GAMUNEX, loading)


def test_loading_phase_as_dict() -> None:
    assert LoadingPhase(D("2.0"), 2).as_dict() == {
        "g_per_kg_per_course": 2.0,
        "days_per_course": 2,
        "courses": 1,
        "interval_days": None,
    }


loadings_st = st.integers(1, 4).flatmap(
    lambda courses: st.builds(
        LoadingPhase,
        g_per_kg_per_course=tenths(1, 30),
        days_per_course=st.integers(1, 7),
        courses=st.just(courses),
        interval_days=st.none() if courses == 1 else st.integers(1, 60),
    )
)


def _without_schedule(dose: Dose) -> Dose:
    return replace(dose, courses_in_authorization=0, billing_units_in_authorization=0, warnings=())


@settings(max_examples=200, deadline=None)
@given(
    request=requests_st.filter(lambda r: r.interval_days is not None),
    loading=loadings_st,
    product=products_st,
)
def test_regimen_invariants(request: DoseRequest, loading: LoadingPhase, product: Product) -> None:
    regimen = compute_regimen(request, product, loading)
    assert isinstance(regimen, Regimen)
    assert regimen.loading is not None
    loading_request = replace(
        request,
        g_per_kg_per_course=loading.g_per_kg_per_course,
        days_per_course=loading.days_per_course,
        interval_days=loading.interval_days,
    )
    alone = {
        "loading": compute_dose(loading_request, product),
        "maintenance": compute_dose(request, product),
    }
    authorization = request.authorization_days
    maintenance_interval = request.interval_days
    assert maintenance_interval is not None

    # Each phase is the DOMAIN.md §5 dose of its own request; only its schedule differs.
    for phase, dose in regimen.phases:
        assert _without_schedule(dose) == _without_schedule(alone[phase])
        assert dose.billing_units_in_authorization == (
            dose.billing_units_per_course * dose.courses_in_authorization
        )
        assert [(w.code, w.message) for w in dose.warnings if w.phase is None] == [
            (w.code, w.message) for w in alone[phase].warnings if w.code == "HEIGHT_UNDER_60_IN"
        ]
        assert sorted(w.code for w in dose.warnings) == sorted(
            w.code for w in alone[phase].warnings
        )
        assert all(w.phase in (None, phase) for w in dose.warnings)
        assert all(
            w.message.startswith(f"{phase.capitalize()} phase: ") for w in dose.warnings if w.phase
        )

    # The schedule, restated: loading on day 0 and every loading interval; maintenance from the
    # maintenance interval after the last loading start; courses count if they start before the
    # end of the authorization.
    step = loading.interval_days or 0
    loading_days = [i * step for i in range(loading.courses)]
    first = loading_days[-1] + maintenance_interval
    maintenance_days = list(range(first, authorization, maintenance_interval))
    expected = [("loading", day) for day in loading_days if day < authorization] + [
        ("maintenance", day) for day in maintenance_days
    ]
    assert [(c.phase, c.day) for c in regimen.schedule()] == expected
    assert regimen.maintenance_first_day == first
    assert regimen.loading.courses_in_authorization == sum(d < authorization for d in loading_days)
    assert regimen.maintenance.courses_in_authorization == len(maintenance_days)
    assert regimen.total_billing_units_in_authorization == sum(
        c.billing_units for c in regimen.schedule()
    )
    # Fewer maintenance courses than the maintenance regimen alone would have from day 0.
    assert (
        regimen.maintenance.courses_in_authorization < alone["maintenance"].courses_in_authorization
    )

    data = regimen.as_dict()
    assert set(data) == DOSING_KEYS | {"phases", "total_billing_units_in_authorization"}
    assert [p["phase"] for p in data["phases"]] == ["loading", "maintenance"]
    assert data["total_billing_units_in_authorization"] == sum(
        p["billing_units_in_authorization"] for p in data["phases"]
    )
    assert (
        data["billing_units_in_authorization"]
        == data["phases"][1]["billing_units_in_authorization"]
    )
    assert data["warnings"] == [w.as_dict() for w in regimen.warnings]
    assert json.loads(json.dumps(data)) == data


@settings(max_examples=100, deadline=None)
@given(request=requests_st, product=products_st)
def test_single_regimen_invariants(request: DoseRequest, product: Product) -> None:
    regimen = compute_regimen(request, product)
    dose = compute_dose(request, product)
    assert regimen.maintenance == dose
    assert regimen.warnings == dose.warnings
    assert regimen.as_dict() == {
        **dose.as_dict(),
        "total_billing_units_in_authorization": dose.billing_units_in_authorization,
    }
    assert len(regimen.schedule()) == dose.courses_in_authorization
