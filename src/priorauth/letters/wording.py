"""Letter wording: choose the jinja2 template for a case and render it into named sections.

Templates are looked up from most to least specific (payer + indication + situation, payer +
indication, indication + situation, indication, generic); each extends the next and overrides
only its blocks. jinja writes the words; reportlab (render.py) owns the page.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any

import jinja2

from priorauth.codes import icd_title as codes_title
from priorauth.letters.criteria import steroid_fact
from priorauth.letters.grounding import Ledger, resolve

SECTION_MARK = re.compile(r"^@@([a-z_]+)\s*$")

SITE_LABELS = {
    "infusion_center": "ambulatory infusion center",
    "home": "home infusion",
    "physician_office": "physician office",
    "hospital_outpatient": "hospital outpatient department",
}
# "Treatment will be given …" (a setting says where, never who: home nursing is the rationale's)
SITE_PHRASES = {
    "infusion_center": "in an ambulatory infusion center",
    "home": "at home (home infusion)",
    "physician_office": "in a physician office",
    "hospital_outpatient": "in a hospital outpatient department",
}
OUTCOME_LABELS = {
    "failure": "Failure",
    "intolerance": "Intolerance",
    "contraindication": "Contraindication",
}


def long_date(value: date | None) -> str:
    """November 20, 2026 (US letter style); an empty string for None."""
    return f"{value:%B} {value.day}, {value.year}" if value else ""


def short_date(value: date | None) -> str:
    return f"{value:%m/%d/%Y}" if value else ""


def fixed(value: Decimal | float | int, places: int) -> str:
    """A number rounded half-up to `places` decimals, for text (DOMAIN.md §5.11)."""
    quantum = Decimal(1).scaleb(-places)
    return str(Decimal(str(value)).quantize(quantum, rounding=ROUND_HALF_UP))


def kg(value: Decimal | float) -> str:
    return f"{fixed(value, 1)} kg"


def grams(value: Decimal | float) -> str:
    return f"{fixed(value, 2)} g"


def plain_number(value: Decimal | float | int) -> str:
    """2.0 → '2', 0.40 → '0.4', 2100 → '2,100'."""
    number = Decimal(str(value)).normalize()
    if number == number.to_integral():
        return f"{int(number):,}"
    return format(number, "f")


def frequency_text(interval_days: int | None, days_per_course: int) -> str:
    days = f"over {days_per_course} consecutive days" if days_per_course > 1 else "as one infusion"
    if interval_days is None:
        return f"a single course {'given ' if days_per_course == 1 else ''}{days}"
    if interval_days % 7 == 0:
        weeks = interval_days // 7
        every = "every week" if weeks == 1 else f"every {weeks} weeks"
    else:
        every = "every day" if interval_days == 1 else f"every {interval_days} days"
    return f"{every}, {days}"


@dataclass(frozen=True)
class Section:
    name: str
    paragraphs: tuple[str, ...]  # reportlab paragraph markup; a leading "- " marks a bullet


def make_environment(templates_dir: Path) -> jinja2.Environment:
    """The letters' jinja environment: strict about undefined names, autoescaped (the output is
    reportlab paragraph markup, where a bare & or < in a name would break or inject markup)."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(templates_dir / "letters"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=False,
    )
    env.filters.update(
        long_date=long_date,
        short_date=short_date,
        kg=kg,
        grams=grams,
        number=plain_number,
    )
    return env


def template_candidates(payer_id: str, indication: str, situation: str | None) -> list[str]:
    """Template names from most to least specific."""
    return [
        *payer_candidates(payer_id, indication, situation),
        *general_candidates(indication, situation),
    ]


def payer_candidates(payer_id: str, indication: str, situation: str | None) -> list[str]:
    names = [f"payers/{payer_id}/{indication}-{situation}.j2"] if situation else []
    return [*names, f"payers/{payer_id}/{indication}.j2"]


def general_candidates(indication: str, situation: str | None) -> list[str]:
    names = [f"{indication}-{situation}.j2"] if situation else []
    return [*names, f"{indication}.j2", "generic.j2"]


def split_sections(text: str) -> list[Section]:
    """Template output → sections. `@@name` starts a section; blank lines separate paragraphs."""
    sections: list[Section] = []
    name: str | None = None
    lines: list[str] = []

    def close() -> None:
        if name is None:
            return
        paragraphs: list[str] = []
        current: list[str] = []
        for line in [*lines, ""]:
            stripped = line.strip()
            if not stripped or stripped.startswith("- "):
                if current:
                    paragraphs.append(" ".join(current))
                current = [stripped] if stripped else []
            else:
                current.append(stripped)  # continues a paragraph or a bullet
        if paragraphs:
            sections.append(Section(name, tuple(paragraphs)))

    for line in text.splitlines():
        match = SECTION_MARK.match(line)
        if match:
            close()
            name, lines = match.group(1), []
        else:
            lines.append(line)
    close()
    return sections


def render_letter_text(
    env: jinja2.Environment,
    context: dict[str, Any],
    *,
    payer_id: str,
    indication: str,
    situation: str | None,
    ledger: Ledger,
) -> tuple[str, list[Section]]:
    """Render the most specific template for the case; return its name and the sections.

    A payer template extends `parent`, the most specific general template for the case, so a
    payer's override keeps the situation's wording and changes only its own blocks. `ledger`
    records every sentence and claim the letter makes (its `sentence` and `claim` functions are
    what the templates call)."""
    general = env.select_template(general_candidates(indication, situation))
    try:
        template = env.select_template(payer_candidates(payer_id, indication, situation))
    except jinja2.TemplatesNotFound:
        template = general
    text = template.render(
        {**context, "parent": general.name, "sentence": ledger.sentence, "claim": ledger.claim}
    )
    return str(template.name), split_sections(text)


BASIS_LABELS = {
    "actual": "actual body weight",
    "ideal": "ideal body weight (Devine)",
    "adjusted": "adjusted body weight (ideal + 0.4 × excess)",
}
PREGNANCY_TEXT = {
    "pregnant": "pregnant",
    "postpartum": "postpartum",
    "breastfeeding": "breastfeeding",
    "planning": "planning a pregnancy",
}
STEROID_TEXT = {
    "responded": "responded",
    "partial": "partial response",
    "no_response": "no response",
    "contraindicated": "contraindicated",
}
PLASMA_EXCHANGE = ("plasma exchange", "plasmapheresis", "plex")


def vials_text(vials: Any) -> str:
    return " + ".join(f"{v.count} × {plain_number(v.size_g)} g" for v in vials)


def as_given(value: Decimal) -> str:
    """A measured value as recorded: EDSS 4.0 stays 4.0 (plain_number would print 4)."""
    return format(value, "f")


MONTHS = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
]


def month_year(value: str | None) -> str:
    """'2022-04' → 'April 2022' (a label's revision month); '' when unknown."""
    if not value or not re.fullmatch(r"\d{4}-\d{2}", value):
        return value or ""
    year, month = value.split("-")
    return f"{MONTHS[int(month) - 1]} {year}"


def plural(count: int, one: str, many: str | None = None) -> str:
    """'1 course', '2 courses' (or the given plural)."""
    return f"{count:,} {one if count == 1 else (many or one + 's')}"


def join_words(parts: list[str]) -> str:
    """'a', 'a and b', 'a, b and c'."""
    if len(parts) <= 1:
        return "".join(parts)
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def outcome_text(therapies: Any) -> str:
    """'2 failed, 1 was not tolerated and 1 is contraindicated' (zero counts left out)."""
    counts = {k: 0 for k in OUTCOME_LABELS}
    for therapy in therapies:
        counts[therapy.outcome] += 1
    parts = []
    if counts["failure"]:
        parts.append(f"{counts['failure']} failed")
    if counts["intolerance"]:
        verb = "was" if counts["intolerance"] == 1 else "were"
        parts.append(f"{counts['intolerance']} {verb} not tolerated")
    if counts["contraindication"]:
        verb = "is" if counts["contraindication"] == 1 else "are"
        parts.append(f"{counts['contraindication']} {verb} contraindicated")
    return join_words(parts)


def time_frame(hours: int) -> str:
    """72 → '72 hours'; 360 → '15 days'."""
    return plural(hours // 24, "day") if hours > 72 and hours % 24 == 0 else plural(hours, "hour")


def phase_text(label: str, dose: Any) -> dict[str, Any]:
    """Everything the dosing paragraph of one regimen phase prints, rounded as DOMAIN.md §5.11."""
    per_course = dose.calculated_g_per_day * dose.days_per_course
    return {
        "key": label.lower(),
        "label": label,
        "g_per_kg": plain_number(dose.g_per_kg_per_course),
        "g_per_kg_per_day": plain_number(fixed(dose.g_per_kg_per_course / dose.days_per_course, 2)),
        "basis_label": BASIS_LABELS[dose.weight_basis],
        "dosing_weight": kg(dose.dosing_weight_kg),
        "actual_weight": kg(dose.actual_weight_kg),
        "ideal_weight": kg(dose.ideal_weight_kg),
        "bmi": fixed(dose.bmi, 1),
        "calculated_per_course": grams(per_course),
        "calculated_per_day": grams(dose.calculated_g_per_day),
        "days": dose.days_per_course,
        "days_n": dose.days_per_course,
        "dispensed_per_day": grams(dose.dispensed_g_per_day),
        "vials": vials_text(dose.vials_per_day),
        "per_course": grams(dose.dispensed_g_per_course),
        "units_per_course": plain_number(dose.billing_units_per_course),
        "units_in_authorization": plain_number(dose.billing_units_in_authorization),
        "courses": plural(int(dose.courses_in_authorization), "course"),
        "authorization_days": dose.authorization_days,
    }


def regimen_text(phases: list[tuple[str, Any]]) -> str:
    """'1 g/kg per course (every 3 weeks, over 2 consecutive days)', or loading then maintenance."""
    parts = []
    for label, dose in phases:
        g_per_kg = plain_number(dose.g_per_kg_per_course)
        frequency = frequency_text(dose.interval_days, dose.days_per_course)
        text = (
            f"{g_per_kg} g/kg as {frequency}"
            if dose.interval_days is None
            else f"{g_per_kg} g/kg per course ({frequency})"
        )
        parts.append(f"{label.lower()} {text}" if label else text)
    return ", then ".join(parts)


def describe_evidence(case: Any, catalog: Any, path: str) -> str | None:
    """A case field as the letter names it (criteria answers), or None for fields said elsewhere."""

    root = {name: getattr(case, name) for name in type(case).model_fields}
    value = resolve(root, path)
    if value is None:
        return None
    head = path.split("[")[0].split(".")[0]
    if path == "diagnoses[0].code":
        return f"diagnosis {value}"
    if path == "diagnoses[0].confirmed_by":
        return f"confirmed by {value}"
    if path == "prescriber.specialty":
        return f"prescribed by a specialist in {value[:1].lower() + value[1:]}"
    if path.startswith(("clinical.labs[", "clinical.scores[")):
        unit = f" {value.unit}" if value.unit else ""
        return f"{value.name} {as_given(value.value)}{unit} on {long_date(value.date)}"
    if head == "prior_therapies":
        return f"{value.drug} ({OUTCOME_LABELS[value.outcome].lower()}: {value.reason})"
    if path.startswith("clinical.relapses[") and not path.endswith("steroid_response"):
        return f"{value.severity} relapse on {long_date(value.date)}"
    if path.endswith("steroid_response"):
        return f"response to high-dose corticosteroids: {STEROID_TEXT[value]}"
    if path == "clinical.pregnancy_status":
        return PREGNANCY_TEXT[value]
    if path.startswith("clinical.mri["):
        counts = []
        if value.new_t2_lesions is not None:
            counts.append(plural(value.new_t2_lesions, "new T2 lesion"))
        if value.enhancing_lesions is not None:
            counts.append(plural(value.enhancing_lesions, "enhancing lesion"))
        return f"MRI of {long_date(value.date)}" + (f" ({', '.join(counts)})" if counts else "")
    if path.startswith("clinical.findings["):
        return catalog.clinical_findings.get(value.name, value.name) if value.present else None
    if head == "attachments":
        index = int(path.split("[")[1].split("]")[0])
        return f"enclosure {index + 1}, {value.title}"
    if path == "clinical.treatment_goals":
        return "objective response measures set at the start"
    if path == "request.renewal":
        return "a renewal request"
    return None


def criteria_answers(evaluation: Any, case: Any, catalog: Any) -> list[dict[str, Any]]:
    """The met criteria of the payer policy, each with what in the case documents it."""
    answers = []
    for item in evaluation.items if evaluation else []:
        if item.verdict != "met":
            continue
        said = [d for d in (describe_evidence(case, catalog, p) for p in item.evidence) if d]
        documented = "; ".join(dict.fromkeys(said)) or item.detail
        if not documented or not item.evidence:
            continue
        text = item.text  # already without our provenance marks (policies.policy_wording)
        answers.append(
            {
                "id": item.id,
                "text": text.rstrip(".") + ".",
                "documented": documented + ".",
                "paths": list(item.evidence),
            }
        )
    return answers


def letter_context(
    case: Any,
    *,
    catalog: Any,
    dose: Any,
    letter_date: date,
    phases: list[tuple[str, Any]] | None = None,
    evaluation: Any = None,
) -> dict[str, Any]:
    """Everything the letter templates and the page layout read, shaped once.

    `case` is a domain.Case, `dose` a dosing.Dose (the maintenance or only regimen), `phases`
    [(label, Dose)] when the request has a loading phase; typed loosely to keep this module free
    of imports it does not need for rendering words.
    """
    patient = case.patient
    female = patient.sex == "F"
    born = patient.date_of_birth
    age = (
        letter_date.year
        - born.year
        - ((letter_date.month, letter_date.day) < (born.month, born.day))
    )
    phases = phases or [("", dose)]
    product = catalog.product(case.request.product_id)
    indication = catalog.indication(case.indication)
    payer = catalog.payer(case.coverage.payer_id)
    plan_rules = catalog.rules_for(payer)
    clinical = case.clinical
    site_label = SITE_LABELS[case.site_of_care.setting]
    primary = case.diagnoses[0]
    title = codes_title(primary.code) or indication.name
    steroid_response, steroid_path = steroid_fact(case)
    if steroid_response is None:
        steroid_path = None
    exchange = next(
        (
            (i, t)
            for i, t in enumerate(case.prior_therapies)
            if any(word in t.drug.lower() for word in PLASMA_EXCHANGE)
        ),
        None,
    )
    findings = [(i, f) for i, f in enumerate(clinical.findings) if f.present]
    active_mri = [
        (i, m)
        for i, m in enumerate(clinical.mri)
        if (m.new_t2_lesions or 0) >= 1 or (m.enhancing_lesions or 0) >= 1
    ]
    activity_paths = [f"clinical.mri[{i}]" for i, _ in active_mri]
    activity = [
        f"MRI of {long_date(m.date)} with "
        + join_words(
            [
                plural(n, label)
                for n, label in (
                    (m.new_t2_lesions or 0, "new T2 lesion"),
                    (m.enhancing_lesions or 0, "enhancing lesion"),
                )
                if n
            ]
        )
        for _, m in active_mri
    ]
    igg = [
        (i, lab)
        for i, lab in enumerate(clinical.labs)
        if "igg" in lab.name.lower().replace(" ", "") and "subclass" not in lab.name.lower()
    ]
    latest_relapse = max(clinical.relapses, key=lambda r: r.date) if clinical.relapses else None
    claims = (
        catalog.evidence.claims_for(indication.id, case.clinical_situation, product.id)
        if indication.fits(primary.code)
        else []
    )
    return {
        "case": case,
        "patient": {
            "name": f"{patient.first_name} {patient.last_name}",
            "first_name": patient.first_name,
            "last_name": patient.last_name,
            "title": "Ms." if female else "Mr.",
            # "Ms. Whitfield" for adults; children are called by their full name.
            "formal": (
                f"{'Ms.' if female else 'Mr.'} {patient.last_name}"
                if age >= 18
                else f"{patient.first_name} {patient.last_name}"
            ),
            "age": age,
        },
        "prescriber": case.prescriber,
        "product": product,
        "payer": payer,
        "plan_rules": plan_rules,
        "urgent_time_frame": time_frame(plan_rules.decision_hours_urgent),
        "standard_time_frame": time_frame(plan_rules.decision_hours_standard),
        "standard_time_frame_adj": time_frame(plan_rules.decision_hours_standard)
        .replace(" ", "-")
        .rstrip("s"),
        "indication": indication,
        # the label speaks of an indication; a primary code outside it is not that indication
        "labelled": product.labelled_for(indication.id) and indication.fits(primary.code),
        "label_date": month_year(product.label.date),
        "claims_here": claims,
        "supporting_claims": [c for c in claims if c.strength != "negative_rct"],
        "primary_dx": primary,
        "primary_title_lower": title[:1].lower() + title[1:],
        "latest_mri": max(clinical.mri, key=lambda m: m.date) if clinical.mri else None,
        "latest_relapse": latest_relapse,
        "outcome_text": outcome_text(case.prior_therapies),
        "pregnancy_text": PREGNANCY_TEXT.get(clinical.pregnancy_status or "", ""),
        "steroid_text": STEROID_TEXT.get(clinical.steroid_response or "", ""),
        "steroid_path": steroid_path,
        "steroid_response": steroid_response,
        "plasma_exchange": exchange[1] if exchange else None,
        "plasma_exchange_path": f"prior_therapies[{exchange[0]}]" if exchange else None,
        "finding_paths": [f"clinical.findings[{i}]" for i, _ in findings],
        "finding_labels": [catalog.clinical_findings.get(f.name, f.name) for _, f in findings],
        "activity_paths": activity_paths,
        "activity_text": "; ".join(activity),
        "igg_paths": [f"clinical.labs[{i}]" for i, _ in igg],
        "igg_text": "; ".join(
            f"{as_given(lab.value)}{' ' + lab.unit if lab.unit else ''} on {long_date(lab.date)}"
            for _, lab in igg
        ),
        "evaluation": evaluation,
        "criteria_answers": criteria_answers(evaluation, case, catalog),
        "site": {
            "label": site_label,
            "phrase": SITE_PHRASES[case.site_of_care.setting],
        },
        "dose": dose,
        "phases": phases,
        "phase_texts": [phase_text(label, d) for label, d in phases],
        "regimen_text": regimen_text(phases),
        "letter_date": letter_date,
        "renewal": None,
    }
