"""IVIG dosing exactly as DOMAIN.md section 5 says: weights, basis, vial rounding, billing units.

Plain Decimal arithmetic on one request and one product; it reads no files, decides nothing about
coverage, and must not import Prefect, click or anything beyond stdlib and priorauth.catalog/errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Context, Decimal, localcontext
from fractions import Fraction
from typing import Any, Literal, get_args

from priorauth.catalog import Product
from priorauth.errors import DosingError

Sex = Literal["F", "M"]
Basis = Literal["actual", "ideal", "adjusted", "policy"]

LB_TO_KG = Decimal("0.45359237")
IN_TO_CM = Decimal("2.54")

_CONTEXT = Context(prec=28)
_DEVINE_BASE_KG: dict[str, Decimal] = {"M": Decimal("50.0"), "F": Decimal("45.5")}
_DEVINE_KG_PER_IN = Decimal("2.3")
_DEVINE_FROM_IN = Decimal(60)
_ADJUSTMENT_FACTOR = Decimal("0.4")
_POLICY_BMI = Decimal(30)
_POLICY_OVER_IDEAL = Decimal("1.2")
_TEN_PERCENT = Decimal("0.1")
_MAX_G_PER_KG_PER_COURSE = Decimal(2)
_MAX_G_PER_KG_PER_DAY = Decimal(1)
_MAX_DAYS = 5
_MIN_INTERVAL_DAYS = 21


@dataclass(frozen=True)
class DoseRequest:
    """What the prescriber asks for: weight in kg, height in cm (convert pounds, inches first)."""

    sex: Sex
    height_cm: Decimal
    weight_kg: Decimal
    g_per_kg_per_course: Decimal
    days_per_course: int = 1
    interval_days: int | None = None
    authorization_days: int = 180
    basis: Basis = "policy"


@dataclass(frozen=True)
class DoseWarning:
    """A dosing finding for the pharmacist; never stops the letter."""

    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class VialCount:
    size_g: Decimal
    count: int


@dataclass(frozen=True)
class Dose:
    """The computed dose with exact values; `weight_basis` is the basis actually used."""

    weight_basis: Literal["actual", "ideal", "adjusted"]
    requested_basis: Basis
    actual_weight_kg: Decimal
    ideal_weight_kg: Decimal
    adjusted_weight_kg: Decimal
    bmi: Decimal
    dosing_weight_kg: Decimal
    g_per_kg_per_course: Decimal
    days_per_course: int
    calculated_g_per_day: Decimal
    dispensed_g_per_day: Decimal
    vials_per_day: tuple[VialCount, ...]
    dispensed_g_per_course: Decimal
    billing_units_per_course: int
    interval_days: int | None
    authorization_days: int
    courses_in_authorization: int
    billing_units_in_authorization: int
    warnings: tuple[DoseWarning, ...]

    def as_dict(self) -> dict[str, Any]:
        """The machine-readable `dosing` block: Decimals as full-precision floats, counts as int."""
        return {
            "weight_basis": self.weight_basis,
            "requested_basis": self.requested_basis,
            "actual_weight_kg": float(self.actual_weight_kg),
            "ideal_weight_kg": float(self.ideal_weight_kg),
            "adjusted_weight_kg": float(self.adjusted_weight_kg),
            "bmi": float(self.bmi),
            "dosing_weight_kg": float(self.dosing_weight_kg),
            "g_per_kg_per_course": float(self.g_per_kg_per_course),
            "days_per_course": self.days_per_course,
            "calculated_g_per_day": float(self.calculated_g_per_day),
            "dispensed_g_per_day": float(self.dispensed_g_per_day),
            "vials_per_day": [
                {"size_g": float(v.size_g), "count": v.count} for v in self.vials_per_day
            ],
            "dispensed_g_per_course": float(self.dispensed_g_per_course),
            "billing_units_per_course": self.billing_units_per_course,
            "interval_days": self.interval_days,
            "authorization_days": self.authorization_days,
            "courses_in_authorization": self.courses_in_authorization,
            "billing_units_in_authorization": self.billing_units_in_authorization,
            "warnings": [w.as_dict() for w in self.warnings],
        }


def pounds_to_kg(lb: Decimal) -> Decimal:
    with localcontext(_CONTEXT):
        return _decimal(lb, "weight in pounds") * LB_TO_KG


def inches_to_cm(inches: Decimal) -> Decimal:
    with localcontext(_CONTEXT):
        return _decimal(inches, "height in inches") * IN_TO_CM


def format_kg(x: Decimal | int) -> str:
    """A weight (or BMI) for text: to 0.1, halves rounded up ("72.1")."""
    return _rounded(x, Decimal("0.1"))


def format_g(x: Decimal | int) -> str:
    """Grams for text: to 0.01, halves rounded up ("28.86")."""
    return _rounded(x, Decimal("0.01"))


def compute_dose(request: DoseRequest, product: Product) -> Dose:
    """Dose `request` with `product`; raise DosingError when the inputs give no dose."""
    with localcontext(_CONTEXT):
        return _compute(request, product)


def round_to_vials(
    calculated_g: Decimal, vial_sizes_g: Sequence[Decimal]
) -> tuple[Decimal, tuple[VialCount, ...]]:
    """The grams to dispense for one infusion day and the vials that make them, largest first.

    Nearest reachable total (tie: the lower); if that is more than 10% below `calculated_g`, the
    smallest reachable total at or above it. Then the fewest vials; tie: more of the largest size,
    then of the next largest, and so on.
    """
    with localcontext(_CONTEXT):
        calculated = _decimal(calculated_g, "calculated dose")
        if calculated <= 0:
            raise DosingError(f"calculated dose must be above 0 g, got {calculated}")
        sizes = sorted({_decimal(size, "vial size") for size in vial_sizes_g}, reverse=True)
        if not sizes:
            raise DosingError("the product lists no vial sizes")
        if sizes[-1] <= 0:
            raise DosingError(f"vial sizes must be above 0 g, got {sizes[-1]}")

        # Work in whole steps: the step is the greatest common divisor of the vial sizes.
        fractions = [Fraction(size) for size in sizes]
        denominator = math.lcm(*(f.denominator for f in fractions))
        scaled = [int(f * denominator) for f in fractions]
        step = math.gcd(*scaled)
        units = [s // step for s in scaled]  # vial sizes in steps, largest first
        target = Fraction(calculated) * denominator / step  # calculated dose in steps

        # A fewest-vials combination never holds L/gcd(L, u) vials of a size u smaller than the
        # largest size L (u/gcd(L, u) vials of size L make the same total with fewer vials), so
        # the smaller sizes in it add up to at most `slack`. Every candidate total is above target - L, so each has at
        # least `shift` largest vials in its best combination: set them aside to keep the search
        # small, and add them back at the end. Reachability is unchanged by the shift as well.
        largest, smallest = units[0], units[-1]
        slack = sum((largest // math.gcd(largest, u) - 1) * u for u in units[1:])
        shift = max(0, math.floor((target - largest - slack) / largest))
        local = target - shift * largest
        best = _fewest_vials(math.floor(local) + smallest, units)

        below = next(t for t in range(math.floor(local), -1, -1) if best[t] is not None)
        above = next(t for t in range(math.ceil(local), len(best)) if best[t] is not None)
        chosen = below if local - below <= above - local else above
        if target - (chosen + shift * largest) > target * Fraction(_TEN_PERCENT):
            chosen = above

        key = best[chosen]
        assert key is not None
        counts = [-k for k in key[1:]]
        counts[0] += shift
        vials = tuple(
            VialCount(size_g=size, count=count)
            for size, count in zip(sizes, counts, strict=True)
            if count
        )
        dispensed = sum((v.size_g * v.count for v in vials), Decimal(0))
        return dispensed, vials


def _fewest_vials(limit: int, units: list[int]) -> list[tuple[int, ...] | None]:
    """For each total 0..limit (in steps): None if unreachable, else the best combination's key.

    The key is (vial count, -count of the largest size, -count of the next, ...), so the smallest
    key is the preferred combination. The order survives adding one vial to both sides, so the
    best combination for a total extends the best combination for some smaller total.
    """
    best: list[tuple[int, ...] | None] = [None] * (limit + 1)
    best[0] = (0,) * (len(units) + 1)
    for total in range(1, limit + 1):
        choice: tuple[int, ...] | None = None
        for i, unit in enumerate(units):
            if unit > total or (previous := best[total - unit]) is None:
                continue
            candidate = list(previous)
            candidate[0] += 1
            candidate[i + 1] -= 1
            if choice is None or tuple(candidate) < choice:
                choice = tuple(candidate)
        best[total] = choice
    return best


def _compute(request: DoseRequest, product: Product) -> Dose:
    if request.sex not in get_args(Sex):
        raise DosingError(f"sex must be F or M, got {request.sex!r}")
    if request.basis not in get_args(Basis):
        raise DosingError(
            f"weight basis must be one of {', '.join(get_args(Basis))}, got {request.basis!r}"
        )
    height_cm = _positive(request.height_cm, "height")
    weight = _positive(request.weight_kg, "weight")
    g_per_kg = _positive(request.g_per_kg_per_course, "g/kg per course")
    days = _whole(request.days_per_course, "infusion days per course")
    authorization_days = _whole(request.authorization_days, "authorization days")
    interval = request.interval_days
    if interval is not None:
        interval = _whole(interval, "interval between courses in days")
    billing_unit_mg = _whole(product.billing_unit_mg, f"{product.id}: billing unit in mg")

    height_in = height_cm / IN_TO_CM
    ideal = _DEVINE_BASE_KG[request.sex] + _DEVINE_KG_PER_IN * (height_in - _DEVINE_FROM_IN)
    adjusted = ideal + _ADJUSTMENT_FACTOR * (weight - ideal)
    height_m = height_cm / 100
    bmi = weight / (height_m * height_m)

    basis: Literal["actual", "ideal", "adjusted"]
    if request.basis == "policy":
        if weight <= ideal:
            basis = "actual"
        elif bmi >= _POLICY_BMI or weight >= _POLICY_OVER_IDEAL * ideal:
            basis = "adjusted"
        else:
            basis = "actual"
    else:
        basis = request.basis
    if basis != "actual" and ideal <= 0:
        raise DosingError(
            f"a height of {_plain(height_cm, '0.1')} cm gives an ideal body weight of "
            f"{format_kg(ideal)} kg, so the {request.basis} basis cannot be used; "
            "dose on actual weight"
        )
    dosing_weight = {"actual": weight, "ideal": ideal, "adjusted": adjusted}[basis]

    calculated = g_per_kg * dosing_weight / days
    dispensed, vials = round_to_vials(calculated, product.vial_sizes_g)
    per_course = dispensed * days
    units = per_course * 1000 / billing_unit_mg
    if units != units.to_integral_value():
        raise DosingError(
            f"{format_g(per_course)} g of {product.name} is {units.normalize():f} billing units "
            f"of {billing_unit_mg} mg, not a whole number"
        )
    courses = 1 if interval is None else (authorization_days - 1) // interval + 1

    warnings = _warnings(g_per_kg, days, calculated, dispensed, height_cm, height_in, interval)
    return Dose(
        weight_basis=basis,
        requested_basis=request.basis,
        actual_weight_kg=weight,
        ideal_weight_kg=ideal,
        adjusted_weight_kg=adjusted,
        bmi=bmi,
        dosing_weight_kg=dosing_weight,
        g_per_kg_per_course=g_per_kg,
        days_per_course=days,
        calculated_g_per_day=calculated,
        dispensed_g_per_day=dispensed,
        vials_per_day=vials,
        dispensed_g_per_course=per_course,
        billing_units_per_course=int(units),
        interval_days=interval,
        authorization_days=authorization_days,
        courses_in_authorization=courses,
        billing_units_in_authorization=int(units) * courses,
        warnings=tuple(warnings),
    )


def _warnings(
    g_per_kg: Decimal,
    days: int,
    calculated: Decimal,
    dispensed: Decimal,
    height_cm: Decimal,
    height_in: Decimal,
    interval: int | None,
) -> list[DoseWarning]:
    found: list[DoseWarning] = []
    if g_per_kg > _MAX_G_PER_KG_PER_COURSE:
        found.append(
            DoseWarning(
                "G_PER_KG_ABOVE_2",
                f"{_plain(g_per_kg)} g/kg per course is above 2.0 g/kg.",
            )
        )
    if g_per_kg / days > _MAX_G_PER_KG_PER_DAY:
        found.append(
            DoseWarning(
                "DAILY_ABOVE_1_G_PER_KG",
                f"{_plain(g_per_kg)} g/kg over {_days(days)} is {_plain(g_per_kg / days)} g/kg "
                "on one day, above 1 g/kg a day.",
            )
        )
    if days > _MAX_DAYS:
        found.append(
            DoseWarning(
                "MORE_THAN_5_DAYS", f"{_days(days)} of infusion in one course is more than 5."
            )
        )
    difference = dispensed - calculated
    if abs(difference) > _TEN_PERCENT * calculated:
        direction = "above" if difference > 0 else "below"
        found.append(
            DoseWarning(
                "DISPENSED_DIFFERS_10PCT",
                f"The dispensed {format_g(dispensed)} g a day is "
                f"{_plain(abs(difference) * 100 / calculated, '0.1')}% {direction} the calculated "
                f"{format_g(calculated)} g, more than 10%.",
            )
        )
    if height_in < _DEVINE_FROM_IN:
        found.append(
            DoseWarning(
                "HEIGHT_UNDER_60_IN",
                f"Height {_plain(height_cm, '0.1')} cm ({_plain(height_in, '0.1')} in) is under "
                "60 in; the ideal body weight formula is extended linearly below 60 in.",
            )
        )
    if interval is not None and interval < _MIN_INTERVAL_DAYS:
        found.append(
            DoseWarning(
                "INTERVAL_UNDER_21_DAYS",
                f"Courses every {_days(interval)} is an interval under 21 days.",
            )
        )
    return found


def _decimal(value: object, what: str) -> Decimal:
    """`value` as a finite Decimal; floats go through str() so 2.5 stays exactly 2.5."""
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float | str):
        raise DosingError(f"{what} must be a number, got {value!r}")
    try:
        number = Decimal(str(value)) if isinstance(value, float) else Decimal(value)
    except ArithmeticError:
        raise DosingError(f"{what} must be a number, got {value!r}") from None
    if not number.is_finite():
        raise DosingError(f"{what} must be a finite number, got {value!r}")
    return number


def _positive(value: object, what: str) -> Decimal:
    number = _decimal(value, what)
    if number <= 0:
        raise DosingError(f"{what} must be above 0, got {number}")
    return number


def _whole(value: object, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise DosingError(f"{what} must be a whole number, got {value!r}")
    if value < 1:
        raise DosingError(f"{what} must be at least 1, got {value}")
    return value


def _rounded(x: Decimal | int, quantum: Decimal) -> str:
    with localcontext(_CONTEXT):
        return str(_decimal(x, "value").quantize(quantum, rounding=ROUND_HALF_UP))


def _plain(x: Decimal, places: str = "0.01") -> str:
    """A number for a message: rounded half up to `places`, without trailing zeros."""
    return f"{x.quantize(Decimal(places), rounding=ROUND_HALF_UP).normalize():f}"


def _days(n: int) -> str:
    return f"{n} day" if n == 1 else f"{n} days"
