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

SECTION_MARK = re.compile(r"^@@([a-z_]+)\s*$")

SITE_LABELS = {
    "infusion_center": "ambulatory infusion center",
    "home": "home infusion with skilled nursing",
    "physician_office": "physician office",
    "hospital_outpatient": "hospital outpatient department",
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
        return f"one course {days}"
    if interval_days % 7 == 0:
        weeks = interval_days // 7
        every = "every week" if weeks == 1 else f"every {weeks} weeks"
    else:
        every = f"every {interval_days} days"
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
) -> tuple[str, list[Section]]:
    """Render the most specific template for the case; return its name and the sections.

    A payer template extends `parent`, the most specific general template for the case, so a
    payer's override keeps the situation's wording and changes only its own blocks."""
    general = env.select_template(general_candidates(indication, situation))
    try:
        template = env.select_template(payer_candidates(payer_id, indication, situation))
    except jinja2.TemplatesNotFound:
        template = general
    text = template.render({**context, "parent": general.name})
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


def vials_text(vials: Any) -> str:
    return " + ".join(f"{v.count} × {plain_number(v.size_g)} g" for v in vials)


def letter_context(case: Any, *, catalog: Any, dose: Any, letter_date: date) -> dict[str, Any]:
    """Everything the letter templates and the page layout read, shaped once.

    `case` is a domain.Case, `dose` a dosing.Dose; typed loosely to keep this module free of
    imports it does not need for rendering words.
    """
    patient = case.patient
    female = patient.sex == "F"
    born = patient.date_of_birth
    age = (
        letter_date.year
        - born.year
        - ((letter_date.month, letter_date.day) < (born.month, born.day))
    )
    product = catalog.product(case.request.product_id)
    indication = catalog.indication(case.indication)
    payer = catalog.payer(case.coverage.payer_id)
    counts = {k: 0 for k in OUTCOME_LABELS}
    for therapy in case.prior_therapies:
        counts[therapy.outcome] += 1
    edss = [s for s in case.clinical.scores if s.name.upper() == "EDSS"]
    site_label = SITE_LABELS[case.site_of_care.setting]
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
            "possessive": "her" if female else "his",
            "pronoun": "she" if female else "he",
            "age": age,
        },
        "prescriber": case.prescriber,
        "product": product,
        "payer": payer,
        "indication": indication,
        "situation": indication.situations.get(case.clinical_situation or ""),
        "primary_dx": case.diagnoses[0],
        "diagnoses_text": ", ".join(d.code for d in case.diagnoses),
        "latest_mri": max(case.clinical.mri, key=lambda m: m.date) if case.clinical.mri else None,
        "latest_edss": max(edss, key=lambda s: s.date) if edss else None,
        "counts": counts,
        "pregnancy_text": PREGNANCY_TEXT.get(case.clinical.pregnancy_status or "", "pregnant"),
        "site": {
            "label": site_label,
            "label_with_article": ("an " if site_label[0] in "aeiou" else "a ") + site_label,
        },
        "dose": dose,
        "dose_text": {
            "g_per_kg": plain_number(dose.g_per_kg_per_course),
            "frequency": frequency_text(dose.interval_days, dose.days_per_course),
            "basis_label": BASIS_LABELS[dose.weight_basis],
            "dosing_weight": kg(dose.dosing_weight_kg),
            "actual_weight": kg(dose.actual_weight_kg),
            "ideal_weight": kg(dose.ideal_weight_kg),
            "bmi": fixed(dose.bmi, 1),
            "calculated_per_day": grams(dose.calculated_g_per_day),
            "dispensed_per_day": grams(dose.dispensed_g_per_day),
            "vials": vials_text(dose.vials_per_day),
            "per_course": grams(dose.dispensed_g_per_course),
            "units_per_course": plain_number(dose.billing_units_per_course),
            "units_in_authorization": plain_number(dose.billing_units_in_authorization),
            "courses": plain_number(dose.courses_in_authorization),
        },
        "letter_date": letter_date,
    }
