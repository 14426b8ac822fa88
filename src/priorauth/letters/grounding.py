"""Grounded wording: every sentence about the patient names the case fields behind it and is
written only when they are present; every sentence about evidence is a claim from the library,
cited with numbered references. The ledger records both for summary.json `claims`.

Templates call `sentence(id, *field_paths)` as a jinja call block (its body is rendered only when
every path holds a value) and `claim(claim)` for evidence. This module checks and records; the
templates choose the words.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from markupsafe import Markup, escape

from priorauth.letters.evidence import Claim, Library

PATH_PART = re.compile(r"([a-z_]+)(?:\[(\d+)\])?")


def resolve(root: dict[str, Any], path: str) -> Any:
    """The value at a field path such as `diagnoses[0].confirmed_by` (None when absent).

    The first name is looked up in `root` (the case's fields, plus extras such as `renewal`)."""
    value: Any = root
    for part in path.split("."):
        match = PATH_PART.fullmatch(part)
        if match is None:
            raise ValueError(f"bad field path {path!r}")
        name, index = match.group(1), match.group(2)
        value = value.get(name) if isinstance(value, dict) else getattr(value, name, None)
        if value is not None and index is not None:
            value = value[int(index)] if int(index) < len(value) else None
        if value is None:
            return None
    return value


def present(value: Any) -> bool:
    """A fact the case holds: not None, not empty, not False."""
    return value is not None and value is not False and value != "" and value != [] and value != ()


@dataclass
class Ledger:
    """What one letter said and on what: patient sentences with their fields, evidence claims
    with their references (numbered in the order first cited)."""

    root: dict[str, Any]
    library: Library
    sentences: list[dict[str, Any]] = field(default_factory=list)
    cited: list[str] = field(default_factory=list)  # reference ids in citation order

    def sentence(self, sentence_id: str, *paths: str | None, caller: Any) -> Markup | str:
        if not paths or any(p is None or not present(resolve(self.root, p)) for p in paths):
            return ""
        text = caller()  # Markup: the template's own escaping stays as it is
        if str(text).strip():
            self.sentences.append(
                {"id": sentence_id, "kind": "patient", "fields": list(dict.fromkeys(paths))}
            )
        return text

    def claim(self, claim: Claim | str) -> Markup:
        """The claim's statement with its citation numbers, e.g. "… relapses [1, 2]."."""
        if isinstance(claim, str):
            claim = self.library.claims[claim]
        numbers = []
        for ref in claim.references:
            if ref not in self.cited:
                self.cited.append(ref)
            numbers.append(self.cited.index(ref) + 1)
        self.sentences.append(
            {"id": f"evidence.{claim.id}", "kind": "evidence", "evidence": [claim.id]}
        )
        statement = claim.statement.rstrip()
        end = statement[-1] if statement[-1] in ".!?" else "."
        body = statement.rstrip(".!?")
        return escape(f"{body} [{', '.join(map(str, numbers))}]{end}")

    def references(self) -> list[str]:
        """The printed endnotes, in citation order."""
        return [self.library.references[r].citation() for r in self.cited]

    def as_list(self) -> list[dict[str, Any]]:
        return [dict(s) for s in self.sentences]
