"""Findings: what a coordinator should know about a valid case before it goes out (warnings).

A finding never stops a letter; it is data with a stable code, shown in summary.json and the CLI.
Dosing warnings come from dosing.py; the rest are case-level rules over reference data.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from priorauth.catalog import Catalog
from priorauth.domain import Case
from priorauth.dosing import Dose

SPECIALIST_HINTS = {
    "neurologist": ("neuro",),
    "immunologist": ("immun", "allerg"),
    "hematologist": ("hemat", "haemat", "oncol"),
}


@dataclass(frozen=True)
class Finding:
    code: str
    message: str
    severity: str = "warning"

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


def case_findings(
    case: Case, catalog: Catalog, dose: Dose, evaluation: Any = None
) -> list[Finding]:
    """Every warning for a case: evidence, codes, product label, payer preference, payer criteria,
    dosing. `evaluation` is the case's letters.criteria.Evaluation, if a policy decides it."""
    out: list[Finding] = []
    indication = catalog.indication(case.indication)
    product = catalog.product(case.request.product_id)
    payer = catalog.payer(case.coverage.payer_id)
    primary = case.diagnoses[0].code

    if not indication.fits(primary):
        out.append(
            Finding(
                "DIAGNOSIS_INDICATION_MISMATCH",
                f"primary diagnosis {primary} is not a {indication.name} code "
                f"({', '.join(indication.codes)}); check the indication or the code order",
            )
        )
    situation = indication.situations.get(case.clinical_situation or "")
    if indication.is_weak(primary) or (situation and situation.evidence == "weak"):
        message = (situation.warning if situation and situation.warning else None) or (
            f"evidence and coverage for IVIG with {primary} are poor: expect a denial and "
            "prepare the appeal"
        )
        out.append(Finding("WEAK_EVIDENCE", message))
    if not product.labelled_for(indication.id):
        labelled = f" (labelled for: {product.label.wording})" if product.label.wording else ""
        out.append(
            Finding(
                "OFF_LABEL",
                f"{indication.name} is not an FDA-labelled use of {product.name}{labelled}; "
                "payers may call it experimental/investigational, so document every criterion"
                + ("" if case.request.product_reason else " and say why in request.product_reason"),
            )
        )
    hints = SPECIALIST_HINTS.get(indication.specialist, ())
    specialty = case.prescriber.specialty.lower()
    if hints and not any(h in specialty for h in hints):
        out.append(
            Finding(
                "PRESCRIBER_NOT_SPECIALIST",
                f"payers expect a {indication.specialist} to prescribe for {indication.name}; "
                f"the prescriber's specialty is {case.prescriber.specialty}",
            )
        )
    if payer.preferred_products and product.id not in payer.preferred_products:
        preferred = ", ".join(catalog.products[p].name for p in payer.preferred_products)
        out.append(
            Finding(
                "NON_PREFERRED_PRODUCT",
                f"{product.name} is not on {payer.name}'s preferred list ({preferred}); "
                "document failure of the preferred products or stability on this one",
            )
        )
    for condition in case.patient.conditions:
        if condition in product.contraindications:
            label = catalog.contraindication_labels.get(condition, condition)
            out.append(
                Finding(
                    "PRODUCT_CONTRAINDICATED",
                    f"{product.name} is contraindicated with {label}; choose another product",
                )
            )
    if case.clinical_situation == "dmt_failure" and not case.prior_therapies:
        out.append(Finding("STEP_THERAPY_NOT_DOCUMENTED", "no prior therapies are documented"))
    low, high = indication.dose_g_per_kg.get("min"), indication.dose_g_per_kg.get("max")
    g_per_kg = case.request.g_per_kg_per_course
    if (low is not None and g_per_kg < low) or (high is not None and g_per_kg > high):
        out.append(
            Finding(
                "DOSE_OUTSIDE_INDICATION_RANGE",
                f"{g_per_kg} g/kg per course is outside the usual {low}-{high} g/kg for "
                f"{indication.name}",
            )
        )
    out.extend(Finding(w.code, w.message) for w in dose.warnings)
    if evaluation is not None:
        policy = evaluation.policy
        if policy.coverage == "experimental_investigational":
            out.append(
                Finding(
                    "POLICY_EXPERIMENTAL",
                    f"{policy.policy_id} calls this use experimental/investigational: the letter "
                    "is an exception request; expect a denial and prepare the appeal",
                )
            )
        for item in evaluation.insufficient:
            out.append(Finding("CRITERION_INSUFFICIENT", item.request or item.id))
        for item in evaluation.not_met:
            out.append(
                Finding(
                    "CRITERION_NOT_MET",
                    f"Criterion {item.id} of {policy.policy_id} is not met: {item.text}",
                )
            )
    return out
