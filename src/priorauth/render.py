"""Page layout with reportlab: the letter of medical necessity and the fax cover sheet.

Takes the shaped context (documents.letter_context) and the worded sections (documents templates)
and returns PDF bytes. Deterministic: `invariant=1`, no clock reads, no patient data in metadata.
It must not decide wording or dosing; it only places what it is given (its own words are labels:
headings, table captions, the human names of the case's coded values).
"""

from __future__ import annotations

import functools
import io
import re
import threading
from dataclasses import dataclass
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import LETTER
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import inch
from reportlab.lib.utils import simpleSplit
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas as rl_canvas
from reportlab.platypus import (
    BaseDocTemplate,
    Flowable,
    Frame,
    KeepTogether,
    ListFlowable,
    ListItem,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

from priorauth.documents import Section, fixed, long_date, plain_number, short_date

FONT_DIR = Path(__file__).parent / "fonts"
FONT = "DejaVuSans"
FONT_BOLD = "DejaVuSans-Bold"
FONT_ITALIC = "DejaVuSans-Oblique"
_fonts_lock = threading.Lock()
_fonts_ready = False

INK = colors.HexColor("#1f2a44")
RULE = colors.HexColor("#9aa5b8")
SHADE = colors.HexColor("#e8ecf3")
WATERMARK = colors.Color(0.84, 0.84, 0.84)
PAGE_W, PAGE_H = LETTER
MARGIN = 0.75 * inch
TOP_FIRST = 0.6 * inch
TOP_LATER = 0.95 * inch  # room for the continuation header on pages 2+
BOTTOM = 0.8 * inch
BODY_W = PAGE_W - 2 * MARGIN
EXPEDITED = "Expedited review requested"
CONFIDENTIAL = (
    "CONFIDENTIAL: this document contains protected health information. If you received it in "
    "error, notify the sender at once and destroy it."
)

# Human names for the case format's coded values (docs/case-format.md); never print a slug.
OUTCOME_LABELS = {
    "failure": "Failure",
    "intolerance": "Intolerance",
    "contraindication": "Contraindication",
}
STEROID_LABELS = {
    "responded": "responded",
    "partial": "partial response",
    "no_response": "no response",
    "contraindicated": "contraindicated",
}
PREGNANCY_LABELS = {
    "pregnant": "pregnant",
    "postpartum": "postpartum",
    "breastfeeding": "breastfeeding",
    "planning": "planning a pregnancy",
}
BASIS_LABELS = {
    "actual": "actual body weight",
    "ideal": "ideal body weight",
    "adjusted": "adjusted body weight",
}
SUPERSCRIPT = str.maketrans("0123456789-+", "⁰¹²³⁴⁵⁶⁷⁸⁹⁻⁺")
# "x 10^9/L", "x10^9/L", "×10^9": scientific notation as typed on a keyboard.
POWER_OF_TEN = re.compile(r"(?:(?<![\w^])([xX×])\s?)?(?<![\d.])10\^([-+]?\d+)")


def ensure_fonts() -> None:
    """Register the embedded DejaVu fonts once per process (before any thread renders).

    Helvetica silently turns letters outside Latin-1 (Ł, ễ) into boxes, so every text uses an
    embedded TrueType font.
    """
    global _fonts_ready
    with _fonts_lock:
        if _fonts_ready:
            return
        pdfmetrics.registerFont(TTFont(FONT, str(FONT_DIR / "DejaVuSans.ttf")))
        pdfmetrics.registerFont(TTFont(FONT_BOLD, str(FONT_DIR / "DejaVuSans-Bold.ttf")))
        pdfmetrics.registerFont(TTFont(FONT_ITALIC, str(FONT_DIR / "DejaVuSans-Oblique.ttf")))
        pdfmetrics.registerFontFamily(
            FONT, normal=FONT, bold=FONT_BOLD, italic=FONT_ITALIC, boldItalic=FONT_BOLD
        )
        _fonts_ready = True


@functools.cache
def _styles() -> dict[str, ParagraphStyle]:
    """Built once per process: styles are only read while rendering, so letters share them."""
    base = ParagraphStyle("body", fontName=FONT, fontSize=9.5, leading=12.5, spaceAfter=5)
    small = ParagraphStyle("small", parent=base, fontSize=8, leading=10, spaceAfter=0)
    right = ParagraphStyle("right", parent=base, alignment=TA_RIGHT, spaceAfter=0)
    return {
        "body": base,
        "small": small,
        "reference": ParagraphStyle(
            "reference", parent=small, leftIndent=14, firstLineIndent=-14, spaceAfter=2
        ),
        "cell": ParagraphStyle("cell", parent=base, fontSize=8.3, leading=10.2, spaceAfter=0),
        "cellhead": ParagraphStyle(
            "cellhead", parent=base, fontName=FONT_BOLD, fontSize=8.3, leading=10.2, spaceAfter=0
        ),
        "h1": ParagraphStyle(
            "h1",
            parent=base,
            fontName=FONT_BOLD,
            fontSize=15,
            leading=18,
            textColor=INK,
            spaceAfter=1,
        ),
        "h2": ParagraphStyle(
            "h2",
            parent=base,
            fontName=FONT_BOLD,
            fontSize=10.5,
            leading=13,
            textColor=INK,
            spaceBefore=7,
            spaceAfter=3,
            keepWithNext=1,  # a heading never ends a page
        ),
        "h3": ParagraphStyle(
            "h3",
            parent=base,
            fontName=FONT_BOLD,
            fontSize=9,
            leading=11.5,
            spaceBefore=5,
            spaceAfter=2,
            keepWithNext=1,
        ),
        "right": right,
        "right_small": ParagraphStyle("right_small", parent=right, fontSize=8),
        "bullet": ParagraphStyle("bullet", parent=base, spaceAfter=2),
    }


def esc(value: object) -> str:
    """Case data → paragraph markup: an & or < in a name must neither break nor inject markup."""
    return escape("" if value is None else str(value))


def human(value: str | None, labels: dict[str, str] | None = None) -> str:
    """A coded value as words: the label if there is one, else the slug with spaces."""
    if not value:
        return ""
    return (labels or {}).get(value, value.replace("_", " "))


def plural(count: int | Decimal, singular: str, plural_form: str | None = None) -> str:
    """1 course, 2 courses, 1,200 units."""
    word = singular if count == 1 else (plural_form or singular + "s")
    return f"{plain_number(count)} {word}"


def unit_text(unit: str | None) -> str:
    """A lab or score unit for print: "x 10^9/L" → "× 10⁹/L"; other units as given."""
    if not unit:
        return ""
    return POWER_OF_TEN.sub(_power, unit)


def _power(match: re.Match[str]) -> str:
    times = "× " if match.group(1) else ""
    return f"{times}10{match.group(2).translate(SUPERSCRIPT)}"


# ---- the page: frames, continuation header, footer, watermark ------------------------------


@dataclass(frozen=True)
class _Head:
    """Who the letter is from: the pharmacy's letterhead or the prescriber's practice."""

    name: str
    address: tuple[str, ...]
    phone: str
    fax: str
    tagline: str = ""
    npi: str | None = None
    contact: str = ""


def _prescriber_head(p: Any) -> _Head:
    who = f"{p.first_name} {p.last_name}, {p.credentials}"
    return _Head(
        name=p.practice,
        address=tuple(p.address),
        phone=p.phone,
        fax=p.fax,
        tagline=f"{who} · {p.specialty}",
        npi=p.npi,
    )


def _numbered_canvas(footer_left: str, header_left: str | None) -> type[rl_canvas.Canvas]:
    """A canvas that knows the page count at save time: "Page N of M" in every footer, and on
    pages 2+ a header naming the patient (a faxed page that gets separated can be matched)."""

    class NumberedCanvas(rl_canvas.Canvas):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._saved: list[dict[str, Any]] = []

        def showPage(self) -> None:
            self._saved.append(dict(self.__dict__))
            self._startPage()

        def save(self) -> None:
            total = len(self._saved)
            for state in self._saved:
                self.__dict__.update(state)
                page = f"Page {self._pageNumber} of {total}"
                self.setFont(FONT, 7.5)
                self.setFillColor(colors.grey)
                self.drawString(MARGIN, 0.5 * inch, footer_left)
                self.drawRightString(PAGE_W - MARGIN, 0.5 * inch, page)
                if header_left and self._pageNumber > 1:
                    _draw_header(self, header_left, page)
                super().showPage()
            super().save()

    return NumberedCanvas


def _draw_header(canvas: rl_canvas.Canvas, left: str, page: str) -> None:
    y = PAGE_H - 0.55 * inch
    size = 8.0
    room = BODY_W - pdfmetrics.stringWidth(page, FONT_BOLD, size) - 12
    while size > 5.5 and pdfmetrics.stringWidth(left, FONT, size) > room:
        size -= 0.5
    canvas.setFillColor(INK)
    canvas.setFont(FONT, size)
    canvas.drawString(MARGIN, y, left)
    canvas.setFont(FONT_BOLD, 8.0)
    canvas.drawRightString(PAGE_W - MARGIN, y, page)
    canvas.setStrokeColor(RULE)
    canvas.setLineWidth(0.5)
    canvas.line(MARGIN, y - 5, PAGE_W - MARGIN, y - 5)


def _draw_watermark(canvas: rl_canvas.Canvas, _doc: Any) -> None:
    """DRAFT across the page, drawn before the page's content so the text stays on top."""
    canvas.saveState()
    canvas.setFillColor(WATERMARK)
    canvas.setFont(FONT_BOLD, 130)
    canvas.translate(PAGE_W / 2, PAGE_H / 2)
    canvas.rotate(52)
    canvas.drawCentredString(0, -45, "DRAFT")
    canvas.restoreState()


def _document(buffer: io.BytesIO, *, continuation: bool, draft: bool, **meta: Any) -> Any:
    """A letter-size document: page 1 with the letterhead's top margin, later pages lower (room
    for the continuation header)."""
    doc = BaseDocTemplate(
        buffer,
        pagesize=LETTER,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=TOP_FIRST,
        bottomMargin=BOTTOM,
        creator="priorauth",
        invariant=1,
        **meta,
    )
    top_later = TOP_LATER if continuation else TOP_FIRST
    on_page = _draw_watermark if draft else _no_decoration
    first = Frame(MARGIN, BOTTOM, BODY_W, PAGE_H - TOP_FIRST - BOTTOM, id="first", **_NO_PADDING)
    later = Frame(MARGIN, BOTTOM, BODY_W, PAGE_H - top_later - BOTTOM, id="later", **_NO_PADDING)
    doc.addPageTemplates(
        [
            PageTemplate("first", [first], onPage=on_page, autoNextPageTemplate="later"),
            PageTemplate("later", [later], onPage=on_page),
        ]
    )
    return doc


_NO_PADDING = {"leftPadding": 0, "rightPadding": 0, "topPadding": 0, "bottomPadding": 0}


def _no_decoration(_canvas: rl_canvas.Canvas, _doc: Any) -> None:
    return None


# ---- building blocks ------------------------------------------------------------------------


def _table(rows: list[list[Any]], widths: list[float], *, header: bool = True) -> Table:
    table = Table(rows, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
    style: list[tuple[Any, ...]] = [
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("GRID", (0, 0), (-1, -1), 0.4, RULE),
        ("FONT", (0, 0), (-1, -1), FONT, 8.3, 10.2),
        ("LEFTPADDING", (0, 0), (-1, -1), 4),
        ("RIGHTPADDING", (0, 0), (-1, -1), 4),
        ("TOPPADDING", (0, 0), (-1, -1), 2.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
    ]
    if header:
        style += [("BACKGROUND", (0, 0), (-1, 0), SHADE), ("FONT", (0, 0), (-1, 0), FONT_BOLD)]
    table.setStyle(TableStyle(style))
    return table


def _key_value(rows: list[tuple[str, Any]], widths: list[float]) -> Table:
    """A two-column table: bold labels on a shaded left column (labels are plain strings)."""
    table = _table([[k, v] for k, v in rows], widths, header=False)
    table.setStyle(
        TableStyle([("BACKGROUND", (0, 0), (0, -1), SHADE), ("FONT", (0, 0), (0, -1), FONT_BOLD)])
    )
    return table


def _cell(value: object) -> Paragraph:
    return Paragraph(esc(value), _styles()["cell"])


def _letterhead(head: Any, s: dict[str, ParagraphStyle]) -> list[Any]:
    contact = f"Phone {esc(head.phone)} · Fax {esc(head.fax)}"
    if head.npi:
        contact += f"<br/>NPI {esc(head.npi)}"
    left = [Paragraph(esc(head.name), s["h1"])]
    if head.tagline:
        left.append(Paragraph(esc(head.tagline), s["small"]))
    right = [Paragraph(esc(line), s["right"]) for line in head.address]
    right.append(Paragraph(contact, s["right_small"]))
    table = Table([[left, right]], colWidths=[4.1 * inch, 2.9 * inch], hAlign="LEFT")
    table.setStyle(
        TableStyle(
            [
                ("VALIGN", (0, 0), (-1, -1), "TOP"),
                ("LINEBELOW", (0, 0), (-1, 0), 1.2, INK),
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("RIGHTPADDING", (0, 0), (-1, -1), 0),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 6),
            ]
        )
    )
    return [table, Spacer(1, 10)]


def _markup(text: str) -> str:
    """Template markup as printed: typed scientific notation set properly (14 x 10^9/L)."""
    return POWER_OF_TEN.sub(_power, text) if "10^" in text else text


def _paragraphs(section: Section | None, s: dict[str, ParagraphStyle]) -> list[Any]:
    if section is None:
        return []
    out: list[Any] = []
    bullets: list[Any] = []
    for text in section.paragraphs:
        if text.startswith("- "):
            bullets.append(ListItem(Paragraph(_markup(text[2:]), s["bullet"]), leftIndent=12))
            continue
        if bullets:
            out.append(ListFlowable(bullets, bulletType="bullet", start="•", leftIndent=12))
            bullets = []
        out.append(Paragraph(_markup(text), s["body"]))
    if bullets:
        out.append(ListFlowable(bullets, bulletType="bullet", start="•", leftIndent=12))
    return out


# ---- the request summary: every equation true at the precision it is printed -----------------


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


def _frequency(dose: Any) -> str:
    days = dose.days_per_course
    given = f"over {days} consecutive days" if days > 1 else "as one infusion"
    interval = dose.interval_days
    if interval is None:
        return f"one course, {given}"
    if interval % 7 == 0:
        weeks = interval // 7
        every = "every week" if weeks == 1 else f"every {weeks} weeks"
    else:
        every = "every day" if interval == 1 else f"every {interval} days"
    return f"{every}, {given}"


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
        rows.append(("Frequency", _cell(_capital(_frequency(dose)))))
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
        value = f"{plain_number(item.value)} {unit}".rstrip()
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
    months = (end.year - start.year) * 12 + end.month - start.month
    if months >= 1:
        return plural(months, "month")
    return plural((end - start).days + 1, "day")


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


def _wants_own_letterhead(case: Any) -> bool:
    return bool(getattr(case.prescriber, "letterhead", False))


def render_cover(
    *,
    case_id: str,
    payer: Any,
    letterhead: Any,
    sent_on: date,
    total_pages: int,
    parts: list[tuple[str, int]],
    urgent: bool,
) -> bytes:
    """The fax cover sheet: to, from, date, page count, case reference, contents, notice.

    Carries the case ID, never the patient's name (a cover sheet is read by whoever is at the fax).
    Drawn straight on the canvas (a fixed one-page form: ~4x faster than platypus); a cover whose
    contents would not fit falls back to the flowing layout.
    """
    ensure_fonts()
    rows = [
        ("To", f"{payer.name}: Pharmacy Prior Authorization"),
        ("Fax", payer.pa_fax),
        ("Phone", payer.pa_phone),
        ("From", f"{letterhead.name}, {letterhead.contact}".rstrip(", ")),
        ("Reply fax", letterhead.fax),
        ("Reply phone", letterhead.phone),
        ("Date", long_date(sent_on)),
        ("Pages", f"{total_pages} including this cover sheet"),
        ("Case reference", case_id),
    ]
    contents = [(title, str(pages)) for title, pages in parts]
    form = _CoverForm()
    if not form.fits(letterhead, rows, contents):
        return _cover_flowing(
            case_id=case_id,
            payer=payer,
            letterhead=letterhead,
            sent_on=sent_on,
            total_pages=total_pages,
            parts=parts,
            urgent=urgent,
        )
    buffer = io.BytesIO()
    canvas = rl_canvas.Canvas(buffer, pagesize=LETTER, invariant=1)
    canvas.setTitle(f"Fax cover sheet, case {case_id}")
    canvas.setAuthor(letterhead.name)
    canvas.setCreator("priorauth")
    form.draw(canvas, letterhead, rows, contents, urgent=urgent)
    canvas.setFont(FONT, 7.5)
    canvas.setFillColor(colors.grey)
    canvas.drawString(MARGIN, 0.5 * inch, f"Case {case_id} · Fax cover sheet")
    canvas.drawRightString(PAGE_W - MARGIN, 0.5 * inch, "Page 1 of 1")
    canvas.showPage()
    canvas.save()
    return buffer.getvalue()


class _CoverForm:
    """The cover sheet's geometry, measured before drawing (so overflow is known up front)."""

    CELL, LEAD, PAD = 8.3, 10.2, 2.5
    KEY_W, VALUE_W = 1.6 * inch, 5.4 * inch
    PART_W, PAGES_W = 5.6 * inch, 1.4 * inch

    def _lines(self, text: str, width: float, font: str = FONT, size: float = CELL) -> list[str]:
        return simpleSplit(text, font, size, width - 8) or [""]

    def _head_lines(self, head: Any) -> tuple[list[tuple[str, str, float]], list[str], str]:
        left = [
            (line, FONT_BOLD, 15.0) for line in simpleSplit(head.name, FONT_BOLD, 15, 4.0 * inch)
        ]
        left += [(line, FONT, 8.0) for line in simpleSplit(head.tagline or "", FONT, 8, 4.0 * inch)]
        contact = f"Phone {head.phone} · Fax {head.fax}"
        return left, list(head.address), contact

    def _head_height(self, head: Any) -> float:
        left, right, _ = self._head_lines(head)
        left_h = sum(18 if size == 15 else 10 for *_, size in left)
        right_h = 12.5 * len(right) + 10 * (2 if head.npi else 1)
        return max(left_h, right_h) + 6 + 10

    def _table_height(self, rows: list[tuple[str, str]], widths: tuple[float, float]) -> float:
        return sum(
            max(len(self._lines(a, widths[0])), len(self._lines(b, widths[1]))) * self.LEAD
            + 2 * self.PAD
            for a, b in rows
        )

    def fits(self, head: Any, rows: list[tuple[str, str]], contents: list[tuple[str, str]]) -> bool:
        notice = len(simpleSplit(CONFIDENTIAL, FONT, 8, BODY_W)) * 10
        height = (
            self._head_height(head)
            + 18 * 2  # title (may wrap to two lines)
            + 10
            + self._table_height(rows, (self.KEY_W, self.VALUE_W))
            + 14
            + 23  # "Contents"
            + self._table_height([("Part", "Pages"), *contents], (self.PART_W, self.PAGES_W))
            + 18
            + notice
        )
        return height <= PAGE_H - TOP_FIRST - BOTTOM

    def draw(
        self,
        c: rl_canvas.Canvas,
        head: Any,
        rows: list[tuple[str, str]],
        contents: list[tuple[str, str]],
        *,
        urgent: bool,
    ) -> None:
        top = PAGE_H - TOP_FIRST
        left, right, contact = self._head_lines(head)
        y = top
        c.setFillColor(INK)
        for line, font, size in left:
            y -= 18 if size == 15 else 10
            c.setFillColor(INK if size == 15 else colors.black)
            c.setFont(font, size)
            c.drawString(MARGIN, y + (3 if size == 15 else 2), line)
        left_bottom = y
        y = top
        c.setFillColor(colors.black)
        c.setFont(FONT, 9.5)
        for line in right:
            y -= 12.5
            c.drawRightString(PAGE_W - MARGIN, y + 3, line)
        c.setFont(FONT, 8)
        for line in [contact, *([f"NPI {head.npi}"] if head.npi else [])]:
            y -= 10
            c.drawRightString(PAGE_W - MARGIN, y + 2, line)
        y = min(y, left_bottom) - 6
        c.setStrokeColor(INK)
        c.setLineWidth(1.2)
        c.line(MARGIN, y, PAGE_W - MARGIN, y)
        y -= 10

        title = "FAX: Prior authorization request" + (" (URGENT)" if urgent else "")
        c.setFillColor(INK)
        c.setFont(FONT_BOLD, 15)
        for line in simpleSplit(title, FONT_BOLD, 15, BODY_W):
            y -= 18
            c.drawString(MARGIN, y + 4, line)
        y -= 10
        y = self._draw_table(c, y, rows, (self.KEY_W, self.VALUE_W), header=False)
        y -= 14
        c.setFillColor(INK)
        c.setFont(FONT_BOLD, 10.5)
        c.drawString(MARGIN, y - 7 - 10.5, "Contents")
        y -= 23
        table = [("Part", "Pages"), *contents]
        y = self._draw_table(c, y, table, (self.PART_W, self.PAGES_W), header=True)
        y -= 18
        c.setFillColor(colors.black)
        c.setFont(FONT, 8)
        for line in simpleSplit(CONFIDENTIAL, FONT, 8, BODY_W):
            y -= 10
            c.drawString(MARGIN, y + 2, line)

    def _draw_table(
        self,
        c: rl_canvas.Canvas,
        y: float,
        rows: list[tuple[str, str]],
        widths: tuple[float, float],
        *,
        header: bool,
    ) -> float:
        """Two columns; the first column (key tables) or the first row (lists) shaded and bold."""
        x0, x1, x2 = MARGIN, MARGIN + widths[0], MARGIN + widths[0] + widths[1]
        c.setLineWidth(0.4)
        c.setStrokeColor(RULE)
        top = y
        for i, (a, b) in enumerate(rows):
            bold_row = header and i == 0
            a_lines = self._lines(a, widths[0], FONT_BOLD if (bold_row or not header) else FONT)
            b_lines = self._lines(b, widths[1], FONT_BOLD if bold_row else FONT)
            height = max(len(a_lines), len(b_lines)) * self.LEAD + 2 * self.PAD
            c.setFillColor(SHADE)
            if bold_row:
                c.rect(x0, y - height, x2 - x0, height, stroke=0, fill=1)
            elif not header:
                c.rect(x0, y - height, widths[0], height, stroke=0, fill=1)
            c.setFillColor(colors.black)
            for x, lines, bold in ((x0, a_lines, bold_row or not header), (x1, b_lines, bold_row)):
                c.setFont(FONT_BOLD if bold else FONT, self.CELL)
                base = y - self.PAD - self.CELL
                for line in lines:
                    c.drawString(x + 4, base, line)
                    base -= self.LEAD
            c.line(x0, y - height, x2, y - height)
            y -= height
        c.line(x0, top, x2, top)
        for x in (x0, x1, x2):
            c.line(x, top, x, y)
        return y


def _cover_flowing(
    *,
    case_id: str,
    payer: Any,
    letterhead: Any,
    sent_on: date,
    total_pages: int,
    parts: list[tuple[str, int]],
    urgent: bool,
) -> bytes:
    """The cover sheet laid out by platypus: used only when the direct drawing would not fit."""
    ensure_fonts()
    s = _styles()
    story: list[Flowable] = _letterhead(letterhead, s)
    story.append(
        Paragraph("FAX: Prior authorization request" + (" (URGENT)" if urgent else ""), s["h1"])
    )
    story.append(Spacer(1, 10))
    rows: list[tuple[str, Any]] = [
        ("To", _cell(f"{payer.name}: Pharmacy Prior Authorization")),
        ("Fax", payer.pa_fax),
        ("Phone", payer.pa_phone),
        ("From", _cell(f"{letterhead.name}, {letterhead.contact}".rstrip(", "))),
        ("Reply fax", letterhead.fax),
        ("Reply phone", letterhead.phone),
        ("Date", long_date(sent_on)),
        ("Pages", f"{total_pages} including this cover sheet"),
        ("Case reference", case_id),
    ]
    story += [_key_value(rows, [1.6 * inch, 5.4 * inch]), Spacer(1, 14)]
    story.append(Paragraph("Contents", s["h2"]))
    contents = [["Part", "Pages"], *[[_cell(title), str(pages)] for title, pages in parts]]
    story += [_table(contents, [5.6 * inch, 1.4 * inch]), Spacer(1, 18)]
    story.append(Paragraph(esc(CONFIDENTIAL), s["small"]))
    buffer = io.BytesIO()
    doc = _document(
        buffer,
        continuation=False,
        draft=False,
        title=f"Fax cover sheet, case {case_id}",
        author=letterhead.name,
    )
    doc.build(story, canvasmaker=_numbered_canvas(f"Case {case_id} · Fax cover sheet", None))
    return buffer.getvalue()
