"""The letter's page layout (render.py), asserted on the text read back from the PDF: true dose
equations, the continuation header, the signature kept with the body, references last, DRAFT,
one Attn line, units, the prescriber's letterhead, section order, determinism."""

from __future__ import annotations

import html
import io
import re
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from pypdf import PdfReader

from conftest import CASES, TODAY, make_case
from priorauth import pipeline
from priorauth.dosing import DoseRequest, compute_dose
from priorauth.intake import load_case
from priorauth.letters.page import unit_text
from priorauth.letters.render import render_letter
from priorauth.letters.wording import Section
from priorauth.pipeline import build_letter

MS = CASES / "ms-dmt-failure-privigen.yaml"  # 5 infusion days, adjusted weight, Attn in address
ITP = CASES / "itp-4001.yaml"  # platelets typed as "x 10^9/L"


def flat(text: str) -> str:
    return " ".join(text.split())


def pages_text(data: bytes) -> list[str]:
    return [flat(page.extract_text()) for page in PdfReader(io.BytesIO(data)).pages]


def plain(markup: str) -> str:
    """Template paragraph markup → the words a reader sees."""
    return flat(html.unescape(re.sub(r"<[^>]+>", "", markup)))


def inputs(case: Any, bench: Any, case_dir: Path = CASES) -> dict[str, Any]:
    """Everything render_letter takes, exactly as the pipeline makes it: build_letter runs with
    render_letter recorded (so these tests follow the pipeline's wording and context)."""
    captured: dict[str, Any] = {}

    def record(ctx: dict[str, Any], sections: list[Section], **kwargs: Any) -> bytes:
        captured.update(ctx=ctx, sections=sections, **kwargs)
        return render_letter(ctx, sections, **kwargs)

    with mock.patch.object(pipeline, "render_letter", record):
        build_letter(case, bench, case_dir)
    captured["draft"] = False  # each test says whether it wants the watermark
    return captured


def render(args: dict[str, Any], **overrides: Any) -> bytes:
    args = {**args, **overrides}
    return render_letter(args.pop("ctx"), args.pop("sections"), **args)


@pytest.fixture(scope="module")
def ms(bench) -> dict[str, Any]:
    return inputs(load_case(MS, catalog=bench.catalog, today=TODAY), bench)


@pytest.fixture(scope="module")
def ms_pdf(ms) -> bytes:
    return render(ms)


@pytest.fixture(scope="module")
def fixture_letters(bench) -> dict[str, tuple[dict[str, Any], list[str]]]:
    """Every fixture case: case_id → (inputs, text of each page)."""
    out = {}
    for path in sorted(CASES.glob("*.*")):
        if path.suffix not in (".yaml", ".json"):
            continue
        case = load_case(path, catalog=bench.catalog, today=TODAY)
        args = inputs(case, bench)
        out[case.case_id] = (args, pages_text(render(args)))
    return out


# ---- the dose equations ----------------------------------------------------------------------

NUMBER = r"(\d[\d,]*(?:\.\d+)?)"
CALC_COURSE = re.compile(rf"{NUMBER} g/kg × {NUMBER} kg(?: \([a-z ]+\))? = {NUMBER} g")
CALC_DAY = re.compile(rf"{NUMBER} g/kg × {NUMBER} kg ÷ (\d+) days = {NUMBER} g")
DISPENSED_COURSE = re.compile(rf"(\d+) days × {NUMBER} g = {NUMBER} g = {NUMBER} units")
VIALS = re.compile(rf"((?:\d+ × {NUMBER} g \+ )*\d+ × {NUMBER} g) = {NUMBER} g = {NUMBER} units")
VIAL = re.compile(rf"(\d+) × {NUMBER} g")
UNITS_TOTAL = re.compile(rf"{NUMBER} units × (\d+) courses? = {NUMBER} units")
UNIT_MG = re.compile(r"1 unit = (\d+) mg")


def num(text: str) -> Decimal:
    return Decimal(text.replace(",", ""))


def places(text: str) -> int:
    return len(text.split(".")[1]) if "." in text else 0


def rounded(value: Decimal, like: str) -> Decimal:
    """`value` rounded half-up to the number of decimals printed in `like`."""
    return value.quantize(Decimal(1).scaleb(-places(like)), rounding=ROUND_HALF_UP)


def check_equations(text: str) -> dict[str, int]:
    """Recompute every printed dose equation from its printed operands; count each kind."""
    unit_mg = num(UNIT_MG.search(text).group(1))
    seen = dict.fromkeys(["course", "day", "dispensed", "vials", "total"], 0)
    for g_per_kg, weight, grams in CALC_COURSE.findall(text):
        assert rounded(num(g_per_kg) * num(weight), grams) == num(grams), (g_per_kg, weight, grams)
        seen["course"] += 1
    for g_per_kg, weight, days, grams in CALC_DAY.findall(text):
        product = num(g_per_kg) * num(weight) / num(days)
        assert rounded(product, grams) == num(grams), (g_per_kg, weight, days, grams)
        seen["day"] += 1
    for days, per_day, per_course, units in DISPENSED_COURSE.findall(text):
        assert num(days) * num(per_day) == num(per_course), (days, per_day, per_course)
        assert num(per_course) * 1000 / unit_mg == num(units), (per_course, units)
        seen["dispensed"] += 1
    for match in VIALS.finditer(text):
        vials, grams, units = match.group(1), match.group(4), match.group(5)
        total = sum(num(count) * num(size) for count, size in VIAL.findall(vials))
        assert total == num(grams), match.group(0)
        assert num(grams) * 1000 / unit_mg == num(units), match.group(0)
        seen["vials"] += 1
    for per_course, courses, total in UNITS_TOTAL.findall(text):
        assert num(per_course) * num(courses) == num(total), (per_course, courses, total)
        seen["total"] += 1
    return seen


def test_every_fixture_prints_true_dose_equations(fixture_letters) -> None:
    for case_id, (args, pages) in fixture_letters.items():
        text = " ".join(pages)
        seen = check_equations(text)
        dose = args["ctx"]["dose"]
        assert seen["course"] >= 1 and seen["vials"] >= 1 and seen["total"] >= 1, (case_id, seen)
        if dose.days_per_course > 1:
            assert seen["day"] >= 1 and seen["dispensed"] >= 1, (case_id, seen)


def test_equation_shows_calculated_then_dispensed(ms_pdf, ms) -> None:
    """The worked example (DOMAIN.md §5): 2 g/kg on the adjusted weight, then vials."""
    text = " ".join(pages_text(ms_pdf))
    dose = ms["ctx"]["dose"]
    g_per_kg, weight, calculated = CALC_COURSE.search(text).groups()
    assert num(g_per_kg) == 2
    assert abs(num(weight) - dose.dosing_weight_kg) < Decimal("0.05")
    exact = (dose.g_per_kg_per_course * dose.dosing_weight_kg).quantize(Decimal("0.01"))
    assert num(calculated) == exact  # the engine's calculated figure, not the dispensed one
    assert "adjusted body weight" in text
    assert "5 days × 30.00 g = 150.00 g = 300 units" in text
    assert "1 × 20 g + 1 × 10 g = 30.00 g = 60 units" in text
    assert "300 units × 7 courses = 2,100 units" in text
    assert "= 150.00 g" not in CALC_COURSE.search(text).group(0)


def test_loading_and_maintenance_phases(ms, bench) -> None:
    product = bench.catalog.product("privigen")
    base = dict(sex="F", height_cm=Decimal(165), weight_kg=Decimal(95), basis="policy")
    loading = compute_dose(
        DoseRequest(**base, g_per_kg_per_course=Decimal(2), days_per_course=5), product
    )
    maintenance = compute_dose(
        DoseRequest(
            **base,
            g_per_kg_per_course=Decimal(1),
            days_per_course=2,
            interval_days=21,
            authorization_days=159,
        ),
        product,
    )
    total = loading.billing_units_in_authorization + maintenance.billing_units_in_authorization
    ctx = {
        **ms["ctx"],
        "phases": [("Loading", loading), ("Maintenance", maintenance)],
        "units_in_authorization_total": total,
    }
    text = " ".join(pages_text(render(ms, ctx=ctx)))
    assert "Loading phase" in text and "Maintenance phase" in text
    assert text.index("Loading phase") < text.index("Maintenance phase")
    seen = check_equations(text)
    assert seen["course"] == 2 and seen["day"] == 2 and seen["total"] == 2
    assert "300 units × 1 course = 300 units" in text
    parts = [loading.billing_units_in_authorization, maintenance.billing_units_in_authorization]
    assert f"{parts[0]:,} + {parts[1]:,} = {total:,} units of J1459" in text


# ---- pages -----------------------------------------------------------------------------------


def test_continuation_header_on_pages_after_the_first(fixture_letters) -> None:
    for case_id, (args, pages) in fixture_letters.items():
        case = args["ctx"]["case"]
        patient = case.patient
        header = (
            f"{patient.first_name} {patient.last_name} · DOB "
            f"{patient.date_of_birth:%m/%d/%Y} · Member ID {case.coverage.member_id} · "
            f"Case {case_id}"
        )
        assert len(pages) >= 2, case_id
        assert header not in pages[0] and "DOB" not in pages[0], case_id
        for number, text in enumerate(pages[1:], 2):
            assert header in text, (case_id, number)
            assert f"Page {number} of {len(pages)}" in text, (case_id, number)


def test_header_leaves_room_for_the_body(ms_pdf) -> None:
    """The header is drawn above the frame of pages 2+: no body text at its height."""
    reader = PdfReader(io.BytesIO(ms_pdf))
    for page in reader.pages[1:]:
        heights: list[float] = []

        def visit(text: str, _cm: Any, tm: Any, *_: Any, heights: list[float] = heights) -> None:
            if text.strip():
                heights.append(tm[5])

        page.extract_text(visitor_text=visit)
        header = max(heights)
        below = sorted({round(h) for h in heights if h < header - 1}, reverse=True)
        assert header - below[0] >= 18  # the first body line starts well below the header


def ending_page(pages: list[str]) -> str:
    [page] = [p for p in pages if "Sincerely," in p]
    return page


def last_body_paragraph(sections: list[Section]) -> str:
    before = [s for s in sections if s.name not in ("closing", "attestation", "expedited")]
    return plain(before[-1].paragraphs[-1])


@pytest.mark.parametrize("extra_sentences", range(0, 84, 6))
def test_signature_never_stands_alone(bench, write_case, extra_sentences: int) -> None:
    """Letters of every length: the page with "Sincerely," also holds the closing, the
    attestation and the last body paragraph."""
    history = make_case()["clinical"]["history"]
    data = make_case(
        **{
            "clinical.history": history
            + " The disease has been active throughout this period." * extra_sentences
        }
    )
    path = write_case(data)
    args = inputs(load_case(path, catalog=bench.catalog, today=TODAY), bench, path.parent)
    page = ending_page(pages_text(render(args)))
    body = page[: page.index("Sincerely,")]
    last = last_body_paragraph(args["sections"])
    assert last[-40:] in body
    for name in ("closing", "attestation"):
        for paragraph in next(s for s in args["sections"] if s.name == name).paragraphs:
            assert plain(paragraph)[:40] in body, name


def test_references_are_endnotes_after_the_signature(fixture_letters) -> None:
    for case_id, (args, pages) in fixture_letters.items():
        text = " ".join(pages)
        signed = text.index("Sincerely,")
        if not args["references"]:
            continue
        heading = text.index("References", signed)
        last = signed
        for i, reference in enumerate(args["references"], 1):
            start = text.index(f"{i}. {flat(reference)[:30]}", heading)
            assert start > last, (case_id, i)
            last = start


def test_draft_watermark_only_when_asked(ms, ms_pdf) -> None:
    assert all("DRAFT" not in page for page in pages_text(ms_pdf))
    draft = pages_text(render(ms, draft=True))
    assert len(draft) >= 2 and all("DRAFT" in page for page in draft)


def test_same_input_same_bytes(ms, ms_pdf) -> None:
    assert render(ms) == ms_pdf
    assert render(ms, draft=True) == render(ms, draft=True)


def test_metadata_names_no_patient(ms, bench, write_case) -> None:
    data = make_case(**{"prescriber.letterhead": True})
    path = write_case(data)
    case = load_case(path, catalog=bench.catalog, today=TODAY)
    for pdf in (render(inputs(case, bench, path.parent)), render(ms, draft=True)):
        meta = " ".join(str(v) for v in (PdfReader(io.BytesIO(pdf)).metadata or {}).values())
        assert "MS-1001" in meta
        for secret in ("Dana", "Whitfield", "SHP448812301", "1986", "03/14"):
            assert secret not in meta


# ---- what the page says ------------------------------------------------------------------------


def test_one_attn_line(ms, ms_pdf) -> None:
    first = pages_text(ms_pdf)[0]
    assert first.count("Attn") == 1  # Summit's address names its department
    assert "Attn: Pharmacy Prior Authorization" in first
    payer = ms["ctx"]["payer"]
    plain_payer = payer.model_copy(update={"address": ("PO Box 1", "Hartford, CT 06101")})
    first = pages_text(render(ms, ctx={**ms["ctx"], "payer": plain_payer}))[0]
    assert first.count("Attn") == 1  # none in the address: the default line


def test_lab_units_are_typeset(fixture_letters) -> None:
    _, pages = fixture_letters["ITP-4001"]
    text = " ".join(pages)
    assert "14 × 10⁹/L" in text and "9 × 10⁹/L" in text
    assert "10^" not in text


@pytest.mark.parametrize(
    ("typed", "printed"),
    [
        ("x 10^9/L", "× 10⁹/L"),
        ("x10^9/L", "× 10⁹/L"),
        ("10^3/µL", "10³/µL"),
        ("x 10^-3", "× 10⁻³"),
        ("mg/dL", "mg/dL"),
        ("of 60", "of 60"),
        (None, ""),
    ],
)
def test_unit_text(typed: str | None, printed: str) -> None:
    assert unit_text(typed) == printed


def test_prescriber_letterhead_when_asked(ms, ms_pdf, bench, write_case) -> None:
    pharmacy = bench.catalog.letterhead.name
    assert pages_text(ms_pdf)[0].startswith(pharmacy)
    data = make_case(**{"prescriber.letterhead": True})
    path = write_case(data)
    case = load_case(path, catalog=bench.catalog, today=TODAY)
    p = case.prescriber
    pages = pages_text(render(inputs(case, bench, path.parent)))
    top = pages[0][: pages[0].index("Dear Medical Director")]
    assert top.startswith(p.practice)
    for item in (*p.address, p.phone, p.fax, p.npi):
        assert item in top
    assert pharmacy not in " ".join(pages)


def test_primary_diagnosis_apart_from_comorbidities(fixture_letters) -> None:
    for case_id, (args, pages) in fixture_letters.items():
        text = " ".join(pages)
        case = args["ctx"]["case"]
        primary, *others = case.diagnoses
        title = args["titles"][primary.code]
        assert f"Primary diagnosis {title} ICD-10-CM {primary.code}" in text, case_id
        if others:
            heading = text.index("Other diagnoses and comorbidities")
            for dx in others:
                assert text.index(dx.code, heading) > heading, (case_id, dx.code)
        else:
            assert "Other diagnoses and comorbidities" not in text, case_id


def test_no_slugs_and_right_plurals(fixture_letters) -> None:
    for case_id, (_, pages) in fixture_letters.items():
        text = " ".join(pages)
        assert not re.findall(r"\b[a-z]+_[a-z_]+\b", text), case_id
        assert not re.findall(r"\b1 (?:courses|days|months|weeks|units)\b", text), case_id
    _, pages = fixture_letters["MS-1001"]
    assert "steroids: no response" in " ".join(pages)


def test_sections_in_reading_order(ms) -> None:
    by_name = {s.name: s for s in ms["sections"]}
    added = {
        "expedited": Section("expedited", ("Please decide within 72 hours.",)),
        "off_label": Section("off_label", ("This use is not in the product label.",)),
        "criteria": Section("criteria", ("- Criterion MS-1 is met.",)),
        "future": Section("future", ("A section this layout does not know yet.",)),
    }
    sections = [*ms["sections"], *[s for n, s in added.items() if n not in by_name]]
    text = " ".join(pages_text(render(ms, sections=sections)))
    order = [
        "Dear Medical Director",
        "Expedited review requested",
        "Request summary",
        "Primary diagnosis",
        "Clinical history and objective evidence",
        "Prior therapies",
        "Medical rationale",
        "Off-label use",
        "Payer criteria",
        "Dose and site of care",
        "Prescriber attestation",
        "Sincerely,",
        "Enclosures",
        "References",
    ]
    positions = [text.index(heading) for heading in order]
    assert positions == sorted(positions)
    assert "A section this layout does not know yet." in text  # printed, never dropped


def test_missing_sections_leave_no_empty_heading(ms) -> None:
    sections = [s for s in ms["sections"] if s.name in ("opening", "closing", "attestation")]
    text = " ".join(pages_text(render(ms, sections=sections)))
    for heading in ("Medical rationale", "Off-label use", "Payer criteria", "Dose and site"):
        assert heading not in text


# ---- the fax cover sheet -----------------------------------------------------------------------


def cover_args(bench, **overrides: Any) -> dict[str, Any]:
    args = {
        "case_id": "MS-1001",
        "payer": bench.catalog.payer("summit-health-commercial"),
        "letterhead": bench.catalog.letterhead,
        "sent_on": TODAY,
        "total_pages": 9,
        "parts": [("Letter of medical necessity", 4), ("Neurology clinic note 2026-10-08", 4)],
        "urgent": False,
    }
    return {**args, **overrides}


def test_cover_sheet_is_one_drawn_page(bench) -> None:
    from priorauth.letters.cover import render_cover

    pdf = render_cover(**cover_args(bench))
    assert pdf == render_cover(**cover_args(bench))
    [text] = pages_text(pdf)
    payer, head = bench.catalog.payer("summit-health-commercial"), bench.catalog.letterhead
    for expected in (
        "FAX: Prior authorization request",
        f"To {payer.name}: Pharmacy Prior Authorization",
        f"Fax {payer.pa_fax}",
        f"Reply fax {head.fax}",
        f"Reply phone {head.phone}",
        "Date November 25, 2026",
        "Pages 9 including this cover sheet",
        "Case reference MS-1001",
        "Part Pages Letter of medical necessity 4 Neurology clinic note 2026-10-08 4",
        "CONFIDENTIAL",
        "Page 1 of 1",
    ):
        assert expected in text, expected
    assert "URGENT" not in text
    assert "(URGENT)" in pages_text(render_cover(**cover_args(bench, urgent=True)))[0]


def test_cover_sheet_too_full_to_draw_flows_instead(bench) -> None:
    from priorauth.letters.cover import _cover_flowing, render_cover

    parts = [(f"Attachment {i} " + "with a long descriptive title " * 6, 3) for i in range(20)]
    args = cover_args(bench, parts=parts)
    assert render_cover(**args) == _cover_flowing(**args)


def test_expedited_request_named_once_in_the_body(fixture_letters) -> None:
    urgent = {
        case_id: pages
        for case_id, (args, pages) in fixture_letters.items()
        if args["ctx"]["case"].request.urgent
    }
    assert urgent
    for case_id, pages in urgent.items():
        text = " ".join(pages)
        # the RE block's "Review:" line, and the boxed paragraph when the template wrote one
        assert text.index("Review: Expedited review requested") < text.index("Dear Medical")
        assert text.count("Expedited review requested") <= 2, case_id


def _font_names(pdf: bytes) -> set[str]:
    page = PdfReader(io.BytesIO(pdf)).pages[0]
    return {str(f.get_object()["/BaseFont"]) for f in page["/Resources"]["/Font"].values()}


def test_cover_sheet_uses_a_standard_font_unless_a_word_needs_the_embedded_one(bench) -> None:
    """Helvetica (not embedded: a lighter sheet and packet) when every word is in its encoding;
    DejaVu, embedded, as soon as one is not (Helvetica would print "Ł" as a box)."""
    from priorauth.letters.cover import render_cover

    plain = render_cover(**cover_args(bench, parts=[("Clinic note (Dr. Muñoz) – 2026", 2)]))
    assert all(name.startswith("/Helvetica") for name in _font_names(plain))
    assert "Clinic note (Dr. Muñoz) – 2026" in pages_text(plain)[0]
    wide = render_cover(**cover_args(bench, parts=[("Notatka kliniczna, Łódź", 2)]))
    assert {"/AAAAAA+DejaVuSans", "/AAAAAA+DejaVuSans-Bold"} <= _font_names(wide)
    assert "Notatka kliniczna, Łódź" in pages_text(wide)[0]
