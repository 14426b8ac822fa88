"""The case model: what a prior-authorization case file holds (docs/case-format.md explains it).

Field-level rules live here (types, ranges, code checks, dates that make sense). Checks that need
reference data (does this payer exist?) read the catalog from the validation context.
It must not render, dose or store anything.
"""

from __future__ import annotations

import datetime as _dt
from datetime import date
from decimal import Decimal
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from priorauth import limits
from priorauth.codes import icd_problem, normalize_icd, npi_is_valid
from priorauth.dosing import inches_to_cm, pounds_to_kg

SCHEMA_VERSION = 1
CASE_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$"

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
LongText = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=5000)]
# Lengths the tracking store keeps (priorauth.limits, one place for the model, parsers and columns)
PersonName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=limits.PERSON_NAME)
]
MemberId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=limits.MEMBER_ID)
]
CatalogId = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=limits.CATALOG_ID)
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, str_strip_whitespace=True)


def _today(info: ValidationInfo) -> date:
    context = info.context or {}
    return context.get("today") or date.today()


def _not_future(value: date | None, info: ValidationInfo) -> date | None:
    # Messages never echo the date itself: dates tied to a patient are identifiers too.
    today = _today(info)
    if value is not None and value > today:
        raise ValueError(f"is in the future (after {today.isoformat()})")
    return value


class Height(_Model):
    """A height with its unit; `cm` gives it in centimetres at full precision."""

    value: Decimal = Field(gt=0, description="The number as measured.")
    unit: Literal["cm", "in"] = Field(description="cm or in.")

    @property
    def cm(self) -> Decimal:
        return self.value if self.unit == "cm" else inches_to_cm(self.value)

    @model_validator(mode="after")
    def _plausible(self) -> Height:
        if not Decimal(40) <= self.cm <= Decimal(250):
            raise ValueError(
                f"{self.value} {self.unit} is not a plausible height (40-250 cm); check the unit"
            )
        return self


class Weight(_Model):
    """A weight with its unit; `kg` gives it in kilograms at full precision."""

    value: Decimal = Field(gt=0, description="The number as measured.")
    unit: Literal["kg", "lb"] = Field(description="kg or lb.")

    @property
    def kg(self) -> Decimal:
        return self.value if self.unit == "kg" else pounds_to_kg(self.value)

    @model_validator(mode="after")
    def _plausible(self) -> Weight:
        if not Decimal(2) <= self.kg <= Decimal(400):
            raise ValueError(
                f"{self.value} {self.unit} is not a plausible weight (2-400 kg); check the unit"
            )
        return self


class Patient(_Model):
    first_name: PersonName
    last_name: PersonName
    date_of_birth: date
    sex: Literal["F", "M"] = Field(description="Sex used by the ideal-body-weight formula.")
    height: Height
    weight: Weight
    weight_measured_on: date | None = None
    conditions: list[Text] = Field(
        default_factory=list,
        description="Conditions that matter for product choice, e.g. hyperprolinemia, "
        "iga_deficiency_anti_iga, hereditary_fructose_intolerance.",
    )

    _future = field_validator("weight_measured_on")(_not_future)

    @field_validator("conditions")
    @classmethod
    def _known_conditions(cls, value: list[str], info: ValidationInfo) -> list[str]:
        catalog = (info.context or {}).get("catalog")
        if catalog is not None:
            unknown = [c for c in value if c not in catalog.contraindication_labels]
            if unknown:
                known = ", ".join(sorted(catalog.contraindication_labels))
                raise ValueError(f"unknown condition(s) {unknown}; known: {known}")
        return value

    @field_validator("date_of_birth")
    @classmethod
    def _born(cls, value: date, info: ValidationInfo) -> date:
        today = _today(info)
        if value > today:
            raise ValueError(f"is in the future (after {today.isoformat()})")
        if (today - value).days > 120 * 366:
            raise ValueError("gives an age over 120 years")
        return value

    @model_validator(mode="after")
    def _bmi(self) -> Patient:
        metres = self.height.cm / 100
        bmi = self.weight.kg / (metres * metres)
        if not Decimal(8) <= bmi <= Decimal(90):
            raise ValueError(
                f"weight and height give a BMI of {bmi:.0f}, which is not plausible; "
                "check both values and their units"
            )
        return self


class Coverage(_Model):
    payer_id: CatalogId = Field(description="ID of a payer in reference/payers.yaml.")
    member_id: MemberId
    group_number: Text | None = None
    plan_name: Text | None = None

    @field_validator("payer_id")
    @classmethod
    def _known_payer(cls, value: str, info: ValidationInfo) -> str:
        catalog = (info.context or {}).get("catalog")
        if catalog is not None and value not in catalog.payers:
            raise ValueError(f"unknown payer {value!r}; see reference/payers.yaml")
        return value


class Prescriber(_Model):
    first_name: Text
    last_name: Text
    credentials: Text = Field(description="e.g. MD, DO, NP.")
    specialty: Text
    npi: str = Field(description="10-digit National Provider Identifier.")
    practice: Text
    address: list[Text] = Field(min_length=1, max_length=4)
    phone: Text
    fax: Text
    letterhead: bool = Field(
        False,
        description="Print the letter on the practice's letterhead (practice, address, phone, "
        "fax) instead of the pharmacy's: the prescriber signs it.",
    )

    @field_validator("npi", mode="before")
    @classmethod
    def _npi(cls, value: object) -> object:
        if isinstance(value, int):
            value = str(value)
        if isinstance(value, str):
            value = value.strip()
            if len(value) != 10 or not value.isdigit():
                raise ValueError("an NPI is exactly 10 digits")
            if not npi_is_valid(value):
                raise ValueError(f"{value} fails the NPI check digit (Luhn over 80840 + 9 digits)")
        return value


class Diagnosis(_Model):
    code: str = Field(description="Billable ICD-10-CM FY2026 code, e.g. G35.A.")
    diagnosed_on: date | None = None
    course: Text | None = Field(None, description="Disease course, e.g. relapsing-remitting.")
    confirmed_by: Text | None = Field(None, description="e.g. neurologist, immunologist.")

    _future = field_validator("diagnosed_on")(_not_future)

    @field_validator("code", mode="before")
    @classmethod
    def _billable(cls, value: object) -> object:
        if isinstance(value, str):
            value = normalize_icd(value)
            problem = icd_problem(value)
            if problem:
                raise ValueError(problem)
        return value


class Relapse(_Model):
    date: date
    severity: Literal["mild", "moderate", "severe"]
    description: Text | None = None
    steroid_response: Literal["responded", "partial", "no_response", "contraindicated"] | None = (
        None
    )

    _future = field_validator("date")(_not_future)


class MRIFinding(_Model):
    date: date
    summary: LongText
    new_t2_lesions: int | None = Field(None, ge=0)
    enhancing_lesions: int | None = Field(None, ge=0)

    _future = field_validator("date")(_not_future)


class Measurement(_Model):
    """A score or lab result: EDSS, INCAT, MRC sum score, IgG trough, platelet count …"""

    date: date
    name: Text
    value: Decimal
    unit: Text | None = None

    _future = field_validator("date")(_not_future)


class ClinicalFinding(_Model):
    """A yes/no clinical fact a payer policy asks about (reference/clinical_findings.yaml names
    them), e.g. conduction block in at least one nerve, impaired pneumococcal vaccine response."""

    name: Text = Field(description="A finding from reference/clinical_findings.yaml.")
    present: bool = Field(description="true: documented present; false: documented absent.")
    date: _dt.date | None = None
    detail: Text | None = None

    _future = field_validator("date")(_not_future)

    @field_validator("name")
    @classmethod
    def _known_finding(cls, value: str, info: ValidationInfo) -> str:
        catalog = (info.context or {}).get("catalog")
        if (
            catalog is not None
            and catalog.clinical_findings
            and value not in catalog.clinical_findings
        ):
            known = ", ".join(sorted(catalog.clinical_findings))
            raise ValueError(f"unknown finding {value!r}; known: {known}")
        return value


class Clinical(_Model):
    history: LongText = Field(description="Clinical history in the prescriber's voice.")
    relapses: list[Relapse] = Field(default_factory=list)
    mri: list[MRIFinding] = Field(default_factory=list)
    scores: list[Measurement] = Field(default_factory=list)
    labs: list[Measurement] = Field(default_factory=list)
    pregnancy_status: Literal["pregnant", "postpartum", "breastfeeding", "planning"] | None = None
    steroid_response: Literal["responded", "partial", "no_response", "contraindicated"] | None = (
        None
    )
    treatment_goals: LongText | None = Field(
        None, description="Objective response measures set at the start (reassessed at renewal)."
    )
    findings: list[ClinicalFinding] = Field(default_factory=list, max_length=60)


class PriorTherapy(_Model):
    drug: Text
    start: date | None = None
    stop: date | None = None
    outcome: Literal["failure", "intolerance", "contraindication"]
    reason: Text = Field(description='The specific reason, e.g. "breakthrough relapse on month 9".')
    dose: Text | None = None

    _future = field_validator("start")(_not_future)

    @field_validator("stop")
    @classmethod
    def _stop(cls, value: date | None, info: ValidationInfo) -> date | None:
        value = _not_future(value, info)
        start = info.data.get("start")
        if value is not None and start is not None and value < start:
            raise ValueError("is before start")
        return value

    @model_validator(mode="after")
    def _dates(self) -> PriorTherapy:
        if self.outcome != "contraindication" and self.start is None:
            raise ValueError(f"a {self.outcome} needs the date the therapy started")
        return self


class Loading(_Model):
    """A loading phase before the maintenance regimen (the request's top-level fields): same
    product, weight basis and authorization period. Loading courses start on day 0 (then every
    `interval_days`); maintenance starts `request.interval_days` after the last one starts."""

    g_per_kg_per_course: Decimal = Field(gt=0, le=4)
    days_per_course: int = Field(1, ge=1, le=10)
    courses: int = Field(1, ge=1, le=12, description="Number of loading courses.")
    interval_days: int | None = Field(
        None,
        ge=1,
        le=365,
        description="Days between the starts of two loading courses; only when courses > 1.",
    )

    @model_validator(mode="after")
    def _interval(self) -> Loading:
        if self.courses > 1 and self.interval_days is None:
            raise ValueError(
                f"{self.courses} loading courses need interval_days (days between their starts)"
            )
        if self.courses == 1 and self.interval_days is not None:
            raise ValueError(
                "interval_days is the time between loading courses: leave it out for one loading "
                "course (maintenance starts request.interval_days after it)"
            )
        return self


class Request(_Model):
    product_id: CatalogId = Field(description="Product slug from reference/products.yaml.")
    g_per_kg_per_course: Decimal = Field(gt=0, le=4)
    days_per_course: int = Field(1, ge=1, le=10)
    interval_days: int | None = Field(None, ge=1, le=365, description="None: one-time course.")
    authorization_days: int = Field(180, ge=1, le=366)
    weight_basis: Literal["actual", "ideal", "adjusted", "policy"] = "policy"
    urgent: bool = False
    renewal: bool = False
    start_date: date | None = None
    product_reason: LongText | None = Field(
        None,
        description="Why this product, in the prescriber's words (an off-label or non-preferred "
        "product needs it); the letter prints it in its off-label section.",
    )
    loading: Loading | None = Field(
        None,
        description="Optional loading phase; the fields above are then the maintenance regimen.",
    )

    @model_validator(mode="after")
    def _maintenance_interval(self) -> Request:
        if self.loading is not None and self.interval_days is None:
            raise ValueError(
                "a loading phase needs interval_days for the maintenance courses (the first "
                "starts that many days after the last loading course)"
            )
        return self

    @field_validator("product_id")
    @classmethod
    def _known_product(cls, value: str, info: ValidationInfo) -> str:
        catalog = (info.context or {}).get("catalog")
        if catalog is not None and value not in catalog.products:
            raise ValueError(
                f"unknown product {value!r}; known: {', '.join(sorted(catalog.products))}"
            )
        return value


class SiteOfCare(_Model):
    setting: Literal["infusion_center", "home", "physician_office", "hospital_outpatient"]
    facility: Text | None = None
    rationale: LongText | None = None


class Attachment(_Model):
    title: Text
    kind: Literal[
        "clinic_note",
        "mri_report",
        "lab_report",
        "ncs_report",
        "vaccine_response",
        "infection_log",
        "specialist_consult",
        "pa_form",
        "imaging",
        "other",
    ] = Field(description="What the document is; payer criteria ask for documents by kind.")
    path: Text = Field(description="PDF path, relative to the case file's folder.")


class Case(_Model):
    """One prior-authorization request: everything the letter and packet are made from."""

    schema_version: Literal[1] = SCHEMA_VERSION
    case_id: str = Field(pattern=CASE_ID_PATTERN, description="Letters, digits, _ and -.")
    indication: CatalogId = Field(description="ID from reference/indications.yaml, e.g. ms, cidp.")
    clinical_situation: Text | None = Field(
        None, description="For indications with situations (MS): dmt_failure, pregnancy, ..."
    )
    prepared_on: date | None = Field(None, description="Letter date; default: the run's date.")
    patient: Patient
    coverage: Coverage
    prescriber: Prescriber
    diagnoses: list[Diagnosis] = Field(min_length=1, max_length=12)
    clinical: Clinical
    prior_therapies: list[PriorTherapy] = Field(default_factory=list, max_length=30)
    request: Request
    site_of_care: SiteOfCare
    attachments: list[Attachment] = Field(default_factory=list, max_length=20)

    @field_validator("indication")
    @classmethod
    def _known_indication(cls, value: str, info: ValidationInfo) -> str:
        catalog = (info.context or {}).get("catalog")
        if catalog is not None and value not in catalog.indications:
            raise ValueError(
                f"unknown indication {value!r}; known: {', '.join(sorted(catalog.indications))}"
            )
        return value


def case_json_schema() -> dict:
    """The published JSON Schema of a case file (docs/case.schema.json)."""
    schema = Case.model_json_schema(mode="validation")
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://github.com/priorauth/priorauth/docs/case.schema.json"
    return schema
