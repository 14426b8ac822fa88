"""Payer criteria: the policy model, the verdict of each check kind, group logic, document
requests, dose rules, policy choice, and every policy file under reference/policies/."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import pytest
import yaml

from conftest import ROOT, TODAY, make_case
from priorauth.dosing import compute_dose
from priorauth.errors import ReferenceDataError
from priorauth.intake import validate_case
from priorauth.letters.criteria import combine, evaluate
from priorauth.letters.policies import Policy, choose_policy, load_policies
from priorauth.pipeline import dose_request

SOURCE = {"modelled_on": "a test", "verified": "not applicable: a test policy"}


def policy(initial: dict, **extra) -> Policy:
    return Policy.model_validate(
        {
            "policy_id": "TEST-1",
            "version": 1,
            "title": "Test policy",
            "effective_date": "2026-01-01",
            "source": SOURCE,
            "initial": initial,
            **extra,
        }
    )


def judge(catalog, pol: Policy, **overrides):
    case = validate_case(make_case(**overrides), catalog=catalog, today=TODAY)
    dose = compute_dose(dose_request(case), catalog.product(case.request.product_id))
    return evaluate(case, catalog=catalog, policy=pol, dose=dose, on=TODAY)


def one(check: dict, **kw) -> dict:
    return {"all": [{"id": "C-1", "text": "The criterion.", "check": check, **kw}]}


def test_group_logic() -> None:
    assert combine(["met", "insufficient"], "all") == "insufficient"
    assert combine(["met", "not_met", "insufficient"], "all") == "not_met"
    assert combine(["not_met", "insufficient"], "any") == "insufficient"
    assert combine(["not_met", "met"], "any") == "met"
    assert combine(["not_met"], "any") == "not_met"
    assert combine(["not_applicable", "met"], "all") == "met"


def test_policy_model_refuses_two_check_kinds_and_empty_groups() -> None:
    with pytest.raises(ValueError, match="exactly one kind"):
        policy(one({"diagnosis": {"codes": ["G35"]}, "renewal": {}}))
    with pytest.raises(ValueError):
        policy({"all": []})
    with pytest.raises(ValueError, match="exactly one of below"):
        policy(one({"measurement": {"names": ["IgG"]}}))


def test_diagnosis_and_confirmation(catalog) -> None:
    assert judge(catalog, policy(one({"diagnosis": {"codes": ["G35.A"]}}))).verdict == "met"
    assert judge(catalog, policy(one({"diagnosis": {"codes": ["G61"]}}))).verdict == "not_met"
    check = one({"diagnosis_confirmed_by": {"any_of": ["neurolog"]}})
    assert judge(catalog, policy(check)).verdict == "met"
    missing = judge(catalog, policy(check), **{"diagnoses.0.confirmed_by": ...})
    assert missing.verdict == "insufficient"
    assert missing.items[0].request.startswith("Criterion C-1: The criterion")
    assert "confirmed_by" in missing.items[0].request


def test_attachment_request_names_the_kind(catalog) -> None:
    ev = judge(catalog, policy(one({"attachment": {"kinds": ["ncs_report"]}})))
    assert ev.verdict == "insufficient"
    assert ev.items[0].request == (
        "Criterion C-1: The criterion — no attachment of kind `ncs_report`"
    )
    ok = judge(catalog, policy(one({"attachment": {"kinds": ["mri_report"]}})))
    assert ok.verdict == "met" and ok.items[0].evidence[0].startswith("attachments[")


def test_measurement_threshold_count_and_spacing(catalog) -> None:
    labs = [
        {"date": "2026-08-01", "name": "Serum IgG", "value": 380, "unit": "mg/dL"},
        {"date": "2026-08-10", "name": "Serum IgG", "value": 4.1, "unit": "g/L"},
        {"date": "2026-09-15", "name": "Serum IgG", "value": 600, "unit": "mg/dL"},
    ]
    spec = {"names": ["igg"], "unit": "mg/dL", "below": 500, "count": 2, "min_days_apart": 21}
    # 380 and 410 (4.1 g/L) are below 500 but only 9 days apart; 600 is above: not met.
    ev = judge(catalog, policy(one({"measurement": spec})), **{"clinical.labs": labs})
    assert ev.verdict == "not_met"
    labs[2]["value"] = 420
    ev = judge(catalog, policy(one({"measurement": spec})), **{"clinical.labs": labs})
    assert ev.verdict == "met"
    ev = judge(catalog, policy(one({"measurement": spec})), **{"clinical.labs": labs[:1]})
    assert ev.verdict == "insufficient"


def test_measurement_change_and_presence(catalog) -> None:
    scores = [
        {"date": "2026-05-01", "name": "EDSS", "value": 4.0},
        {"date": "2026-11-01", "name": "EDSS", "value": 3.0},
    ]
    down = {"measurement_change": {"names": ["EDSS"], "direction": "decrease", "min_change": 1}}
    assert judge(catalog, policy(one(down)), **{"clinical.scores": scores}).verdict == "met"
    up = {"measurement_change": {"names": ["EDSS"], "direction": "increase", "min_change": 1}}
    assert judge(catalog, policy(one(up)), **{"clinical.scores": scores}).verdict == "not_met"
    few = judge(catalog, policy(one(down)), **{"clinical.scores": scores[:1]})
    assert few.verdict == "insufficient"
    present = {"measurement_present": {"names": ["INCAT"]}}
    assert judge(catalog, policy(one(present))).verdict == "insufficient"


def test_prior_therapy_outcomes_count(catalog) -> None:
    only_failures = {"prior_therapy": {"count": 1, "outcomes": ["failure"]}}
    therapies = [
        {
            "drug": "Fingolimod",
            "start": "2024-01-01",
            "stop": "2025-01-01",
            "outcome": "intolerance",
            "reason": "bradycardia",
        }
    ]
    ev = judge(catalog, policy(one(only_failures)), **{"prior_therapies": therapies})
    assert ev.verdict == "insufficient"  # intolerance does not count for this policy
    any_outcome = {"prior_therapy": {"count": 1}}
    ev = judge(catalog, policy(one(any_outcome)), **{"prior_therapies": therapies})
    assert ev.verdict == "met" and ev.items[0].evidence == ("prior_therapies[0]",)


def test_findings_present_absent_unknown(catalog) -> None:
    check = {"finding": {"names": ["ncs_conduction_block_1_nerve"], "min_present": 1}}
    assert judge(catalog, policy(one(check))).verdict == "insufficient"
    absent = [{"name": "ncs_conduction_block_1_nerve", "present": False}]
    ev = judge(catalog, policy(one(check)), **{"clinical.findings": absent})
    assert ev.verdict == "not_met"
    present = [{"name": "ncs_conduction_block_1_nerve", "present": True}]
    ev = judge(catalog, policy(one(check)), **{"clinical.findings": present})
    assert ev.verdict == "met"


def test_any_group_met_asks_for_nothing_else(catalog) -> None:
    pol = policy(
        {
            "any": [
                {
                    "id": "A",
                    "text": "Has an NCS report.",
                    "check": {"attachment": {"kinds": ["ncs_report"]}},
                },
                {
                    "id": "B",
                    "text": "Has an MRI report.",
                    "check": {"attachment": {"kinds": ["mri_report"]}},
                },
            ]
        }
    )
    ev = judge(catalog, pol)
    assert ev.verdict == "met"
    verdicts = {i.id: (i.verdict, i.request) for i in ev.items}
    assert verdicts == {"A": ("not_applicable", None), "B": ("met", None)}


def test_absent_can_count_as_not_met(catalog) -> None:
    ev = judge(catalog, policy(one({"attachment": {"kinds": ["ncs_report"]}}, absent="not_met")))
    assert ev.verdict == "not_met" and ev.items[0].request is None


def test_dose_rules_become_items(catalog) -> None:
    rules = {
        "dose_rules": {
            "weight_basis": "adjusted_if_bmi_30",
            "max_g_per_kg_per_course": 2.0,
            "max_g_per_kg_per_day": 1.0,
            "unit_caps": [{"units": 100, "window_days": 28}],
        },
        "first_approval_days": 90,
    }
    pol = policy(one({"diagnosis": {"codes": ["G35"]}}), **rules)
    ev = judge(
        catalog,
        pol,
        **{"request.g_per_kg_per_course": 2, "request.days_per_course": 1},
    )
    by_id = {i.id: i.verdict for i in ev.items}
    assert by_id["DOSE-COURSE"] == "met"
    assert by_id["DOSE-DAY"] == "not_met"  # 2 g/kg in one day
    assert by_id["AUTH-LENGTH"] == "not_met"  # 180 days asked, 90 allowed
    assert ev.verdict == "not_met"


def test_policy_choice_payer_then_plan_type_then_effective_date() -> None:
    old = policy(one({"diagnosis": {"codes": ["G35"]}}), indications=["ms"])
    new = old.model_copy(update={"effective_date": date(2027, 1, 1), "version": 2})
    other = old.model_copy(update={"policy_id": "OTHER-1", "indications": ("cidp",)})
    policies = {"TEST-1": (new, old), "OTHER-1": (other,)}
    pick = choose_policy(
        policies,
        payer_policies=("OTHER-1", "TEST-1"),
        plan_type_policies=(),
        indication="ms",
        primary_code="G35.A",
        on=TODAY,
    )
    assert pick is old  # the 2027 version is not in force yet; OTHER-1 is for CIDP
    later = choose_policy(
        policies,
        payer_policies=(),
        plan_type_policies=("TEST-1",),
        indication="ms",
        primary_code="G35.A",
        on=date(2027, 2, 1),
    )
    assert later is new


def test_broken_policy_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "bad.yaml").write_text("policy_id: X\n", encoding="utf-8")
    with pytest.raises(ReferenceDataError, match=r"policies/bad\.yaml"):
        load_policies(tmp_path)


def test_every_policy_file_loads_and_cites_its_source(catalog) -> None:
    policies = load_policies(ROOT / "reference")
    files = sorted((ROOT / "reference" / "policies").glob("*.yaml"))
    assert len(files) >= 5
    assert sum(len(v) for v in policies.values()) == len(files)
    for path in files:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert path.stem == data["policy_id"], path.name
        assert data["source"]["modelled_on"] and data["source"]["verified"], path.name
    # Every payer reaches a policy, at least the plan-type fallback.
    for payer in catalog.payers.values():
        rules = catalog.plan_types[payer.plan_type]
        assert payer.policies or rules.policies, payer.id


def test_published_policy_schema_is_current() -> None:
    import json

    from priorauth.letters.policies import policy_json_schema

    published = json.loads((ROOT / "docs" / "policy.schema.json").read_text(encoding="utf-8"))
    assert published == policy_json_schema(), (
        "run: priorauth schema --policy --out docs/policy.schema.json"
    )


def test_a_criterion_with_several_checks_needs_them_all(catalog) -> None:
    both = {
        "all": [
            {
                "id": "C-1",
                "text": "RRMS confirmed by a neurologist.",
                "checks": [
                    {"diagnosis": {"codes": ["G35.A"]}},
                    {"diagnosis_confirmed_by": {"any_of": ["neurolog"]}},
                ],
            }
        ]
    }
    ev = judge(catalog, policy(both))
    assert ev.verdict == "met"
    assert set(ev.items[0].evidence) == {"diagnoses[0].code", "diagnoses[0].confirmed_by"}
    progressive = judge(catalog, policy(both), **{"diagnoses.0.code": "G35.B1"})
    assert progressive.verdict == "not_met"  # confirmed by a neurologist, but not RRMS
    with pytest.raises(ValueError, match="exactly one of `check` or `checks`"):
        policy(
            {
                "all": [
                    {
                        "id": "C-2",
                        "text": "x",
                        "check": {"renewal": {}},
                        "checks": [{"renewal": {}}],
                    }
                ]
            }
        )


def test_igg_subclasses_are_not_total_igg(catalog) -> None:
    labs = [
        {"date": "2026-08-01", "name": "IgG subclass 4", "value": 5, "unit": "mg/dL"},
        {"date": "2026-09-15", "name": "Serum IgG", "value": 410, "unit": "mg/dL"},
    ]
    spec = {"names": ["IgG"], "unit": "mg/dL", "below": 500, "count": 2}
    ev = judge(catalog, policy(one({"measurement": spec})), **{"clinical.labs": labs})
    assert ev.verdict == "insufficient"  # one total IgG, not two


def test_provenance_marks_are_not_printed() -> None:
    from priorauth.letters.policies import policy_wording

    assert policy_wording("A baseline (EDSS) within 120 days (synthetic).") == (
        "A baseline (EDSS) within 120 days."
    )
    assert (
        policy_wording("(paraphrased) Prescribed by a neurologist.")
        == "Prescribed by a neurologist."
    )
