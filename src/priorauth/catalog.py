"""Reference data: the product catalog, payer directory, indications and letterhead, read from files.

Adding a product, payer or indication means editing `reference/*.yaml`, never this module.
This module only loads and looks up; it decides nothing about a case.
"""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from functools import cached_property
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from priorauth.errors import ReferenceDataError
from priorauth.letters.evidence import Library, load_library
from priorauth.letters.policies import Policy, choose_policy, load_policies

PlanType = Literal["commercial", "medicare_advantage", "part_d", "medicaid"]


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Label(_Frozen):
    """A product's US prescribing information: which indications it is labelled for, and when."""

    date: str | None = None  # revision of the prescribing information used ("YYYY-MM")
    indications: tuple[str, ...] = ()  # indication ids (reference/indications.yaml) or slugs
    wording: str = ""
    source: str = ""
    verified: str = ""


class Product(_Frozen):
    id: str
    name: str
    maker: str
    hcpcs: str = Field(pattern=r"^[A-Z]\d{4}$")
    billing_unit_mg: int = Field(gt=0)
    concentration_pct: Decimal
    vial_sizes_g: tuple[Decimal, ...] = Field(min_length=1)
    route: str = "IV"
    contraindications: tuple[str, ...] = ()
    source: str
    label: Label = Label()

    def labelled_for(self, indication_id: str) -> bool:
        """Whether this product's US label covers the indication (OFF_LABEL otherwise)."""
        return indication_id in self.label.indications

    @field_validator("vial_sizes_g", mode="before")
    @classmethod
    def _exact_sizes(cls, value: object) -> object:
        # YAML floats such as 2.5 become Decimal through str() so 2.5 stays exactly 2.5.
        if isinstance(value, list | tuple):
            return tuple(sorted((Decimal(str(v)) for v in value), reverse=True))
        return value


class PlanTypeRules(_Frozen):
    label: str
    decision_hours_standard: int = Field(gt=0)
    decision_hours_urgent: int = Field(gt=0)
    appeal_days: int = Field(gt=0)
    external_review_months: int | None = None
    policies: tuple[str, ...] = ()  # fallback payer policies for this plan type, by policy_id


class Payer(_Frozen):
    id: str
    name: str
    plan_type: PlanType
    address: tuple[str, ...]
    pa_fax: str
    pa_phone: str
    preferred_products: tuple[str, ...] = ()
    policies: tuple[str, ...] = ()  # this payer's policies (reference/policies/), by policy_id


class Situation(_Frozen):
    label: str
    evidence: Literal["strong", "moderate", "weak"] = "moderate"
    warning: str | None = None


class Indication(_Frozen):
    id: str
    name: str
    codes: tuple[str, ...]
    weak_codes: tuple[str, ...] = ()
    specialist: str
    dose_g_per_kg: dict[str, Decimal]
    situations: dict[str, Situation] = {}

    def fits(self, code: str) -> bool:
        """Whether an ICD-10-CM code falls under this indication's code prefixes."""
        return code.startswith(self.codes)

    def is_weak(self, code: str) -> bool:
        return bool(self.weak_codes) and code.startswith(self.weak_codes)


class Letterhead(_Frozen):
    name: str
    tagline: str = ""
    address: tuple[str, ...]
    phone: str
    fax: str
    npi: str | None = None
    contact: str = ""


class Catalog(_Frozen):
    """Everything under one reference folder, indexed by ID."""

    products: dict[str, Product]
    payers: dict[str, Payer]
    plan_types: dict[str, PlanTypeRules]
    indications: dict[str, Indication]
    letterhead: Letterhead
    contraindication_labels: dict[str, str]
    clinical_findings: dict[str, str] = {}  # finding slug -> wording for a letter
    follow_up_business_days: int = 2
    renewal_lead_days: int = 30
    policies: dict[str, tuple[Policy, ...]] = {}
    evidence: Library = Library(references={}, claims={})

    def product(self, product_id: str) -> Product:
        try:
            return self.products[product_id]
        except KeyError:
            raise ReferenceDataError(
                f"unknown product {product_id!r}; known: {', '.join(sorted(self.products))}"
            ) from None

    def payer(self, payer_id: str) -> Payer:
        try:
            return self.payers[payer_id]
        except KeyError:
            raise ReferenceDataError(f"unknown payer {payer_id!r}") from None

    def indication(self, indication_id: str) -> Indication:
        try:
            return self.indications[indication_id]
        except KeyError:
            raise ReferenceDataError(f"unknown indication {indication_id!r}") from None

    def rules_for(self, payer: Payer) -> PlanTypeRules:
        return self.plan_types[payer.plan_type]

    def policy_for(
        self, payer: Payer, indication: str, primary_code: str, on: date
    ) -> Policy | None:
        """The payer policy that decides a case (payer's own list, then its plan type's)."""
        return choose_policy(
            self.policies,
            payer_policies=payer.policies,
            plan_type_policies=self.plan_types[payer.plan_type].policies,
            indication=indication,
            primary_code=primary_code,
            on=on,
        )

    @cached_property
    def product_ids(self) -> list[str]:
        return sorted(self.products)


def _read_yaml(path: Path) -> dict:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise ReferenceDataError(f"{path.name}: cannot read reference data: {exc}") from exc
    if not isinstance(data, dict):
        raise ReferenceDataError(f"{path.name}: expected a mapping at the top level")
    return data


def _index(items: list[dict], model: type[BaseModel], source: str) -> dict:
    out: dict = {}
    for item in items:
        obj = model.model_validate(item)
        if obj.id in out:  # type: ignore[attr-defined]
            raise ReferenceDataError(f"{source}: duplicate id {obj.id!r}")  # type: ignore[attr-defined]
        out[obj.id] = obj  # type: ignore[attr-defined]
    return out


def load_catalog(reference_dir: Path) -> Catalog:
    """Read and check every reference file in `reference_dir`; raise ReferenceDataError if broken."""
    products = _read_yaml(reference_dir / "products.yaml")
    payers = _read_yaml(reference_dir / "payers.yaml")
    indications = _read_yaml(reference_dir / "indications.yaml")
    letterhead = _read_yaml(reference_dir / "letterhead.yaml")
    findings_file = reference_dir / "clinical_findings.yaml"
    findings = _read_yaml(findings_file).get("findings", {}) if findings_file.exists() else {}
    try:
        catalog = Catalog(
            products=_index(products.get("products", []), Product, "products.yaml"),
            contraindication_labels=products.get("contraindication_labels", {}),
            payers=_index(payers.get("payers", []), Payer, "payers.yaml"),
            plan_types=payers.get("plan_types", {}),
            follow_up_business_days=payers.get("follow_up_business_days", 2),
            renewal_lead_days=payers.get("renewal_lead_days", 30),
            indications=_index(indications.get("indications", []), Indication, "indications.yaml"),
            letterhead=Letterhead.model_validate(letterhead),
            clinical_findings={k: v["label"] for k, v in findings.items()},
            policies=load_policies(reference_dir),
            evidence=load_library(reference_dir),
        )
    except ValidationError as exc:
        raise ReferenceDataError(f"reference data in {reference_dir} is invalid: {exc}") from exc
    for payer in catalog.payers.values():
        if payer.plan_type not in catalog.plan_types:
            raise ReferenceDataError(f"payers.yaml: {payer.id}: no rules for {payer.plan_type}")
        unknown = set(payer.preferred_products) - set(catalog.products)
        if unknown:
            raise ReferenceDataError(f"payers.yaml: {payer.id}: unknown products {sorted(unknown)}")
        missing = set(payer.policies) - set(catalog.policies)
        if missing:
            raise ReferenceDataError(f"payers.yaml: {payer.id}: unknown policies {sorted(missing)}")
    for name, rules in catalog.plan_types.items():
        missing = set(rules.policies) - set(catalog.policies)
        if missing:
            raise ReferenceDataError(
                f"payers.yaml: plan type {name}: unknown policies {sorted(missing)}"
            )
    return catalog
