"""What every page of ours shares, with reportlab: the embedded fonts, the styles, the numbered
canvas with its footer, continuation header and DRAFT watermark, tables, the letterhead, and the
human labels of coded values. Deterministic (`invariant=1`); it places, it never words.
"""

from __future__ import annotations

import functools
import io
import re
import threading
from dataclasses import dataclass
from decimal import Decimal
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
    BaseDocTemplate,
    Frame,
    ListFlowable,
    ListItem,
    PageTemplate,
    Paragraph,
    Spacer,
    Table,
    TableStyle,
)

from priorauth.letters.wording import Section, plain_number

FONT_DIR = Path(__file__).resolve().parents[1] / "fonts"
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


def _wants_own_letterhead(case: Any) -> bool:
    return bool(getattr(case.prescriber, "letterhead", False))
