"""IVIG dosing exactly as DOMAIN.md section 5 says: weights, basis, vial rounding, billing units.

Plain Decimal arithmetic on one request (with an optional loading phase: `compute_regimen`) and
one product; it reads no files, decides nothing about coverage, and must not import Prefect, click
or anything beyond stdlib and priorauth.catalog/errors.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
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
    phase: Literal["loading", "maintenance"] | None = None  # set only in a phased regimen

    def as_dict(self) -> dict[str, str]:
        found = {"code": self.code, "message": self.message}
        if self.phase is not None:
            found["phase"] = self.phase
        return found


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


@dataclass(frozen=True)
class LoadingPhase:
    """Loading courses given before the maintenance regimen (the request's own fields).

    Same patient, product, weight basis and authorization period as the maintenance request;
    courses start on day 0 and then every `interval_days` (needed, and allowed, only when
    `courses` is above 1). Maintenance starts the maintenance interval after the last loading
    course starts.
    """

    g_per_kg_per_course: Decimal
    days_per_course: int = 1
    courses: int = 1
    interval_days: int | None = None

    def as_dict(self) -> dict[str, Any]:
        """The loading request as `summary.json` `inputs.loading` can show it."""
        return {
            "g_per_kg_per_course": float(self.g_per_kg_per_course),
            "days_per_course": self.days_per_course,
            "courses": self.courses,
            "interval_days": self.interval_days,
        }


@dataclass(frozen=True)
class Course:
    """One scheduled course inside the authorization period: its phase, its start (days after
    the first course) and its billing units."""

    phase: Literal["loading", "maintenance"]
    day: int
    billing_units: int


@dataclass(frozen=True)
class Regimen:
    """A whole request: the maintenance (or only) dose and, optionally, a loading dose before it.

    Each phase is a `Dose` computed exactly as DOMAIN.md §5 says, except that its
    `courses_in_authorization` and `billing_units_in_authorization` count only that phase's
    courses on the phased schedule (loading from day 0, maintenance from
    `maintenance_first_day`), and that, with a loading phase, its warnings name the phase.
    """

    maintenance: Dose
    loading: Dose | None = None
    loading_courses: int = 0  # courses requested (some may fall after the authorization period)
    maintenance_first_day: int = 0

    @property
    def phases(self) -> tuple[tuple[Literal["loading", "maintenance"], Dose], ...]:
        if self.loading is None:
            return (("maintenance", self.maintenance),)
        return (("loading", self.loading), ("maintenance", self.maintenance))

    @property
    def total_billing_units_in_authorization(self) -> int:
        return sum(dose.billing_units_in_authorization for _, dose in self.phases)

    @property
    def warnings(self) -> tuple[DoseWarning, ...]:
        """Every warning of the request once, loading phase first."""
        found: list[DoseWarning] = []
        for _, dose in self.phases:
            found += [w for w in dose.warnings if w not in found]
        return tuple(found)

    def schedule(self) -> tuple[Course, ...]:
        """The courses that start inside the authorization period, in order."""
        courses = []
        for phase, dose in self.phases:
            first = self.maintenance_first_day if phase == "maintenance" else 0
            step = dose.interval_days or 0
            courses += [
                Course(phase, first + i * step, dose.billing_units_per_course)
                for i in range(dose.courses_in_authorization)
            ]
        return tuple(courses)

    def as_dict(self) -> dict[str, Any]:
        """The `dosing` block. One regimen: `Dose.as_dict()` plus
        `total_billing_units_in_authorization`. With loading: the maintenance phase's keys
        (courses and units in the authorization counting maintenance only), every warning of the
        request, `phases` (loading, then maintenance: `phase`, `first_course_day`, loading
        `courses`, and the §5 keys of that phase) and the total of both phases."""
        data = self.maintenance.as_dict()
        if self.loading is not None:
            data["warnings"] = [w.as_dict() for w in self.warnings]
            data["phases"] = [
                {
                    "phase": "loading",
                    "first_course_day": 0,
                    "courses": self.loading_courses,
                    **self.loading.as_dict(),
                },
                {
                    "phase": "maintenance",
                    "first_course_day": self.maintenance_first_day,
                    **self.maintenance.as_dict(),
                },
            ]
        data["total_billing_units_in_authorization"] = self.total_billing_units_in_authorization
        return data


def compute_regimen(
    request: DoseRequest, product: Product, loading: LoadingPhase | None = None
) -> Regimen:
    """Dose `request` (the maintenance, or only, regimen) and its optional `loading` phase.

    Without loading this is `compute_dose` as a one-phase Regimen. With loading, the loading
    courses start on day 0 and every loading interval; maintenance starts `request.interval_days`
    after the last loading course starts (so it needs an interval), and only courses starting
    before `authorization_days` count. Raise DosingError when the inputs give no regimen.
    """
    with localcontext(_CONTEXT):
        if loading is None:
            return Regimen(maintenance=_compute(request, product))
        if request.interval_days is None:
            raise DosingError(
                "a loading phase needs the maintenance interval_days (maintenance starts that "
                "many days after the last loading course starts)"
            )
        courses = _whole(loading.courses, "loading courses")
        loading_interval = loading.interval_days
        if courses > 1:
            if loading_interval is None:
                raise DosingError(
                    f"{courses} loading courses need the days between their starts "
                    "(loading interval_days)"
                )
            loading_interval = _whole(loading_interval, "days between loading courses")
        elif loading_interval is not None:
            raise DosingError(
                "a loading interval is the time between loading courses: give it only with "
                "more than 1 loading course (maintenance follows after the maintenance interval)"
            )
        loading_request = replace(
            request,
            g_per_kg_per_course=loading.g_per_kg_per_course,
            days_per_course=loading.days_per_course,
            interval_days=loading_interval,
        )
        try:
            loading_dose = _compute(loading_request, product)
        except DosingError as exc:
            raise DosingError(f"loading phase: {exc}") from None
        maintenance = _compute(request, product)

        authorization_days = maintenance.authorization_days
        interval = maintenance.interval_days
        assert interval is not None
        last_loading_day = (courses - 1) * (loading_interval or 0)
        first_maintenance_day = last_loading_day + interval
        loading_in_authorization = min(
            courses, _courses_starting_before(authorization_days, 0, loading_interval)
        )
        maintenance_in_authorization = _courses_starting_before(
            authorization_days, first_maintenance_day, interval
        )
        return Regimen(
            loading=_phased(loading_dose, "loading", loading_in_authorization),
            maintenance=_phased(maintenance, "maintenance", maintenance_in_authorization),
            loading_courses=courses,
            maintenance_first_day=first_maintenance_day,
        )


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


def _courses_starting_before(authorization_days: int, first_day: int, interval: int | None) -> int:
    """Courses starting on `first_day`, then every `interval` days (once with no interval), that
    start before day `authorization_days` (day 0 is the first day of the authorization)."""
    if first_day >= authorization_days:
        return 0
    if interval is None:
        return 1
    return (authorization_days - 1 - first_day) // interval + 1


def _phased(dose: Dose, phase: Literal["loading", "maintenance"], courses: int) -> Dose:
    """`dose` as one phase of a regimen: its courses on the phased schedule, its warnings worded
    with the phase (a height warning is about the patient, not the phase, and stays as it is)."""
    label = f"{phase.capitalize()} phase: "
    warnings = tuple(
        w
        if w.code == "HEIGHT_UNDER_60_IN"
        else DoseWarning(w.code, label + w.message[0].lower() + w.message[1:], phase)
        for w in dose.warnings
    )
    return replace(
        dose,
        courses_in_authorization=courses,
        billing_units_in_authorization=dose.billing_units_per_course * courses,
        warnings=warnings,
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
