"""Page layout of the letter of medical necessity, with reportlab.

Takes the shaped context (letters.wording.letter_context) and the worded sections (the templates)
and returns PDF bytes. Deterministic: `invariant=1`, no clock reads, no patient data in metadata.
It must not decide wording or dosing; it only places what it is given (its own words are labels:
headings, table captions, the human names of the case's coded values).
"""

from __future__ import annotations

import io
import re
from datetime import date
from decimal import Decimal
from typing import Any

from reportlab.lib import colors
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import inch
from reportlab.platypus import (
    KeepTogether,
    ListFlowable,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

from priorauth.letters.page import (
    BASIS_LABELS,
    BODY_W,
    EXPEDITED,
    FONT,
    FONT_BOLD,
    INK,
    OUTCOME_LABELS,
    PREGNANCY_LABELS,
    STEROID_LABELS,
    _cell,
    _document,
    _key_value,
    _letterhead,
    _markup,
    _numbered_canvas,
    _paragraphs,
    _prescriber_head,
    _styles,
    _table,
    _wants_own_letterhead,
    ensure_fonts,
    esc,
    human,
    plural,
    unit_text,
)
from priorauth.letters.wording import (
    Section,
    fixed,
    frequency_text,
    long_date,
    plain_number,
    short_date,
)


def _q2(value: Decimal) -> str:
    return fixed(value, 2)


def dose_weight_text(dose: Any) -> str:
    """The dosing weight with the fewest decimals (at least one) that keep both printed equations
    true: g/kg × weight = calculated per course, and ÷ days = calculated per day (to 0.01 g)."""
    g_per_kg = Decimal(str(dose.g_per_kg_per_course))
    weight = Decimal(str(dose.dosing_weight_kg))
    days = dose.days_per_course
    course = _q2(g_per_kg * weight)
    day = _q2(dose.calculated_g_per_day)
    for places in range(1, 7):
        printed = Decimal(fixed(weight, places))
        if _q2(g_per_kg * printed) == course and _q2(g_per_kg * printed / days) == day:
            return fixed(weight, places)
    return format(weight.normalize(), "f")


def vials_text(dose: Any) -> str:
    return " + ".join(f"{v.count} × {plain_number(v.size_g)} g" for v in dose.vials_per_day)


def _units(grams: Decimal, product: Any) -> Decimal:
    return Decimal(str(grams)) * 1000 / product.billing_unit_mg


def _dose_rows(dose: Any, product: Any) -> list[tuple[str, str]]:
    """Calculated dose, then the dispensed dose after rounding to whole vials, per day and course."""
    g_per_kg = plain_number(dose.g_per_kg_per_course)
    weight = f"{dose_weight_text(dose)} kg"
    basis = human(dose.weight_basis, BASIS_LABELS)
    course_calc = _q2(Decimal(str(dose.g_per_kg_per_course)) * Decimal(str(dose.dosing_weight_kg)))
    per_day = _q2(dose.dispensed_g_per_day)
    per_course = _q2(dose.dispensed_g_per_course)
    units_course = plain_number(dose.billing_units_per_course)
    days = dose.days_per_course
    if days == 1:
        return [
            (
                "Dose per course",
                f"Calculated: {g_per_kg} g/kg × {weight} ({basis}) = {course_calc} g. "
                f"Dispensed after rounding to whole vials: {vials_text(dose)} = {per_day} g "
                f"= {units_course} units.",
            )
        ]
    units_day = plain_number(_units(dose.dispensed_g_per_day, product))
    return [
        (
            "Dose per course",
            f"Calculated: {g_per_kg} g/kg × {weight} ({basis}) = {course_calc} g. "
            f"Dispensed: {days} days × {per_day} g = {per_course} g = {units_course} units.",
        ),
        (
            "Dose per infusion day",
            f"Calculated: {g_per_kg} g/kg × {weight} ÷ {days} days = "
            f"{_q2(dose.calculated_g_per_day)} g. Dispensed after rounding to whole vials: "
            f"{vials_text(dose)} = {per_day} g = {units_day} units.",
        ),
    ]


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def _units_in_authorization(dose: Any) -> str:
    courses = dose.courses_in_authorization
    per_course = plain_number(dose.billing_units_per_course)
    total = plain_number(dose.billing_units_in_authorization)
    return f"{per_course} units × {plural(courses, 'course')} = {total} units"


def _phases(ctx: dict[str, Any]) -> list[tuple[str, Any]]:
    phases = ctx.get("phases")
    if isinstance(phases, list | tuple) and len(phases) > 1:
        return [(str(label), dose) for label, dose in phases]
    return [("", ctx["dose"])]


def _request_summary(ctx: dict[str, Any], s: dict[str, ParagraphStyle]) -> Table:
    case, product = ctx["case"], ctx["product"]
    phases = _phases(ctx)
    rows: list[tuple[str, Any]] = [
        (
            "Product",
            _cell(f"{product.name} ({product.maker}), {plain_number(product.concentration_pct)}%"),
        ),
        ("HCPCS", f"{product.hcpcs} (1 unit = {plain_number(product.billing_unit_mg)} mg)"),
    ]
    spans: list[int] = []
    for label, dose in phases:
        if label:  # a shaded phase row; the rows under it belong to that phase
            spans.append(len(rows))
            rows.append((f"{label} phase", ""))
        rows += [(k, _cell(v)) for k, v in _dose_rows(dose, product)]
        rows.append(
            ("Frequency", _cell(_capital(frequency_text(dose.interval_days, dose.days_per_course))))
        )
        if label:
            rows.append(("Units requested", _cell(_units_in_authorization(dose))))
    first = phases[0][1]
    authorization_days = getattr(case.request, "authorization_days", None)
    authorization_days = authorization_days or first.authorization_days
    period = plural(authorization_days, "day")
    if case.request.start_date:
        period += f" from {long_date(case.request.start_date)}"
    if len(phases) == 1:
        period += f" ({plural(first.courses_in_authorization, 'course')})"
    rows.append(("Authorization period", _cell(period)))
    rows.append(("Total units requested", _cell(_total_units(ctx, phases, product))))
    site = ctx["site"]["label"]
    if case.site_of_care.facility:
        site += f": {case.site_of_care.facility}"
    rows.append(("Site of care", _cell(_capital(site))))
    table = _key_value(rows, [1.7 * inch, 5.3 * inch])
    for row in spans:
        table.setStyle(
            TableStyle(
                [
                    ("SPAN", (0, row), (1, row)),
                    ("BACKGROUND", (0, row), (1, row), INK),
                    ("TEXTCOLOR", (0, row), (1, row), colors.white),
                ]
            )
        )
    return table


def _total_units(ctx: dict[str, Any], phases: list[tuple[str, Any]], product: Any) -> str:
    if len(phases) == 1:
        return f"{_units_in_authorization(phases[0][1])} of {product.hcpcs}"
    parts = [d.billing_units_in_authorization for _, d in phases]
    total = ctx.get("units_in_authorization_total")
    if total is None:
        total = sum(parts)
    text = f"{plain_number(total)} units of {product.hcpcs}"
    if sum(parts) == total:  # show the sum only when it is the total (never a false equation)
        text = " + ".join(plain_number(p) for p in parts) + " = " + text
    return text


# ---- diagnoses, evidence, prior therapies ---------------------------------------------------


def _diagnoses(ctx: dict[str, Any], titles: dict[str, str], s: dict[str, ParagraphStyle]) -> list:
    """The primary diagnosis named as the disease; other codes (comorbidities, pregnancy, BMI…)
    in their own table, never folded into the disease."""
    case = ctx["case"]
    primary, *others = case.diagnoses
    indication = ctx.get("indication")
    disease = titles.get(primary.code) or getattr(indication, "name", "") or primary.code
    rows: list[tuple[str, Any]] = [
        ("Primary diagnosis", Paragraph(f"<b>{esc(disease)}</b>", s["cell"])),
        ("ICD-10-CM", primary.code),
    ]
    if primary.diagnosed_on:
        rows.append(("Diagnosed", short_date(primary.diagnosed_on)))
    if primary.course:
        rows.append(("Course", _cell(primary.course)))
    if primary.confirmed_by:
        rows.append(("Confirmed by", _cell(primary.confirmed_by)))
    out: list[Any] = [_key_value(rows, [1.7 * inch, 5.3 * inch])]
    if others:
        table = [["ICD-10-CM", "Title", "Diagnosed", "Course / confirmed by"]]
        for dx in others:
            detail = "; ".join(x for x in (dx.course, dx.confirmed_by) if x)
            table.append(
                [
                    dx.code,
                    _cell(titles.get(dx.code, "")),
                    short_date(dx.diagnosed_on),
                    _cell(detail),
                ]
            )
        out += [
            Paragraph("Other diagnoses and comorbidities", s["h3"]),
            _table(table, [0.9 * inch, 3.2 * inch, 0.85 * inch, 2.05 * inch]),
        ]
    return out


def _evidence(ctx: dict[str, Any], s: dict[str, ParagraphStyle]) -> list[Any]:
    clinical = ctx["case"].clinical
    items: list[tuple[date, list[Any]]] = []
    for r in clinical.relapses:
        detail = r.description or ""
        if r.steroid_response:
            steroids = f"steroids: {human(r.steroid_response, STEROID_LABELS)}"
            detail = f"{detail} ({steroids})" if detail else steroids.capitalize()
        items.append((r.date, [short_date(r.date), f"Relapse, {r.severity}", _cell(detail)]))
    for m in clinical.mri:
        items.append((m.date, [short_date(m.date), "MRI", _cell(m.summary)]))
    for item in [*clinical.scores, *clinical.labs]:
        unit = unit_text(item.unit)
        value = f"{format(item.value, 'f')} {unit}".rstrip()  # as recorded: EDSS 4.0 stays 4.0
        items.append((item.date, [short_date(item.date), _cell(item.name), _cell(value)]))
    items.sort(key=lambda pair: pair[0])  # stable: same-day items keep their order
    extra = []
    if clinical.pregnancy_status:
        extra.append(f"Pregnancy status: {human(clinical.pregnancy_status, PREGNANCY_LABELS)}.")
    if clinical.steroid_response:
        extra.append(
            "Response to high-dose corticosteroids: "
            f"{human(clinical.steroid_response, STEROID_LABELS)}."
        )
    out: list[Any] = []
    if items:
        rows = [["Date", "Evidence", "Detail"], *[row for _, row in items]]
        out += [_table(rows, [0.85 * inch, 1.35 * inch, 4.8 * inch]), Spacer(1, 5)]
    if extra:
        out.append(Paragraph(esc(" ".join(extra)), s["body"]))
    return out


def _duration(start: date, end: date) -> str:
    """Whole months completed (Aug 22 → Oct 3 is 1 month, 42 days: not 2 calendar months);
    under 2 months in weeks, under 2 weeks in days."""
    days = (end - start).days + 1
    if days < 14:
        return plural(days, "day")
    if days < 61:
        return plural(days // 7, "week")
    months = (end.year - start.year) * 12 + end.month - start.month - (end.day < start.day)
    return plural(months, "month")


def _prior_therapies(ctx: dict[str, Any]) -> Table | None:
    therapies = ctx["case"].prior_therapies
    if not therapies:
        return None
    rows: list[list[Any]] = [["Drug", "Start", "Stop", "Duration", "Outcome", "Reason"]]
    for t in therapies:
        duration = _duration(t.start, t.stop or ctx["letter_date"]) if t.start else ""
        drug = t.drug + (f" ({t.dose})" if t.dose else "")
        rows.append(
            [
                _cell(drug),
                short_date(t.start),
                short_date(t.stop) or ("ongoing" if t.start else ""),
                duration,
                human(t.outcome, OUTCOME_LABELS),
                _cell(t.reason),
            ]
        )
    return _table(
        rows, [1.55 * inch, 0.75 * inch, 0.75 * inch, 0.75 * inch, 1.1 * inch, 2.1 * inch]
    )


# ---- the letter -----------------------------------------------------------------------------


def _addressee(payer: Any, s: dict[str, ParagraphStyle]) -> Paragraph:
    lines = [f"<b>{esc(payer.name)}</b>", *[esc(x) for x in payer.address]]
    lines.append(f"Fax {esc(payer.pa_fax)} · Phone {esc(payer.pa_phone)}")
    # One Attn line: the payer's own address may already name the department.
    if not any(str(x).strip().lower().startswith("attn") for x in payer.address):
        lines.append("Attn: Medical Director / Pharmacy Prior Authorization")
    return Paragraph("<br/>".join(lines), s["body"])


def _re_block(ctx: dict[str, Any], s: dict[str, ParagraphStyle]) -> Table:
    case, payer, product = ctx["case"], ctx["payer"], ctx["product"]
    patient, coverage = case.patient, case.coverage
    rows: list[tuple[str, Any]] = [
        ("RE:", _cell(f"Letter of medical necessity: {product.name} ({product.hcpcs})")),
    ]
    if case.request.urgent:
        rows.append(("Review:", Paragraph(f"<b>{EXPEDITED}</b>", s["cell"])))
    rows += [
        ("Patient:", _cell(f"{patient.first_name} {patient.last_name}")),
        ("Date of birth:", short_date(patient.date_of_birth)),
        ("Member ID:", _cell(coverage.member_id)),
        ("Group number:", _cell(coverage.group_number or "n/a")),
        ("Plan:", _cell(coverage.plan_name or payer.name)),
        ("Our reference:", case.case_id),
    ]
    table = Table([list(r) for r in rows], colWidths=[1.2 * inch, 5.8 * inch], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("FONT", (0, 0), (0, -1), FONT_BOLD, 8.3, 10.2),
                ("FONT", (1, 0), (1, -1), FONT, 8.3, 10.2),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("TOPPADDING", (0, 0), (-1, -1), 0.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 0.5),
            ]
        )
    )
    return table


def _expedited(section: Section | None, s: dict[str, ParagraphStyle]) -> list[Any]:
    """The expedited-review request, boxed so a reviewer sees it first."""
    if section is None:
        return []
    inner = _paragraphs(section, s)
    first = re.sub(r"<[^>]+>", "", section.paragraphs[0]).lstrip().lower()
    if not first.startswith(EXPEDITED.lower()):  # the label once, from the template or from here
        inner.insert(0, Paragraph(f"<b>{EXPEDITED}</b>", s["body"]))
    box = Table([[inner]], colWidths=[BODY_W], hAlign="LEFT")
    box.setStyle(
        TableStyle(
            [
                ("BOX", (0, 0), (-1, -1), 1.4, INK),
                ("BACKGROUND", (0, 0), (-1, -1), colors.HexColor("#f6f1e1")),
                ("LEFTPADDING", (0, 0), (-1, -1), 7),
                ("RIGHTPADDING", (0, 0), (-1, -1), 7),
                ("TOPPADDING", (0, 0), (-1, -1), 5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 1),
            ]
        )
    )
    return [Spacer(1, 2), box, Spacer(1, 6)]


def _signature(ctx: dict[str, Any], s: dict[str, ParagraphStyle]) -> list[Any]:
    p = ctx["prescriber"]
    lines = [
        f"<b>{esc(p.first_name)} {esc(p.last_name)}, {esc(p.credentials)}</b>",
        esc(p.specialty),
        f"NPI {esc(p.npi)}",
        esc(p.practice),
        *[esc(a) for a in p.address],
        f"Phone {esc(p.phone)} · Fax {esc(p.fax)}",
    ]
    return [
        Paragraph("Sincerely,", s["body"]),
        Spacer(1, 26),
        Paragraph("______________________________________", s["body"]),
        Paragraph("<br/>".join(lines), s["small"]),
    ]


def _heading(title: str, body: list[Any], s: dict[str, ParagraphStyle]) -> list[Any]:
    """A heading with its section, or nothing when there is no section (never an empty head)."""
    return [Paragraph(esc(title), s["h2"]), *body] if body else []


# Sections the templates write, in the order the letter reads; a section the template did not
# write is skipped. render.py adds no words of its own beyond headings and table labels.
KNOWN_SECTIONS = {
    "opening",
    "expedited",
    "history",
    "prior_therapies",
    "rationale",
    "off_label",
    "criteria",
    "dosing",
    "site_of_care",
    "closing",
    "attestation",
}


def render_letter(
    ctx: dict[str, Any],
    sections: list[Section],
    *,
    letterhead: Any,
    titles: dict[str, str],
    references: list[str],
    enclosures: list[str],
    draft: bool = False,
) -> bytes:
    """The letter of medical necessity as PDF bytes; `draft` watermarks every page DRAFT (used
    while the payer's criteria are not yet shown to be met)."""
    ensure_fonts()
    s = _styles()
    by_name = {section.name: section for section in sections}

    def part(name: str) -> list[Any]:
        return _paragraphs(by_name.get(name), s)

    case, product = ctx["case"], ctx["product"]
    patient = case.patient
    head = _prescriber_head(case.prescriber) if _wants_own_letterhead(case) else letterhead
    story: list[Any] = _letterhead(head, s)
    story.append(Paragraph(esc(long_date(ctx["letter_date"])), s["body"]))
    story += [_addressee(ctx["payer"], s), Spacer(1, 4), _re_block(ctx, s), Spacer(1, 8)]
    story.append(Paragraph("Dear Medical Director:", s["body"]))
    story += part("opening")
    story += _expedited(by_name.get("expedited"), s)
    story += [Paragraph("Request summary", s["h2"]), _request_summary(ctx, s)]
    story += [Paragraph("Diagnosis", s["h2"]), *_diagnoses(ctx, titles, s)]
    story += _heading(
        "Clinical history and objective evidence", [*part("history"), *_evidence(ctx, s)], s
    )
    therapy_table = _prior_therapies(ctx)
    therapies = [therapy_table, Spacer(1, 5)] if therapy_table is not None else []
    story += _heading("Prior therapies", [*therapies, *part("prior_therapies")], s)
    story += _heading("Medical rationale", part("rationale"), s)
    story += _heading("Off-label use", part("off_label"), s)
    story += _heading("Payer criteria", part("criteria"), s)
    for section in sections:  # a section this layout does not know yet: printed, never dropped
        if section.name not in KNOWN_SECTIONS:
            story += _paragraphs(section, s)
    story += _heading("Dose and site of care", [*part("dosing"), *part("site_of_care")], s)

    # Closing, attestation and signature stay together, with the last body paragraph before
    # them, so no page ever holds only "Sincerely," and the signature.
    ending: list[Any] = []
    if story and isinstance(story[-1], Paragraph | ListFlowable):
        ending.append(story.pop())
    ending += part("closing")
    attestation = part("attestation")
    if attestation:
        ending += [Paragraph("Prescriber attestation", s["h2"]), *attestation]
    ending += _signature(ctx, s)
    story.append(KeepTogether(ending))
    if enclosures:
        story.append(
            KeepTogether(
                [
                    Spacer(1, 8),
                    Paragraph("<b>Enclosures</b>", s["body"]),
                    *[
                        Paragraph(f"{i}. {esc(title)}", s["small"])
                        for i, title in enumerate(enclosures, 1)
                    ],
                ]
            )
        )
    if references:
        refs = [
            Paragraph(f"{i}. {_markup(esc(ref))}", s["reference"])
            for i, ref in enumerate(references, 1)
        ]
        story += [KeepTogether([Paragraph("References", s["h2"]), *refs[:2]]), *refs[2:]]

    buffer = io.BytesIO()
    doc = _document(
        buffer,
        continuation=True,
        draft=draft,
        title=f"Letter of medical necessity, case {case.case_id}",
        author=head.name,
        subject=f"Prior authorization request: {product.name} ({product.hcpcs})",
        keywords="",
    )
    footer = f"Case {case.case_id} · {head.name} · Confidential"
    header = (
        f"{patient.first_name} {patient.last_name} · DOB {short_date(patient.date_of_birth)} · "
        f"Member ID {case.coverage.member_id} · Case {case.case_id}"
    )
    doc.build(story, canvasmaker=_numbered_canvas(footer, header))
    return buffer.getvalue()
