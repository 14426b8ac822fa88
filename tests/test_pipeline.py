"""Letters and packets end to end through the core (no Prefect): text read back, structure,
bookmarks, metadata, determinism, bad attachments, template choice."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pikepdf
import pytest
import yaml
from pypdf import PdfReader, PdfWriter

from conftest import CASES, DOSING_KEYS, TODAY, make_case
from priorauth.catalog import load_catalog
from priorauth.intake import find_case_files, load_case
from priorauth.letters.wording import template_candidates
from priorauth.pipeline import build_letter, generate_case
from priorauth.settings import load_settings

FIXTURE_CASES = find_case_files([CASES])


def pdf_text(data: bytes) -> str:
    return "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(data)).pages)


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def letters(bench) -> dict[str, tuple]:
    """Every fixture case rendered once: case_id → (case, Letter)."""
    out = {}
    for path in FIXTURE_CASES:
        case = load_case(path, catalog=bench.catalog, today=TODAY)
        out[case.case_id] = (case, build_letter(case, bench, path.parent))
    return out


def test_there_are_enough_fixture_cases() -> None:
    assert len(FIXTURE_CASES) >= 12


def test_every_fixture_letter_carries_its_facts(letters, bench) -> None:
    from priorauth.letters.wording import grams, plain_number

    for case_id, (case, letter) in letters.items():
        text = pdf_text(letter.letter_pdf)
        words = flat(text)
        product = bench.catalog.product(case.request.product_id)
        assert product.hcpcs in words, case_id
        assert grams(letter.dose.dispensed_g_per_day) in words, case_id
        assert plain_number(letter.dose.billing_units_in_authorization) in words, case_id
        for dx in case.diagnoses:
            assert dx.code in words, (case_id, dx.code)
        for therapy in case.prior_therapies:
            # table cells wrap: compare without whitespace
            assert "".join(therapy.drug.split()) in "".join(text.split()), (case_id, therapy.drug)
        assert f"{case.patient.first_name} {case.patient.last_name}" in words, case_id
        assert case.coverage.member_id in words, case_id
        assert case.prescriber.npi in words, case_id
        pages = len(PdfReader(io.BytesIO(letter.letter_pdf)).pages)
        assert f"Page 1 of {pages}" in words and f"Page {pages} of {pages}" in words


def test_diagnosis_titles_come_from_the_code_set(letters) -> None:
    _, letter = letters["MS-1001"]
    assert "Relapsing-remitting multiple sclerosis" in flat(pdf_text(letter.letter_pdf))


def test_worked_example_numbers_in_the_letter(letters) -> None:
    _, letter = letters["MS-1001"]
    words = flat(pdf_text(letter.letter_pdf))
    for expected in [
        "72.1 kg",
        "28.86 g",
        "30.00 g",
        "1 × 20 g + 1 × 10 g",
        "150.00 g",
        "300 units",
        "2,100 units",
        "7 courses",
        "BMI 34.9",
    ]:
        assert expected in words


def test_pdfs_are_structurally_sound(letters, tmp_path: Path) -> None:
    for case_id, (_, letter) in letters.items():
        for kind, data in (("letter", letter.letter_pdf), ("packet", letter.packet_pdf)):
            path = tmp_path / f"{case_id}-{kind}.pdf"
            path.write_bytes(data)
            with pikepdf.Pdf.open(path) as pdf:
                assert pdf.check_pdf_syntax() == [], (case_id, kind)


def test_metadata_has_no_patient_identifiers(letters) -> None:
    for case, letter in letters.values():
        for data in (letter.letter_pdf, letter.packet_pdf):
            meta = PdfReader(io.BytesIO(data)).metadata or {}
            values = " ".join(str(v) for v in meta.values())
            assert case.case_id in values
            for secret in (
                case.patient.first_name,
                case.patient.last_name,
                case.coverage.member_id,
                case.patient.date_of_birth.isoformat(),
                case.patient.date_of_birth.strftime("%m/%d/%Y"),
            ):
                assert secret not in values


def test_packet_has_cover_letter_and_attachments_with_bookmarks(letters) -> None:
    for case_id, (case, letter) in letters.items():
        packet = PdfReader(io.BytesIO(letter.packet_pdf))
        letter_pages = len(PdfReader(io.BytesIO(letter.letter_pdf)).pages)
        titles = [item.title for item in packet.outline]
        assert titles == [
            "Fax cover sheet",
            "Letter of medical necessity",
            *[a.title for a in case.attachments],
        ], case_id
        cover = flat(packet.pages[0].extract_text())
        assert f"{len(packet.pages)} including this cover sheet" in cover
        assert case_id in cover
        assert case.patient.last_name not in cover  # a fax cover is read by whoever is there
        starts = [packet.get_destination_page_number(item) for item in packet.outline]
        assert starts[:2] == [0, 1], case_id
        if len(starts) > 2:
            assert starts[2] == 1 + letter_pages, case_id


def test_same_input_same_bytes(bench) -> None:
    path = CASES / "ms-dmt-failure-privigen.yaml"
    case = load_case(path, catalog=bench.catalog, today=TODAY)
    one = build_letter(case, bench, path.parent)
    two = build_letter(case, bench, path.parent)
    assert one.letter_pdf == two.letter_pdf
    assert one.packet_pdf == two.packet_pdf


def test_accented_names_survive_into_the_pdf_text(letters) -> None:
    names = [
        (c.patient.first_name, c.patient.last_name, letter)
        for c, letter in letters.values()
        if any(ord(ch) > 255 for ch in c.patient.first_name + c.patient.last_name)
    ]
    assert names, "a fixture patient needs a name outside Latin-1"
    for first, last, letter in names:
        assert f"{first} {last}" in flat(pdf_text(letter.letter_pdf))


def test_markup_in_case_text_is_escaped(bench, write_case) -> None:
    data = make_case(
        **{
            "patient.last_name": "O'Brien & <b>Sons</b>",
            "clinical.history": "History with <font size=40>markup</font> & more.",
        }
    )
    path = write_case(data)
    case = load_case(path, catalog=bench.catalog, today=TODAY)
    words = flat(pdf_text(build_letter(case, bench, path.parent).letter_pdf))
    assert "O'Brien & <b>Sons</b>" in words
    assert "<font size=40>markup</font> & more." in words


def test_weak_evidence_warning_for_progressive_ms(letters) -> None:
    progressive = [
        (c, letter) for c, letter in letters.values() if c.clinical_situation == "progressive"
    ]
    assert progressive
    for _, letter in progressive:
        assert "WEAK_EVIDENCE" in {w["code"] for w in letter.warnings}
    others = [
        letter
        for c, letter in letters.values()
        if c.clinical_situation != "progressive"
        and not c.diagnoses[0].code.startswith(("G35.B", "G35.C"))
    ]
    assert all("WEAK_EVIDENCE" not in {w["code"] for w in x.warnings} for x in others)


def test_templates_from_most_to_least_specific(letters) -> None:
    assert template_candidates("p", "ms", "pregnancy") == [
        "payers/p/ms-pregnancy.j2",
        "payers/p/ms.j2",
        "ms-pregnancy.j2",
        "ms.j2",
        "generic.j2",
    ]
    chosen = {c.case_id: (c, letter.template) for c, letter in letters.values()}
    for case, template in chosen.values():
        if case.indication == "ms" and case.coverage.payer_id != "evergreen-medicare-advantage":
            assert template == f"ms-{case.clinical_situation}.j2"
        if case.indication == "ms" and case.coverage.payer_id == "evergreen-medicare-advantage":
            assert template == "payers/evergreen-medicare-advantage/ms.j2"
        if case.indication in ("itp", "myasthenia-gravis"):
            assert template == "generic.j2"
        if case.indication == "cidp":
            assert template == "cidp.j2"


def test_payer_override_changes_only_its_block(bench, write_case) -> None:
    data = make_case(
        **{
            "coverage.payer_id": "evergreen-medicare-advantage",
            "clinical_situation": "progressive",
            "diagnoses.0.code": "G35.C1",
        }
    )
    path = write_case(data)
    case = load_case(path, catalog=bench.catalog, today=TODAY)
    letter = build_letter(case, bench, path.parent)
    assert letter.template == "payers/evergreen-medicare-advantage/ms.j2"
    words = flat(pdf_text(letter.letter_pdf))
    assert "standard 72-hour Part B decision time frame" in words
    # the situation's wording stays: the SPMS trial's negative result (evidence library)
    assert "secondary progressive" in words and "[1]" in words
    assert "This is a request for off-label use" in words  # and base.j2's off-label block


def _encrypted(tmp_path: Path) -> Path:
    writer = PdfWriter()
    writer.add_blank_page(612, 792)
    writer.encrypt(user_password="secret", algorithm="AES-256")
    path = tmp_path / "locked.pdf"
    with path.open("wb") as handle:
        writer.write(handle)
    return path


@pytest.mark.parametrize(
    ("make", "words"),
    [
        (lambda d: d / "nope.pdf", "file not found"),
        (_encrypted, "is encrypted"),
        (
            lambda d: (d / "trunc.pdf").write_bytes(b"%PDF-1.7\n1 0 obj <<") and d / "trunc.pdf",
            "cannot be read as a PDF",
        ),
        (
            lambda d: (d / "fake.pdf").write_bytes(b"GIF89a not a pdf") and d / "fake.pdf",
            "not a PDF file",
        ),
    ],
)
def test_bad_attachment_sets_the_case_aside(bench, tmp_path: Path, write_case, make, words) -> None:
    bad = make(tmp_path)
    data = make_case(**{"attachments.1.path": f"../{bad.name}"})
    path = write_case(data)
    out = tmp_path / "out"
    result = generate_case(path, bench=bench, out_dir=out)
    assert result.status == "invalid"
    assert result.errors[0]["field"] == "attachments[1].path"
    assert words in result.errors[0]["message"]
    assert sorted(p.name for p in (out / "MS-1001").iterdir()) == ["summary.json"]


def test_rerun_writes_nothing_new(bench, tmp_path: Path) -> None:
    path = CASES / "ms-dmt-failure-privigen.yaml"
    first = generate_case(path, bench=bench, out_dir=tmp_path)
    mtimes = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "MS-1001").iterdir()}
    second = generate_case(path, bench=bench, out_dir=tmp_path)
    assert first.files_written == 3 and second.files_written == 0
    assert mtimes == {p.name: p.stat().st_mtime_ns for p in (tmp_path / "MS-1001").iterdir()}
    assert not list((tmp_path / "MS-1001").glob(".*tmp"))


def test_a_case_that_becomes_invalid_loses_its_stale_pdfs(
    bench, tmp_path: Path, write_case
) -> None:
    data = make_case()
    path = write_case(data)
    assert generate_case(path, bench=bench, out_dir=tmp_path / "o").ok
    data["diagnoses"][0]["code"] = "G35"
    write_case(data)
    result = generate_case(path, bench=bench, out_dir=tmp_path / "o")
    assert not result.ok
    assert sorted(p.name for p in (tmp_path / "o" / "MS-1001").iterdir()) == ["summary.json"]


def test_summary_json_contract(bench, tmp_path: Path) -> None:
    generate_case(CASES / "ms-dmt-failure-privigen.yaml", bench=bench, out_dir=tmp_path)
    summary = json.loads((tmp_path / "MS-1001" / "summary.json").read_text())
    assert summary["status"] == "ready" and summary["errors"] == []
    assert summary["product"] == {
        "id": "privigen",
        "name": "Privigen",
        "hcpcs": "J1459",
        "billing_unit_mg": 500,
    }
    assert summary["inputs"] == {
        "sex": "F",
        "height_cm": 165.0,
        "weight_kg": 95.0,
        "g_per_kg_per_course": 2.0,
        "days_per_course": 5,
        "interval_days": 28,
        "authorization_days": 180,
        "weight_basis": "policy",
    }
    dosing = summary["dosing"]
    assert dosing["weight_basis"] == "adjusted"
    assert dosing["vials_per_day"] == [{"size_g": 20.0, "count": 1}, {"size_g": 10.0, "count": 1}]
    assert dosing["billing_units_in_authorization"] == 2100
    assert set(dosing) == DOSING_KEYS | {"total_billing_units_in_authorization"}
    text = json.dumps(summary)
    assert "Whitfield" not in text and "SHP448812301" not in text and "1986-03-14" not in text


def test_broken_reference_data_is_reported(tmp_path: Path) -> None:
    from priorauth.errors import ReferenceDataError

    for name in ["products.yaml", "payers.yaml", "indications.yaml", "letterhead.yaml"]:
        (tmp_path / name).write_text((Path(load_settings().reference_dir) / name).read_text())
    payers = yaml.safe_load((tmp_path / "payers.yaml").read_text())
    payers["payers"][0]["preferred_products"] = ["unobtainium"]
    (tmp_path / "payers.yaml").write_text(yaml.safe_dump(payers))
    with pytest.raises(ReferenceDataError, match="unknown products"):
        load_catalog(tmp_path)


@pytest.mark.parametrize("workers", [1, 2])
def test_batch_results_hold_patient_records_only_when_asked(tmp_path: Path, workers: int) -> None:
    """A batch for reporting (CLI, letters flow) gets lean results: no validated case, no summary,
    so neither patient data nor memory per case piles up in the parent or in Prefect task results.
    The nightly run asks for the records it stores."""
    from priorauth.pipeline import BatchRunner

    settings = load_settings().model_copy(update={"workers": workers})
    paths = [CASES / "ms-dmt-failure-privigen.yaml", CASES / "pid-3001.yaml"]
    with BatchRunner(settings, today=TODAY, out_dir=tmp_path / "lean") as runner:
        lean = runner.run(paths)
    with BatchRunner(settings, today=TODAY, out_dir=tmp_path / "full", keep_records=True) as runner:
        full = runner.run(paths)
    assert [r.case_id for r in lean] == [r.case_id for r in full] == ["MS-1001", "PID-3001"]
    assert all(r.ok and r.case is None and r.summary is None for r in lean)
    assert all(r.folder and r.case_sha256 for r in lean)
    assert [r.case.case_id for r in full] == ["MS-1001", "PID-3001"]
    assert full[0].summary["documents"]["letter"]["sha256"]
