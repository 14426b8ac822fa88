"""Evaluate a case against its payer policy: every criterion `met`, `not_met`, `insufficient` or
`not_applicable`, with the case fields used as evidence.

"Insufficient" is not "not met": missing evidence becomes a document request for the coordinator,
never a predicted denial (../shared/POLICIES.md §1). This module reads the case; it writes no words
for the letter beyond each item's short detail and request.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date, timedelta
from decimal import Decimal
from typing import Any

from priorauth.letters.policies import Criterion, Group, Policy, policy_wording

# Unit conversions a threshold may need (to the policy's unit). Immune globulin levels are
# reported in mg/dL in the US and g/L elsewhere: 1 g/L = 100 mg/dL.
UNIT_FACTORS: dict[tuple[str, str], Decimal] = {
    ("g/l", "mg/dl"): Decimal(100),
    ("mg/dl", "g/l"): Decimal("0.01"),
}


@dataclass(frozen=True)
class Item:
    id: str
    text: str
    verdict: str
    evidence: tuple[str, ...] = ()
    request: str | None = None
    detail: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "text": self.text,
            "verdict": self.verdict,
            "evidence": list(self.evidence),
            "request": self.request,
            "detail": self.detail,
        }


@dataclass(frozen=True)
class Evaluation:
    policy: Policy
    phase: str  # initial | renewal
    verdict: str
    items: tuple[Item, ...]
    override: bool = False

    @property
    def needs_documents(self) -> bool:
        """Some criterion lacks its evidence (even if another is not met): status needs_info."""
        return bool(self.insufficient)

    @property
    def insufficient(self) -> list[Item]:
        return [i for i in self.items if i.verdict == "insufficient"]

    @property
    def not_met(self) -> list[Item]:
        return [i for i in self.items if i.verdict == "not_met"]

    def as_dict(self) -> dict[str, Any]:
        out = {
            "policy_id": self.policy.policy_id,
            "version": self.policy.version,
            "title": self.policy.title,
            "effective_date": self.policy.effective_date.isoformat(),
            "source": self.policy.source.modelled_on,
            "coverage": self.policy.coverage,
            "phase": self.phase,
            "verdict": self.verdict,
            "items": [i.as_dict() for i in self.items],
        }
        if self.override:
            out["override"] = True
        return out


def needs_documents(criteria: dict[str, Any] | None) -> bool:
    """The same test as Evaluation.needs_documents, on summary.json's `criteria` mapping."""
    return any(i.get("verdict") == "insufficient" for i in (criteria or {}).get("items", []))


def combine(verdicts: list[str], mode: str) -> str:
    """A group's verdict from its members' (not_applicable members are ignored)."""
    counted = [v for v in verdicts if v != "not_applicable"]
    if not counted:
        return "not_applicable"
    if mode == "all":
        if "not_met" in counted:
            return "not_met"
        return "insufficient" if "insufficient" in counted else "met"
    if "met" in counted:
        return "met"
    return "insufficient" if "insufficient" in counted else "not_met"


@dataclass
class _Facts:
    """The case seen by the checks, with the letter date for time windows."""

    case: Any
    catalog: Any
    dose: Any
    on: date
    product: Any = field(init=False)

    def __post_init__(self) -> None:
        self.product = self.catalog.product(self.case.request.product_id)

    def within(self, when: date | None, days: int | None) -> bool:
        return when is not None and (days is None or when >= self.on - timedelta(days=days))


def _contains(text: str | None, needles: tuple[str, ...]) -> bool:
    low = (text or "").lower()
    return any(n.lower() in low for n in needles)


def _measurements(facts: _Facts, spec: Any) -> list[tuple[int, Any]]:
    values = getattr(facts.case.clinical, spec.source)
    return [
        (i, m)
        for i, m in enumerate(values)
        if _contains(m.name, spec.names) and not _contains(m.name, spec.exclude)
    ]


def _in_unit(value: Decimal, unit: str | None, wanted: str | None) -> Decimal | None:
    if wanted is None or (unit or "").strip().lower() == wanted.strip().lower():
        return value
    factor = UNIT_FACTORS.get(((unit or "").strip().lower(), wanted.strip().lower()))
    return value * factor if factor is not None else None


def _fmt(value: Decimal) -> str:
    number = value.normalize()
    return f"{int(number):,}" if number == number.to_integral() else format(number, "f")


def _result(verdict: str, evidence: list[str], detail: str | None = None) -> tuple:
    return verdict, tuple(evidence), detail


def steroid_fact(case: Any) -> tuple[str | None, str]:
    """(response to high-dose corticosteroids, its field path) for the episode being treated."""
    if case.clinical.steroid_response:
        return case.clinical.steroid_response, "clinical.steroid_response"
    if case.clinical.relapses:
        i, latest = max(enumerate(case.clinical.relapses), key=lambda p: (p[1].date, p[0]))
        if latest.steroid_response:
            return latest.steroid_response, f"clinical.relapses[{i}].steroid_response"
    return None, "clinical.steroid_response"


def _check(kind: str, spec: Any, facts: _Facts) -> tuple[str, tuple[str, ...], str | None]:
    """(verdict, evidence field paths, detail) for one check; "insufficient" when absent."""
    case = facts.case
    if kind == "diagnosis":
        code = case.diagnoses[0].code
        return _result(
            "met" if code.startswith(spec.codes) else "not_met",
            ["diagnoses[0].code"],
            f"primary diagnosis {code}",
        )
    if kind == "diagnosis_confirmed_by":
        who = case.diagnoses[0].confirmed_by
        if not who:
            return _result("insufficient", ["diagnoses[0].confirmed_by"])
        verdict = "met" if _contains(who, spec.any_of) else "not_met"
        return _result(verdict, ["diagnoses[0].confirmed_by"], f"confirmed by {who}")
    if kind == "prescriber_specialty":
        specialty = case.prescriber.specialty
        verdict = "met" if _contains(specialty, spec.any_of) else "not_met"
        return _result(verdict, ["prescriber.specialty"], f"prescriber: {specialty}")
    if kind == "situation":
        situation = case.clinical_situation
        if not situation:
            return _result("insufficient", ["clinical_situation"])
        return _result("met" if situation in spec.any_of else "not_met", ["clinical_situation"])
    if kind == "measurement":
        return _measurement(spec, facts)
    if kind == "measurement_present":
        found = [
            (i, m) for i, m in _measurements(facts, spec) if facts.within(m.date, spec.within_days)
        ]
        paths = [f"clinical.{spec.source}[{i}]" for i, _ in found]
        return _result("met" if len(found) >= spec.count else "insufficient", paths)
    if kind == "measurement_change":
        found = sorted(_measurements(facts, spec), key=lambda p: p[1].date)
        if len(found) < 2:
            return _result("insufficient", [f"clinical.{spec.source}[{i}]" for i, _ in found])
        (i0, first), (i1, last) = found[0], found[-1]
        change = (
            last.value - first.value if spec.direction == "increase" else first.value - last.value
        )
        return _result(
            "met" if change >= spec.min_change else "not_met",
            [f"clinical.{spec.source}[{i0}]", f"clinical.{spec.source}[{i1}]"],
            f"{first.name} {_fmt(first.value)} → {_fmt(last.value)}",
        )
    if kind == "prior_therapy":
        found = [
            i
            for i, t in enumerate(case.prior_therapies)
            if t.outcome in spec.outcomes and (not spec.drugs or _contains(t.drug, spec.drugs))
        ]
        verdict = "met" if len(found) >= spec.count else "insufficient"
        return _result(
            verdict,
            [f"prior_therapies[{i}]" for i in found],
            f"{len(found)} of {spec.count} required documented",
        )
    if kind == "relapse":
        found = [
            i
            for i, r in enumerate(case.clinical.relapses)
            if facts.within(r.date, spec.within_days)
            and (not spec.severity or r.severity in spec.severity)
        ]
        verdict = "met" if len(found) >= spec.count else "insufficient"
        return _result(verdict, [f"clinical.relapses[{i}]" for i in found])
    if kind == "steroid_response":
        # The current episode's response (clinical.steroid_response), else the latest relapse's:
        # an older relapse's response says nothing about the one being treated.
        response, path = steroid_fact(case)
        if response is None:
            return _result("insufficient", ["clinical.steroid_response"])
        verdict = "met" if response in spec.any_of else "not_met"
        return _result(verdict, [path], f"steroid response: {response.replace('_', ' ')}")
    if kind == "pregnancy_status":
        status = case.clinical.pregnancy_status
        verdict = "met" if status in spec.any_of else "not_met"
        return _result(verdict, ["clinical.pregnancy_status"] if status else [])
    if kind == "mri_activity":
        recent = [
            (i, m)
            for i, m in enumerate(case.clinical.mri)
            if facts.within(m.date, spec.within_days)
        ]
        if not recent:
            return _result("insufficient", ["clinical.mri"])
        active = [
            i for i, m in recent if (m.new_t2_lesions or 0) >= 1 or (m.enhancing_lesions or 0) >= 1
        ]
        if active:
            return _result("met", [f"clinical.mri[{i}]" for i in active])
        return _result("not_met", [f"clinical.mri[{i}]" for i, _ in recent])
    if kind == "finding":
        recorded = [(i, f) for i, f in enumerate(case.clinical.findings) if f.name in spec.names]
        present = [i for i, f in recorded if f.present]
        absent = {f.name for _, f in recorded if not f.present}
        paths = [f"clinical.findings[{i}]" for i, _ in recorded]
        if len(present) >= spec.min_present:
            return _result("met", paths)
        if len(set(spec.names) - absent) < spec.min_present:
            return _result("not_met", paths)
        return _result("insufficient", paths)
    if kind == "attachment":
        found = [i for i, a in enumerate(case.attachments) if a.kind in spec.kinds]
        return _result("met" if found else "insufficient", [f"attachments[{i}]" for i in found])
    if kind == "field":
        value: Any = case
        for part in spec.path.split("."):
            value = getattr(value, part, None)
        return _result("met" if value not in (None, "", [], ()) else "insufficient", [spec.path])
    if kind == "renewal":
        return _result("met" if case.request.renewal else "not_met", ["request.renewal"])
    raise ValueError(f"unknown check {kind}")  # the policy model admits no other kind


def _measurement(spec: Any, facts: _Facts) -> tuple[str, tuple[str, ...], str | None]:
    found = [
        (i, m) for i, m in _measurements(facts, spec) if facts.within(m.date, spec.within_days)
    ]
    paths = [f"clinical.{spec.source}[{i}]" for i, _ in found]
    if len(found) < spec.count:
        return _result("insufficient", paths)

    def passes(m: Any) -> bool | None:
        value = _in_unit(m.value, m.unit, spec.unit)
        if value is None:
            return None
        if spec.below is not None:
            return value < spec.below
        if spec.at_most is not None:
            return value <= spec.at_most
        if spec.above is not None:
            return value > spec.above
        return value >= spec.at_least

    judged = [(i, m, passes(m)) for i, m in found]
    if all(ok is None for _, _, ok in judged):
        units = sorted({m.unit or "no unit" for _, m, _ in judged})
        return _result("insufficient", paths, f"reported in {', '.join(units)}, not {spec.unit}")
    meeting = sorted([m.date for _, m, ok in judged if ok], reverse=True)
    chosen: list[date] = []
    for when in meeting:  # greedily the most recent values that are far enough apart
        if all(abs((when - c).days) >= spec.min_days_apart for c in chosen):
            chosen.append(when)
    detail = "; ".join(
        f"{m.name} {_fmt(m.value)}{' ' + m.unit if m.unit else ''} on {m.date.isoformat()}"
        for _, m, _ in judged
    )
    return _result("met" if len(chosen) >= spec.count else "not_met", paths, detail)


def _request(criterion: Criterion, check: Any) -> str:
    """The document request for an insufficient criterion, in the coordinator's terms."""
    if criterion.request:
        return f"Criterion {criterion.id}: {policy_wording(criterion.request)}"
    kind, spec = check.kind, check.spec
    missing = {
        "diagnosis_confirmed_by": "the diagnosis has no `confirmed_by` (who confirmed it)",
        "situation": "no `clinical_situation` is given",
        "measurement": f"fewer than {getattr(spec, 'count', 1)} usable result(s) of "
        f"{', '.join(getattr(spec, 'names', ()))}",
        "measurement_present": f"no {', '.join(getattr(spec, 'names', ()))} recorded",
        "measurement_change": f"fewer than two {', '.join(getattr(spec, 'names', ()))} results "
        "to show a change",
        "prior_therapy": "fewer prior therapies documented than the policy requires",
        "relapse": "not enough relapses documented in the time window",
        "steroid_response": "no response to corticosteroids recorded",
        "mri_activity": "no MRI in the time window",
        "finding": f"none of the findings {', '.join(getattr(spec, 'names', ()))} recorded",
        "attachment": "no attachment of kind "
        + " or ".join(f"`{k}`" for k in getattr(spec, "kinds", ())),
        "field": f"`{getattr(spec, 'path', '')}` is empty",
    }.get(kind, "the case does not show it")
    return f"Criterion {criterion.id}: {criterion.wording.rstrip('.')} — {missing}"


def _walk(node: Criterion | Group, facts: _Facts, items: list[Item]) -> str:
    if isinstance(node, Criterion):
        results = [_check(c.kind, c.spec, facts) for c in node.all_checks()]
        verdict = combine([r[0] for r in results], "all")
        evidence = tuple(dict.fromkeys(e for r in results for e in r[1]))
        detail = "; ".join(r[2] for r in results if r[2]) or None
        first_gap = next(
            (c for c, r in zip(node.all_checks(), results, strict=True) if r[0] == "insufficient"),
            None,
        )
        if verdict == "insufficient" and node.absent == "not_met":
            verdict = "not_met"
        items.append(
            Item(
                node.id,
                node.wording,
                verdict,
                evidence,
                _request(node, first_gap) if verdict == "insufficient" else None,
                detail,
            )
        )
        return verdict
    spans: list[tuple[int, int, str]] = []
    for child in node.items:
        start = len(items)
        spans.append((start, 0, _walk(child, facts, items)))
        spans[-1] = (start, len(items), spans[-1][2])
    verdict = combine([v for _, _, v in spans], node.mode)
    if node.mode == "any" and verdict == "met":
        # Another alternative is met: the others are not needed, and ask for nothing.
        for start, end, child_verdict in spans:
            if child_verdict != "met":
                for k in range(start, end):
                    items[k] = replace(
                        items[k],
                        verdict="not_applicable",
                        request=None,
                        detail="not needed: another alternative is met",
                    )
    return verdict


def _dose_items(policy: Policy, facts: _Facts) -> list[Item]:
    """The policy's dose, product and site-of-care rules as checklist items (ids DOSE-*, …)."""
    rules, dose, case = policy.dose_rules, facts.dose, facts.case
    items: list[Item] = []
    if dose is None:
        return items
    if getattr(dose, "loading", None) is not None:  # a dosing.Regimen with a loading phase
        phases = [(label, d) for label, d in dose.phases]
    else:
        phases = [("", getattr(dose, "maintenance", dose))]
    if rules.weight_basis is not None:
        expected = rules.weight_basis
        used = phases[-1][1].weight_basis
        if expected in ("policy", "adjusted_if_bmi_30"):
            wants_adjusted = phases[-1][1].bmi >= 30 and used != "ideal"
            ok = used == "adjusted" if wants_adjusted else True
            text = "Dose calculated on adjusted body weight when BMI is 30 or more."
        else:
            ok = used == expected
            text = f"Dose calculated on {expected} body weight."
        items.append(
            Item(
                "DOSE-BASIS",
                text,
                "met" if ok else "not_met",
                ("request.weight_basis", "patient.weight", "patient.height"),
                detail=f"BMI {phases[-1][1].bmi:.1f}, {used} body weight used",
            )
        )
    for label, phase in phases:
        suffix = f"-{label.upper()}" if label else ""
        name = f" ({label.lower()})" if label else ""
        if rules.max_g_per_kg_per_course is not None:
            ok = phase.g_per_kg_per_course <= rules.max_g_per_kg_per_course
            items.append(
                Item(
                    f"DOSE-COURSE{suffix}",
                    f"At most {_fmt(rules.max_g_per_kg_per_course)} g/kg per course{name}.",
                    "met" if ok else "not_met",
                    ("request.g_per_kg_per_course",),
                    detail=f"{_fmt(phase.g_per_kg_per_course)} g/kg per course",
                )
            )
        if rules.max_g_per_kg_per_day is not None:
            per_day = phase.g_per_kg_per_course / phase.days_per_course
            ok = per_day <= rules.max_g_per_kg_per_day
            items.append(
                Item(
                    f"DOSE-DAY{suffix}",
                    f"At most {_fmt(rules.max_g_per_kg_per_day)} g/kg on any day{name}.",
                    "met" if ok else "not_met",
                    ("request.g_per_kg_per_course", "request.days_per_course"),
                    detail=f"{_fmt(per_day)} g/kg per day",
                )
            )
        for cap in rules.unit_caps:
            if cap.phase not in ("any", label.lower() or "maintenance"):
                continue
            units = _units_in_window(phase, cap.window_days)
            items.append(
                Item(
                    f"UNITS-{cap.phase.upper()}-{cap.window_days}D",
                    f"At most {cap.units} billing units per {cap.window_days} days"
                    + (f" ({cap.phase})" if cap.phase != "any" else "")
                    + ".",
                    "met" if units <= cap.units else "not_met",
                    ("request",),
                    detail=f"{units} units in {cap.window_days} days",
                )
            )
    if policy.preferred_products:
        ok = facts.product.id in policy.preferred_products
        items.append(
            Item(
                "PRODUCT-PREFERRED",
                "A preferred product is requested, or failure of or stability on the "
                "preferred products is documented.",
                "met" if ok else "insufficient",
                ("request.product_id",),
                None
                if ok
                else "Criterion PRODUCT-PREFERRED: the requested product is not preferred — "
                "document failure of the preferred products or stability on this one",
                detail=facts.product.name,
            )
        )
    if policy.site_of_care.preferred:
        setting = case.site_of_care.setting
        ok = setting in policy.site_of_care.preferred or bool(case.site_of_care.rationale)
        items.append(
            Item(
                "SITE",
                "Treatment in a preferred site of care, or the reason another site is needed.",
                "met" if ok else "insufficient",
                ("site_of_care.setting", "site_of_care.rationale"),
                None
                if ok
                else "Criterion SITE: give `site_of_care.rationale` for this site of care",
                detail=setting.replace("_", " "),
            )
        )
    auth_days = phases[-1][1].authorization_days
    limit = policy.renewal_approval_days if case.request.renewal else policy.first_approval_days
    if limit is not None:
        items.append(
            Item(
                "AUTH-LENGTH",
                f"{'Renewal' if case.request.renewal else 'First'} approval for at most "
                f"{limit} days.",
                "met" if auth_days <= limit else "not_met",
                ("request.authorization_days",),
                detail=f"{auth_days} days requested",
            )
        )
    return items


def _units_in_window(dose: Any, window_days: int) -> int:
    """Billing units of the courses that start within any `window_days` window (the busiest)."""
    per_course = int(dose.billing_units_per_course)
    interval = dose.interval_days
    if interval is None:
        return per_course
    courses = min(int(dose.courses_in_authorization), (window_days - 1) // interval + 1)
    return per_course * max(1, courses)


def evaluate(case: Any, *, catalog: Any, policy: Policy, dose: Any, on: date) -> Evaluation:
    """Judge `case` against `policy` (initial or renewal criteria by `request.renewal`)."""
    facts = _Facts(case, catalog, dose, on)
    renewal = bool(case.request.renewal) and policy.renewal is not None
    group = policy.renewal if renewal else policy.initial
    assert group is not None
    items: list[Item] = []
    verdict = _walk(group, facts, items)
    extra = _dose_items(policy, facts)
    items.extend(extra)
    verdict = combine([verdict, *(i.verdict for i in extra)], "all")
    return Evaluation(policy, "renewal" if renewal else "initial", verdict, tuple(items))
