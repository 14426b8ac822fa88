"""Payer policies as data: the model of `reference/policies/*.yaml`, their loading and the choice
of the policy that decides a case (docs/payer-criteria.md).

It reads and checks files and picks a policy; it judges nothing about a case (criteria.py does).
"""

from __future__ import annotations

import re
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from priorauth.errors import ReferenceDataError

Outcome = Literal["failure", "intolerance", "contraindication"]
Verdict = Literal["met", "not_met", "insufficient", "not_applicable"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DiagnosisCheck(_Frozen):
    codes: tuple[str, ...] = Field(min_length=1)


class AnyOfCheck(_Frozen):
    any_of: tuple[str, ...] = Field(min_length=1)


class MeasurementCheck(_Frozen):
    source: Literal["labs", "scores"] = "labs"
    names: tuple[str, ...] = Field(min_length=1)
    # names that contain a needle but are another test (IgG subclass 4 is not total IgG)
    exclude: tuple[str, ...] = ("subclass",)
    unit: str | None = None
    below: Decimal | None = None
    at_most: Decimal | None = None
    above: Decimal | None = None
    at_least: Decimal | None = None
    count: int = Field(1, ge=1)
    min_days_apart: int = Field(0, ge=0)
    within_days: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _one_threshold(self) -> MeasurementCheck:
        given = [x for x in (self.below, self.at_most, self.above, self.at_least) if x is not None]
        if len(given) != 1:
            raise ValueError(
                "a measurement check needs exactly one of below/at_most/above/at_least"
            )
        return self


class MeasurementPresentCheck(_Frozen):
    source: Literal["labs", "scores"] = "scores"
    names: tuple[str, ...] = Field(min_length=1)
    # names that contain a needle but are another test (IgG subclass 4 is not total IgG)
    exclude: tuple[str, ...] = ("subclass",)
    count: int = Field(1, ge=1)
    within_days: int | None = Field(None, ge=1)


class MeasurementChangeCheck(_Frozen):
    source: Literal["labs", "scores"] = "scores"
    names: tuple[str, ...] = Field(min_length=1)
    # names that contain a needle but are another test (IgG subclass 4 is not total IgG)
    exclude: tuple[str, ...] = ("subclass",)
    direction: Literal["decrease", "increase"]
    min_change: Decimal = Field(gt=0)


class PriorTherapyCheck(_Frozen):
    drugs: tuple[str, ...] = ()
    count: int = Field(1, ge=1)
    outcomes: tuple[Outcome, ...] = ("failure", "intolerance", "contraindication")


class RelapseCheck(_Frozen):
    count: int = Field(1, ge=1)
    within_days: int | None = Field(None, ge=1)
    severity: tuple[Literal["mild", "moderate", "severe"], ...] = ()


class MriActivityCheck(_Frozen):
    within_days: int = Field(365, ge=1)


class FindingCheck(_Frozen):
    names: tuple[str, ...] = Field(min_length=1)
    min_present: int = Field(1, ge=1)


class AttachmentCheck(_Frozen):
    kinds: tuple[str, ...] = Field(min_length=1)


class FieldCheck(_Frozen):
    path: str = Field(pattern=r"^[a-z_]+(\.[a-z_]+)*$")


class EmptyCheck(_Frozen):
    pass


class Check(_Frozen):
    """Exactly one kind of check (docs/payer-criteria.md lists them with their verdict rules)."""

    diagnosis: DiagnosisCheck | None = None
    diagnosis_confirmed_by: AnyOfCheck | None = None
    prescriber_specialty: AnyOfCheck | None = None
    situation: AnyOfCheck | None = None
    measurement: MeasurementCheck | None = None
    measurement_present: MeasurementPresentCheck | None = None
    measurement_change: MeasurementChangeCheck | None = None
    prior_therapy: PriorTherapyCheck | None = None
    relapse: RelapseCheck | None = None
    steroid_response: AnyOfCheck | None = None
    pregnancy_status: AnyOfCheck | None = None
    mri_activity: MriActivityCheck | None = None
    finding: FindingCheck | None = None
    attachment: AttachmentCheck | None = None
    field: FieldCheck | None = None
    renewal: EmptyCheck | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> Check:
        if len(self.kinds()) != 1:
            raise ValueError(f"a check names exactly one kind, not {self.kinds() or 'none'}")
        return self

    def kinds(self) -> list[str]:
        return [name for name in type(self).model_fields if getattr(self, name) is not None]

    @property
    def kind(self) -> str:
        return self.kinds()[0]

    @property
    def spec(self) -> Any:
        return getattr(self, self.kind)


class Criterion(_Frozen):
    """One criterion of a policy: its wording and the case facts that satisfy it.

    `check` names one fact; `checks` several that must all hold (a criterion such as "RRMS
    confirmed by a neurologist" is two facts: the code and who confirmed it). The letter answers
    a criterion only when every fact behind its whole wording is met."""

    id: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,39}$")
    text: str = Field(min_length=1, description="The policy's own wording.")
    check: Check | None = None
    checks: tuple[Check, ...] = ()
    absent: Literal["insufficient", "not_met"] = "insufficient"
    request: str | None = Field(None, description="How to word the document request.")

    @model_validator(mode="after")
    def _some_check(self) -> Criterion:
        if (self.check is None) == (not self.checks):
            raise ValueError(f"criterion {self.id}: give exactly one of `check` or `checks`")
        return self

    def all_checks(self) -> tuple[Check, ...]:
        return (self.check,) if self.check is not None else self.checks

    @property
    def wording(self) -> str:
        """The text as printed: our provenance marks ("(paraphrased)", "(synthetic)") removed."""
        return policy_wording(self.text)


def policy_wording(text: str) -> str:
    """A criterion's wording without the marks our policy files use for provenance."""
    text = re.sub(r"\s*\((?:paraphrased|synthetic)\)", "", text)
    text = re.sub(r"\s+([).,;:])", r"\1", text)
    text = re.sub(r"\(\s+", "(", text)
    return re.sub(r"\s{2,}", " ", text).strip()


class Group(_Frozen):
    all: tuple[Node, ...] | None = None
    any: tuple[Node, ...] | None = None

    @model_validator(mode="after")
    def _one(self) -> Group:
        if (self.all is None) == (self.any is None):
            raise ValueError("a criteria group has exactly one of `all` or `any`")
        if not (self.all or self.any):
            raise ValueError("a criteria group needs at least one item")
        return self

    @property
    def mode(self) -> Literal["all", "any"]:
        return "all" if self.all is not None else "any"

    @property
    def items(self) -> tuple[Node, ...]:
        return self.all if self.all is not None else self.any  # type: ignore[return-value]


Node = Annotated[Criterion | Group, Field(union_mode="smart")]
Group.model_rebuild()


class UnitCap(_Frozen):
    phase: Literal["loading", "maintenance", "any"] = "any"
    units: int = Field(gt=0)
    window_days: int = Field(gt=0)


class DoseRules(_Frozen):
    weight_basis: Literal["actual", "adjusted", "adjusted_if_bmi_30", "policy"] | None = None
    max_g_per_kg_per_course: Decimal | None = None
    max_g_per_kg_per_day: Decimal | None = None
    unit_caps: tuple[UnitCap, ...] = ()


class SiteRule(_Frozen):
    preferred: tuple[str, ...] = ()


class Source(_Frozen):
    modelled_on: str
    url: str | None = None
    verified: str
    notes: str | None = None


class Policy(_Frozen):
    """One payer policy for one drug class and a set of indications."""

    policy_id: str = Field(pattern=r"^[A-Z0-9][A-Z0-9._-]{2,63}$")
    version: int = Field(ge=1)
    title: str
    drug_class: str = "immune_globulin"
    indications: tuple[str, ...] = ()
    icd10_prefixes: tuple[str, ...] = ()
    effective_date: date
    coverage: Literal["covered", "experimental_investigational"] = "covered"
    source: Source
    initial: Group
    renewal: Group | None = None
    dose_rules: DoseRules = DoseRules()
    first_approval_days: int | None = Field(None, gt=0)
    renewal_approval_days: int | None = Field(None, gt=0)
    preferred_products: tuple[str, ...] = ()
    site_of_care: SiteRule = SiteRule()

    def fits(self, indication: str, primary_code: str) -> bool:
        """Whether this policy decides a case of `indication` with this primary diagnosis."""
        if self.indications and indication not in self.indications:
            return False
        return not self.icd10_prefixes or primary_code.startswith(self.icd10_prefixes)

    def criteria_ids(self) -> list[str]:
        out: list[str] = []

        def walk(node: Criterion | Group) -> None:
            if isinstance(node, Criterion):
                out.append(node.id)
            else:
                for child in node.items:
                    walk(child)

        walk(self.initial)
        if self.renewal is not None:
            walk(self.renewal)
        return out


def policy_json_schema() -> dict[str, Any]:
    """The published JSON Schema of a payer policy file (docs/policy.schema.json)."""
    schema = Policy.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/priorauth/priorauth/docs/policy.schema.json"
    return schema


def load_policies(reference_dir: Path) -> dict[str, tuple[Policy, ...]]:
    """Every policy file under `reference_dir/policies`, by policy_id (versions newest first).

    Raises ReferenceDataError naming the file when one is broken."""
    folder = reference_dir / "policies"
    found: dict[str, list[Policy]] = {}
    if not folder.is_dir():
        return {}
    for path in sorted(folder.glob("*.yaml")):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
            policy = Policy.model_validate(data)
        except (OSError, yaml.YAMLError, ValidationError) as exc:
            raise ReferenceDataError(f"policies/{path.name}: {exc}") from exc
        ids = policy.criteria_ids()
        duplicates = sorted({i for i in ids if ids.count(i) > 1})
        if duplicates:
            raise ReferenceDataError(f"policies/{path.name}: duplicate criterion ids {duplicates}")
        versions = found.setdefault(policy.policy_id, [])
        if any(p.effective_date == policy.effective_date for p in versions):
            raise ReferenceDataError(
                f"policies/{path.name}: {policy.policy_id} has two versions effective "
                f"{policy.effective_date}"
            )
        versions.append(policy)
    return {
        pid: tuple(sorted(versions, key=lambda p: p.effective_date, reverse=True))
        for pid, versions in found.items()
    }


def effective(versions: tuple[Policy, ...], on: date) -> Policy | None:
    """The version in force on `on` (the newest whose effective date is not after it)."""
    return next((p for p in versions if p.effective_date <= on), None)


def choose_policy(
    policies: dict[str, tuple[Policy, ...]],
    *,
    payer_policies: tuple[str, ...],
    plan_type_policies: tuple[str, ...],
    indication: str,
    primary_code: str,
    on: date,
) -> Policy | None:
    """The payer's own policy for the case, else its plan type's, else None.

    Within each list the first policy that fits the indication and primary diagnosis and is in
    force on the letter date wins, so a list names specific policies before general ones."""
    for ids in (payer_policies, plan_type_policies):
        for policy_id in ids:
            policy = effective(policies.get(policy_id, ()), on)
            if policy is not None and policy.fits(indication, primary_code):
                return policy
    return None
