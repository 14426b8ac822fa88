"""The evidence library (`reference/evidence.yaml`): real references as structured data and the
claims they support, each with where it applies and how strong it is.

A letter states evidence only through a claim from this library, cited with its references; this
module loads and checks the library, picks the claims that apply to a case and formats citations.
It never writes sentences about a patient.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from priorauth.errors import ReferenceDataError

Strength = Literal[
    "rct", "meta_analysis", "guideline", "observational", "label", "negative_rct", "consensus"
]
# The order claims are printed in: guidelines and trials first, weaker evidence after.
STRENGTH_ORDER = {
    "guideline": 0,
    "meta_analysis": 1,
    "rct": 2,
    "consensus": 3,
    "observational": 4,
    "negative_rct": 5,
    "label": 6,
}


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Verification(_Frozen):
    on: date
    how: str
    where: str

    @model_validator(mode="before")
    @classmethod
    def _yaml_on(cls, data: object) -> object:
        # YAML 1.1 reads a bare `on:` key as the boolean True.
        if isinstance(data, dict) and True in data:
            data = {("on" if k is True else k): v for k, v in data.items()}
        return data


class Reference(_Frozen):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    authors: tuple[str, ...] = Field(min_length=1)
    title: str
    journal: str | None = None  # a journal article; else `publisher` (a guideline document)
    publisher: str | None = None
    year: int | None = Field(None, ge=1900, le=2100)
    version: str | None = None
    url: str | None = None
    volume: str | None = None
    issue: str | None = None
    pages: str | None = None
    pmid: str | None = Field(None, pattern=r"^\d{1,9}$")
    doi: str | None = Field(None, pattern=r"^10\.\S+/\S+$")
    verified: Verification

    def citation(self) -> str:
        """Vancouver/AMA style: up to three authors then et al.; title; journal year;vol(issue):pages."""
        names = [a for a in self.authors if a.rstrip(".").lower() != "et al"]
        more = len(names) > 3 or len(names) < len(self.authors)
        authors = ", ".join(names[:3]) + (", et al." if more else ".")
        title = self.title.rstrip(".") + "."
        if self.journal is None:
            where = ". ".join(
                x
                for x in (self.publisher, self.version, str(self.year) if self.year else None)
                if x
            )
            parts = [authors, title, where.rstrip(".") + "." if where else ""]
            if self.url:
                parts.append(f"Available at: {self.url}")
            return " ".join(p for p in parts if p)
        where = self.journal.rstrip(".") + (f". {self.year}" if self.year else "")
        if self.volume:
            where += f";{self.volume}"
            if self.issue:
                where += f"({self.issue})"
        if self.pages:
            where += f":{self.pages}"
        parts = [authors, title, where + "."]
        if self.pmid:
            parts.append(f"PMID: {self.pmid}.")
        if self.doi:
            parts.append(f"doi:{self.doi}")
        return " ".join(parts)


class Claim(_Frozen):
    id: str = Field(pattern=r"^[a-z0-9][a-z0-9-]*$")
    statement: str = Field(min_length=10)
    references: tuple[str, ...] = Field(min_length=1)
    indications: tuple[str, ...] = Field(min_length=1)
    situations: tuple[str, ...] = ()
    products: tuple[str, ...] = ()
    strength: Strength
    reviewed: str = Field(min_length=1)

    def applies(self, indication: str, situation: str | None, product: str) -> bool:
        return (
            indication in self.indications
            and (not self.situations or (situation or "") in self.situations)
            and (not self.products or product in self.products)
        )


class Library(_Frozen):
    references: dict[str, Reference]
    claims: dict[str, Claim]

    def claims_for(self, indication: str, situation: str | None, product: str) -> list[Claim]:
        """The claims that apply to a case, strongest kind of evidence first (stable)."""
        found = [c for c in self.claims.values() if c.applies(indication, situation, product)]
        return sorted(found, key=lambda c: STRENGTH_ORDER[c.strength])


def load_library(reference_dir: Path) -> Library:
    """Read `evidence.yaml`; every claim must cite known references. Empty when there is none."""
    path = reference_dir / "evidence.yaml"
    if not path.exists():
        return Library(references={}, claims={})
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        references = [Reference.model_validate(r) for r in data.get("references", [])]
        claims = [Claim.model_validate(c) for c in data.get("claims", [])]
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ReferenceDataError(f"evidence.yaml: {exc}") from exc
    by_id = {r.id: r for r in references}
    claims_by_id = {c.id: c for c in claims}
    if len(by_id) != len(references) or len(claims_by_id) != len(claims):
        raise ReferenceDataError("evidence.yaml: duplicate reference or claim ids")
    for claim in claims:
        unknown = sorted(set(claim.references) - set(by_id))
        if unknown:
            raise ReferenceDataError(f"evidence.yaml: claim {claim.id} cites unknown {unknown}")
    return Library(references=by_id, claims=claims_by_id)
