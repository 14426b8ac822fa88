"""Nothing invented: every sentence about the patient rests on case fields and disappears with
them; every evidence sentence is a library claim whose printed references are the library's own.
"""

from __future__ import annotations

import io
from pathlib import Path

import jinja2
import pytest
from jinja2 import nodes
from pypdf import PdfReader

from conftest import CASES, ROOT, TODAY
from priorauth.intake import find_case_files, load_case, parse_case_file, validate_case
from priorauth.letters.wording import make_environment
from priorauth.pipeline import build_letter

TEMPLATES = ROOT / "templates" / "letters"
# Names a template may print outside a `sentence` block: reference data about the product, the
# indication, the payer's policy and plan type, and evidence claims. Anything drawn from the case
# (patient, case, dose, phases, prescriber, renewal, …) must sit inside a `sentence` block.
NOT_PATIENT_FACTS = {
    "product",
    "indication",
    "evaluation",
    "plan_rules",
    "urgent_time_frame",
    "standard_time_frame",
    "standard_time_frame_adj",
    "claim",
    "c",
    "labelled",
    "label_date",
    "supporting_claims",
    "payer",
    "parent",
}
PATIENT_WORDS = (" she ", " he ", " her ", " his ", "my patient", " ms. ", " mr. ", " patient's ")


def _outside_sentences(node: nodes.Node, inside: bool = False):
    """(node, inside a sentence block?) for every node of a template."""
    yield node, inside
    if isinstance(node, nodes.CallBlock):
        call = node.call
        if isinstance(call.node, nodes.Name) and call.node.name == "sentence":
            inside = True
    for child in node.iter_child_nodes():
        yield from _outside_sentences(child, inside)


@pytest.mark.parametrize("path", sorted(TEMPLATES.rglob("*.j2")), ids=lambda p: p.name)
def test_no_template_prints_a_case_fact_outside_a_sentence(path: Path) -> None:
    env = make_environment(ROOT / "templates")
    tree = env.parse(path.read_text(encoding="utf-8"))
    offenders = []
    for node, inside in _outside_sentences(tree):
        if inside or not isinstance(node, nodes.Output):
            continue
        for expr in node.nodes:
            if isinstance(expr, nodes.TemplateData):
                text = f" {expr.data.lower()} "
                offenders += [w.strip() for w in PATIENT_WORDS if w in text]
                continue
            names = {n.name for n in expr.find_all(nodes.Name)}
            offenders += sorted(names - NOT_PATIENT_FACTS)
    assert offenders == [], f"{path.name}: outside a sentence block: {offenders}"


def test_the_static_check_catches_a_bare_patient_fact() -> None:
    env = jinja2.Environment(autoescape=True)
    tree = env.parse("{{ patient.name }} has relapsing MS. She is well.")
    found = [
        n for n, inside in _outside_sentences(tree) if isinstance(n, nodes.Output) and not inside
    ]
    assert found  # the walk sees bare output; the rule above would flag `patient` and " she "


def _text(pdf: bytes) -> str:
    return " ".join(" ".join(p.extract_text() for p in PdfReader(io.BytesIO(pdf)).pages).split())


def _render(bench, data: dict, case_dir: Path):
    case = validate_case(data, catalog=bench.catalog, today=TODAY, case_dir=case_dir)
    return build_letter(case, bench, case_dir)


def _delete(data: dict, dotted: str) -> None:
    target = data
    *parents, last = dotted.split(".")
    for part in parents:
        target = target[int(part)] if isinstance(target, list) else target[part]
    if isinstance(target, list):
        del target[int(last)]
    else:
        target.pop(last, None)


# (case file, field to drop, the field path the claims ledger uses, text only that field puts
# into the letter's prose)
DROPS = [
    (
        "ms-1002.yaml",
        "diagnoses.0.confirmed_by",
        "diagnoses[0].confirmed_by",
        "The diagnosis was confirmed by",
    ),
    (
        "ms-1002.yaml",
        "clinical.treatment_goals",
        "clinical.treatment_goals",
        "Objective response measures",
    ),
    ("ms-1002.yaml", "site_of_care.rationale", "site_of_care.rationale", "fetal heart tones"),
    ("ms-1002.yaml", "clinical.relapses", "clinical.relapses", "documented relapses"),
    (
        "ms-1002.yaml",
        "clinical.pregnancy_status",
        "clinical.pregnancy_status",
        "Ångström-Dvořák is pregnant",
    ),
    ("ms-1004.yaml", "prior_therapies", "prior_therapies", "The table above lists"),
    ("ms-1004.yaml", "clinical.mri", "clinical.mri", "The most recent MRI"),
]


@pytest.mark.parametrize(("name", "drop", "path", "words"), DROPS, ids=[d[1] for d in DROPS])
def test_drop_a_field_and_its_sentences_go(bench, name, drop, path, words) -> None:
    source = CASES / name
    data = parse_case_file(source)
    full = _render(bench, data, source.parent)
    said = [s for s in full.claims if path in s.get("fields", [])]
    assert said, f"{path} grounds no sentence in {name}"
    assert words in _text(full.letter_pdf)

    _delete(data, drop)
    if drop == "prior_therapies":
        data["clinical_situation"] = "steroid_refractory_relapse"
    thinner = _render(bench, data, source.parent)
    ids = {s["id"] for s in thinner.claims}
    assert not any(path in s.get("fields", []) for s in thinner.claims)
    assert not {s["id"] for s in said} & ids
    assert words not in _text(thinner.letter_pdf)


@pytest.fixture(scope="module")
def fixture_letters(bench):
    out = {}
    for path in find_case_files([CASES]):
        case = load_case(path, catalog=bench.catalog, today=TODAY)
        out[case.case_id] = (case, build_letter(case, bench, path.parent))
    return out


def test_every_printed_reference_is_a_library_citation(fixture_letters, bench) -> None:
    library = bench.catalog.evidence
    citations = {r.citation() for r in library.references.values()}
    for case_id, (_case, letter) in fixture_letters.items():
        text = _text(letter.letter_pdf)
        evidence = [s for s in letter.claims if s["kind"] == "evidence"]
        for said in evidence:
            claim = library.claims[said["evidence"][0]]
            assert claim.applies(
                _case.indication, _case.clinical_situation, _case.request.product_id
            )
        if not evidence:
            continue
        assert "References" in text, case_id
        tail = text[text.rindex("References") :]
        numbered = [c for c in citations if " ".join(c.split()) in tail]
        cited = {r for s in evidence for r in library.claims[s["evidence"][0]].references}
        assert len(numbered) == len(cited), case_id


def test_every_reference_records_where_it_was_verified(bench) -> None:
    for ref in bench.catalog.evidence.references.values():
        assert ref.verified.where and ref.verified.how, ref.id
        findable = ref.pmid or ref.doi or ref.url or (ref.journal and ref.year)
        assert findable, f"{ref.id}: nothing a reader can look it up by"


def test_patient_sentences_name_fields_the_case_holds(fixture_letters) -> None:
    from priorauth.letters.grounding import present, resolve

    for case_id, (case, letter) in fixture_letters.items():
        root = {name: getattr(case, name) for name in type(case).model_fields}
        for said in letter.claims:
            for field in said.get("fields", []):
                assert present(resolve(root, field)), (case_id, said["id"], field)


def test_false_claims_of_old_letters_are_gone(fixture_letters) -> None:
    banned = [
        "Miller 2003",
        "accepted rescue treatment",
        "safest available way",
        "more limited than in relapsing-remitting",
        "does not add to the infection risk",
        "carries greater procedural risk for this patient",
        "at most 1 g/kg on any day, rounded",
    ]
    for case_id, (_case, letter) in fixture_letters.items():
        text = _text(letter.letter_pdf)
        assert [b for b in banned if b in text] == [], case_id


MINIMAL = {
    "case_id": "MS-9001",
    "indication": "ms",
    "clinical_situation": "dmt_failure",
    "prepared_on": "2026-11-20",
    "patient": {
        "first_name": "Ana",
        "last_name": "Reyes",
        "date_of_birth": "1990-01-01",
        "sex": "F",
        "height": {"value": 160, "unit": "cm"},
        "weight": {"value": 60, "unit": "kg"},
    },
    "coverage": {"payer_id": "summit-health-commercial", "member_id": "X1"},
    "prescriber": {
        "first_name": "Li",
        "last_name": "Chen",
        "credentials": "MD",
        "specialty": "Neurology",
        "npi": "1234567893",
        "practice": "P",
        "address": ["1 A St"],
        "phone": "1",
        "fax": "2",
    },
    "diagnoses": [{"code": "G35.A"}],
    "clinical": {"history": "Ms. Reyes has MS."},
    "request": {"product_id": "privigen", "g_per_kg_per_course": 0.4},
    "site_of_care": {"setting": "home"},
}


def test_a_case_written_from_the_docs_with_required_fields_only_says_nothing_more(bench) -> None:
    """The case a new user writes from docs/case-format.md with only the required fields: every
    patient sentence rests on those fields, and nothing the case does not hold is stated."""
    letter = _render(bench, MINIMAL, CASES)
    text = _text(letter.letter_pdf)
    fields = {f for s in letter.claims for f in s.get("fields", [])}
    optional = {
        "diagnoses[0].confirmed_by",
        "clinical.relapses",
        "clinical.mri",
        "clinical.treatment_goals",
        "prior_therapies",
        "site_of_care.rationale",
        "clinical.pregnancy_status",
    }
    assert fields & optional == set()
    for phrase in (  # the patient sentences those optional fields would ground
        "The diagnosis was confirmed by",
        "documented relapse",
        "The most recent MRI",
        "Objective response measures",
        "The table above lists",
        "skilled nursing",
        "is pregnant",
        "diagnosed on",
    ):
        assert phrase.lower() not in text.lower(), phrase
    assert "Ms. Reyes has MS." in text  # the history, as written
    assert "at home (home infusion)" in text
    assert "This is a request for off-label use" in text  # no IVIG is labelled for MS
    assert letter.evaluation is not None and letter.evaluation.needs_documents  # → needs_info
