"""Page layout with reportlab: the letter of medical necessity and the fax cover sheet.

Takes the shaped context (documents.letter_context) and the worded sections (documents templates)
and returns PDF bytes. Deterministic: `invariant=1`, no clock reads, no patient data in metadata.
It must not decide wording or dosing; it only places what it is given.
"""

from __future__ import annotations

import io
import threading
from datetime import date
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape

from reportlab.lib import colors
from reportlab.lib.enums import TA_RIGHT
from reportlab.lib.pagesizes import LETTER
from reportlab.lib.styles import ParagraphStyle
from reportlab.lib.units import inch
from reportlab.pdfbase import pdfmetrics
from reportlab.pdfbase.ttfonts import TTFont
from reportlab.pdfgen import canvas as rl_canvas
from reportlab.platypus import (
    KeepTogether,
    ListFlowable,
    ListItem,
    Paragraph,
    SimpleDocTemplate,
    Spacer,
    Table,
    TableStyle,
)

from priorauth.documents import (
    OUTCOME_LABELS,
    Section,
    long_date,
    plain_number,
    short_date,
)

FONT_DIR = Path(__file__).parent / "fonts"
FONT = "DejaVuSans"
FONT_BOLD = "DejaVuSans-Bold"
FONT_ITALIC = "DejaVuSans-Oblique"
_fonts_lock = threading.Lock()
_fonts_ready = False

INK = colors.HexColor("#1f2a44")
RULE = colors.HexColor("#9aa5b8")
SHADE = colors.HexColor("#e8ecf3")
MARGIN = 0.75 * inch
CONFIDENTIAL = (
    "CONFIDENTIAL: this document contains protected health information. If you received it in "
    "error, notify the sender at once and destroy it."
)


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


def _styles() -> dict[str, ParagraphStyle]:
    base = ParagraphStyle("body", fontName=FONT, fontSize=9.5, leading=12.5, spaceAfter=5)
    return {
        "body": base,
        "small": ParagraphStyle("small", parent=base, fontSize=8, leading=10, spaceAfter=0),
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
        ),
        "right": ParagraphStyle("right", parent=base, alignment=TA_RIGHT, spaceAfter=0),
        "bullet": ParagraphStyle("bullet", parent=base, spaceAfter=2),
    }


def esc(value: object) -> str:
    """Case data → paragraph markup: an & or < in a name must neither break nor inject markup."""
    return escape("" if value is None else str(value))


def _numbered_canvas(footer_left: str) -> type[rl_canvas.Canvas]:
    """A canvas that knows the page count at save time, for "Page N of M" footers."""

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
                self.setFont(FONT, 7.5)
                self.setFillColor(colors.grey)
                width = LETTER[0]
                self.drawString(MARGIN, 0.5 * inch, footer_left)
                self.drawRightString(
                    width - MARGIN, 0.5 * inch, f"Page {self._pageNumber} of {total}"
                )
                super().showPage()
            super().save()

    return NumberedCanvas


def _table(rows: list[list[Any]], widths: list[float], *, header: bool = True) -> Table:
    table = Table(rows, colWidths=widths, repeatRows=1 if header else 0, hAlign="LEFT")
    style = [
        ("VALIGN", (0, 0), (-1, -1), "TOP"),
        ("GRID", (0, 0), (-1, -1), 0.4, RULE),
        ("LEFTPADDING", (0, 0), (-1, -1), 4),
        ("RIGHTPADDING", (0, 0), (-1, -1), 4),
        ("TOPPADDING", (0, 0), (-1, -1), 2.5),
        ("BOTTOMPADDING", (0, 0), (-1, -1), 2.5),
    ]
    if header:
        style.append(("BACKGROUND", (0, 0), (-1, 0), SHADE))
    table.setStyle(TableStyle(style))
    return table


def _cells(row: list[object], style: ParagraphStyle) -> list[Paragraph]:
    return [Paragraph(esc(value), style) for value in row]


def _letterhead(letterhead: Any, s: dict[str, ParagraphStyle]) -> list[Any]:
    contact = f"Phone {esc(letterhead.phone)} · Fax {esc(letterhead.fax)}"
    if letterhead.npi:
        contact += f"<br/>NPI {esc(letterhead.npi)}"
    left = [Paragraph(esc(letterhead.name), s["h1"])]
    if letterhead.tagline:
        left.append(Paragraph(esc(letterhead.tagline), s["small"]))
    right = [Paragraph(esc(line), s["right"]) for line in letterhead.address]
    right.append(Paragraph(contact, ParagraphStyle("c", parent=s["right"], fontSize=8)))
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


def _paragraphs(section: Section | None, s: dict[str, ParagraphStyle]) -> list[Any]:
    if section is None:
        return []
    out: list[Any] = []
    bullets: list[Any] = []
    for text in section.paragraphs:
        if text.startswith("- "):
            bullets.append(ListItem(Paragraph(text[2:], s["bullet"]), leftIndent=12))
            continue
        if bullets:
            out.append(ListFlowable(bullets, bulletType="bullet", start="•", leftIndent=12))
            bullets = []
        out.append(Paragraph(text, s["body"]))
    if bullets:
        out.append(ListFlowable(bullets, bulletType="bullet", start="•", leftIndent=12))
    return out


def _request_summary(ctx: dict[str, Any], s: dict[str, ParagraphStyle]) -> Table:
    dose, text, case = ctx["dose"], ctx["dose_text"], ctx["case"]
    product = ctx["product"]
    rows = [
        (
            "Product",
            f"{product.name} ({product.maker}), {plain_number(product.concentration_pct)}%",
        ),
        ("HCPCS", f"{product.hcpcs} (1 unit = {product.billing_unit_mg} mg)"),
        (
            "Dose per infusion day",
            f"{text['dispensed_per_day']} = {plain_number(dose.dispensed_g_per_day * 1000 / product.billing_unit_mg)} "
            f"units ({text['vials']}); calculated {text['calculated_per_day']}",
        ),
        (
            "Dose per course",
            f"{text['g_per_kg']} g/kg × {text['dosing_weight']} = {text['per_course']} "
            f"= {text['units_per_course']} units",
        ),
        ("Infusions per course", str(dose.days_per_course)),
        ("Frequency", text["frequency"]),
        (
            "Authorization period",
            f"{dose.authorization_days} days"
            + (f" from {long_date(case.request.start_date)}" if case.request.start_date else "")
            + f" ({text['courses']} course{'s' if dose.courses_in_authorization != 1 else ''})",
        ),
        ("Total units requested", f"{text['units_in_authorization']} units of {product.hcpcs}"),
        (
            "Site of care",
            ctx["site"]["label"]
            + (f": {case.site_of_care.facility}" if case.site_of_care.facility else ""),
        ),
    ]
    data = [[Paragraph(esc(k), s["cellhead"]), Paragraph(esc(v), s["cell"])] for k, v in rows]
    table = _table(data, [1.7 * inch, 5.3 * inch], header=False)
    table.setStyle(TableStyle([("BACKGROUND", (0, 0), (0, -1), SHADE)]))
    return table


def _diagnoses(ctx: dict[str, Any], titles: dict[str, str], s: dict[str, ParagraphStyle]) -> Table:
    head = _cells(["ICD-10-CM", "Title", "Diagnosed", "Course / confirmed by"], s["cellhead"])
    rows = [head]
    for dx in ctx["case"].diagnoses:
        detail = "; ".join(x for x in (dx.course, dx.confirmed_by) if x)
        rows.append(
            _cells(
                [dx.code, titles.get(dx.code, ""), short_date(dx.diagnosed_on), detail], s["cell"]
            )
        )
    return _table(rows, [0.9 * inch, 2.8 * inch, 0.85 * inch, 2.45 * inch])


def _evidence(ctx: dict[str, Any], s: dict[str, ParagraphStyle]) -> list[Any]:
    clinical = ctx["case"].clinical
    items: list[tuple[date, list[object]]] = []
    for r in clinical.relapses:
        detail = r.description or ""
        if r.steroid_response:
            detail += f" (steroids: {r.steroid_response.replace('_', ' ')})"
        items.append((r.date, [short_date(r.date), f"Relapse, {r.severity}", detail]))
    for m in clinical.mri:
        items.append((m.date, [short_date(m.date), "MRI", m.summary]))
    for item in [*clinical.scores, *clinical.labs]:
        unit = f" {item.unit}" if item.unit else ""
        items.append(
            (item.date, [short_date(item.date), item.name, f"{plain_number(item.value)}{unit}"])
        )
    items.sort(key=lambda pair: pair[0])  # stable: same-day items keep their order
    rows = [_cells(["Date", "Evidence", "Detail"], s["cellhead"])]
    rows += [_cells(row, s["cell"]) for _, row in items]
    extra = []
    if clinical.pregnancy_status:
        extra.append(f"Pregnancy status: {clinical.pregnancy_status}.")
    if clinical.steroid_response:
        extra.append(
            f"Response to high-dose corticosteroids: {clinical.steroid_response.replace('_', ' ')}."
        )
    out: list[Any] = []
    if len(rows) > 1:
        out.append(_table(rows, [0.85 * inch, 1.35 * inch, 4.8 * inch]))
        out.append(Spacer(1, 5))
    if extra:
        out.append(Paragraph(esc(" ".join(extra)), s["body"]))
    return out


def _prior_therapies(ctx: dict[str, Any], s: dict[str, ParagraphStyle]) -> Table | None:
    therapies = ctx["case"].prior_therapies
    if not therapies:
        return None
    rows = [_cells(["Drug", "Start", "Stop", "Duration", "Outcome", "Reason"], s["cellhead"])]
    for t in therapies:
        duration = ""
        if t.start:
            end = t.stop or ctx["letter_date"]
            months = (end.year - t.start.year) * 12 + end.month - t.start.month
            duration = f"{months} mo" if months >= 1 else f"{(end - t.start).days + 1} d"
        drug = t.drug + (f" ({t.dose})" if t.dose else "")
        rows.append(
            _cells(
                [
                    drug,
                    short_date(t.start),
                    short_date(t.stop) or ("ongoing" if t.start else ""),
                    duration,
                    OUTCOME_LABELS[t.outcome],
                    t.reason,
                ],
                s["cell"],
            )
        )
    return _table(rows, [1.45 * inch, 0.8 * inch, 0.8 * inch, 0.7 * inch, 1.15 * inch, 2.1 * inch])


def _signature(
    ctx: dict[str, Any], enclosures: list[str], s: dict[str, ParagraphStyle]
) -> list[Any]:
    p = ctx["prescriber"]
    lines = [
        "Sincerely,",
        "",
        "",
        "______________________________________",
        f"<b>{esc(p.first_name)} {esc(p.last_name)}, {esc(p.credentials)}</b>",
        esc(p.specialty),
        f"NPI {esc(p.npi)}",
        esc(p.practice),
        *[esc(a) for a in p.address],
        f"Phone {esc(p.phone)} · Fax {esc(p.fax)}",
    ]
    flow: list[Any] = [
        Paragraph(line or "&nbsp;", s["small"] if i > 3 else s["body"])
        for i, line in enumerate(lines)
    ]
    if enclosures:
        flow.append(Spacer(1, 8))
        flow.append(Paragraph("<b>Enclosures</b>", s["body"]))
        flow.extend(
            Paragraph(f"{i}. {esc(title)}", s["small"]) for i, title in enumerate(enclosures, 1)
        )
    return [KeepTogether(flow)]


def render_letter(
    ctx: dict[str, Any],
    sections: list[Section],
    *,
    letterhead: Any,
    titles: dict[str, str],
    references: list[str],
    enclosures: list[str],
) -> bytes:
    """The letter of medical necessity as PDF bytes."""
    ensure_fonts()
    s = _styles()
    by_name = {section.name: section for section in sections}
    case, payer, product = ctx["case"], ctx["payer"], ctx["product"]
    patient = case.patient
    story: list[Any] = _letterhead(letterhead, s)
    story.append(Paragraph(esc(long_date(ctx["letter_date"])), s["body"]))
    payer_lines = [
        f"<b>{esc(payer.name)}</b>",
        *[esc(x) for x in payer.address],
        f"Fax {esc(payer.pa_fax)} · Phone {esc(payer.pa_phone)}",
        "Attn: Medical Director / Pharmacy Prior Authorization",
    ]
    story.append(Paragraph("<br/>".join(payer_lines), s["body"]))
    story.append(Spacer(1, 4))
    coverage = case.coverage
    re_rows = [
        ("RE:", f"Letter of medical necessity: {product.name} ({product.hcpcs})"),
        ("Patient:", f"{patient.first_name} {patient.last_name}"),
        ("Date of birth:", short_date(patient.date_of_birth)),
        ("Member ID:", coverage.member_id),
        ("Group number:", coverage.group_number or "n/a"),
        ("Plan:", coverage.plan_name or payer.name),
        ("Our reference:", case.case_id),
    ]
    re_table = Table(
        [
            [Paragraph(f"<b>{esc(k)}</b>", s["cell"]), Paragraph(esc(v), s["cell"])]
            for k, v in re_rows
        ],
        colWidths=[1.2 * inch, 5.8 * inch],
        hAlign="LEFT",
    )
    re_table.setStyle(
        TableStyle(
            [
                ("LEFTPADDING", (0, 0), (-1, -1), 0),
                ("TOPPADDING", (0, 0), (-1, -1), 0.5),
                ("BOTTOMPADDING", (0, 0), (-1, -1), 0.5),
            ]
        )
    )
    story += [re_table, Spacer(1, 8), Paragraph("Dear Medical Director:", s["body"])]
    story += _paragraphs(by_name.get("opening"), s)
    story += [Paragraph("Request summary", s["h2"]), _request_summary(ctx, s)]
    story += [Paragraph("Diagnosis", s["h2"]), _diagnoses(ctx, titles, s)]
    story += [Paragraph("Clinical history and objective evidence", s["h2"])]
    story += _paragraphs(by_name.get("history"), s)
    story += _evidence(ctx, s)
    story.append(Paragraph("Prior therapies", s["h2"]))
    therapy_table = _prior_therapies(ctx, s)
    if therapy_table is not None:
        story += [therapy_table, Spacer(1, 5)]
    story += _paragraphs(by_name.get("prior_therapies"), s)
    story.append(Paragraph("Medical rationale", s["h2"]))
    story += _paragraphs(by_name.get("rationale"), s)
    story.append(Paragraph("Dose and site of care", s["h2"]))
    story += _paragraphs(by_name.get("dosing"), s)
    story += _paragraphs(by_name.get("site_of_care"), s)
    if references:
        story.append(Paragraph("References", s["h2"]))
        story += [Paragraph(f"{i}. {esc(ref)}", s["small"]) for i, ref in enumerate(references, 1)]
        story.append(Spacer(1, 6))
    story += _paragraphs(by_name.get("closing"), s)
    attestation = _paragraphs(by_name.get("attestation"), s)
    story += [KeepTogether([Paragraph("Prescriber attestation", s["h2"]), *attestation])]
    story += _signature(ctx, enclosures, s)

    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=LETTER,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=0.6 * inch,
        bottomMargin=0.8 * inch,
        title=f"Letter of medical necessity, case {case.case_id}",
        author=letterhead.name,
        subject=f"Prior authorization request: {product.name} ({product.hcpcs})",
        creator="priorauth",
        keywords="",
        invariant=1,
    )
    footer = f"Case {case.case_id} · {letterhead.name} · Confidential"
    doc.build(story, canvasmaker=_numbered_canvas(footer))
    return buffer.getvalue()


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
    """
    ensure_fonts()
    s = _styles()
    story: list[Any] = _letterhead(letterhead, s)
    story.append(
        Paragraph("FAX: Prior authorization request" + (" (URGENT)" if urgent else ""), s["h1"])
    )
    story.append(Spacer(1, 10))
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
    data = [
        [Paragraph(f"<b>{esc(k)}</b>", s["cell"]), Paragraph(esc(v), s["cell"])] for k, v in rows
    ]
    table = _table(data, [1.6 * inch, 5.4 * inch], header=False)
    table.setStyle(TableStyle([("BACKGROUND", (0, 0), (0, -1), SHADE)]))
    story += [table, Spacer(1, 14), Paragraph("Contents", s["h2"])]
    contents = [_cells(["Part", "Pages"], s["cellhead"])]
    contents += [_cells([title, str(pages)], s["cell"]) for title, pages in parts]
    story += [_table(contents, [5.6 * inch, 1.4 * inch]), Spacer(1, 18)]
    story.append(Paragraph(esc(CONFIDENTIAL), s["small"]))
    buffer = io.BytesIO()
    doc = SimpleDocTemplate(
        buffer,
        pagesize=LETTER,
        leftMargin=MARGIN,
        rightMargin=MARGIN,
        topMargin=0.6 * inch,
        bottomMargin=0.8 * inch,
        title=f"Fax cover sheet, case {case_id}",
        author=letterhead.name,
        creator="priorauth",
        invariant=1,
    )
    doc.build(story, canvasmaker=_numbered_canvas(f"Case {case_id} · Fax cover sheet"))
    return buffer.getvalue()
