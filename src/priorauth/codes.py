"""Code checks: ICD-10-CM (FY2026 code set via `simple-icd-10-cm`) and NPI check digits.

Pure lookups; no case logic here.
"""

from __future__ import annotations

from functools import lru_cache
from types import ModuleType


def _icd() -> ModuleType:
    """The FY2026 code set, loaded on first use: it takes seconds and 160 MB, which commands and
    portal pages that never check a code (status, cases, the queue) should not pay for. Render
    workers get it preloaded (pipeline.py)."""
    import simple_icd_10_cm

    return simple_icd_10_cm


def normalize_icd(code: str) -> str:
    """Upper-case and trim; accept the dotless form (G35A → G35.A) the way claims often carry it."""
    code = code.strip().upper()
    if "." not in code and len(code) > 3:
        code = f"{code[:3]}.{code[3:]}"
    return code


@lru_cache(maxsize=4096)
def icd_title(code: str) -> str | None:
    """The official title of a valid code (category or billable), or None when it is no code at all."""
    return _icd().get_description(code) if _icd().is_valid_item(code) else None


@lru_cache(maxsize=4096)
def is_billable(code: str) -> bool:
    """Billable means a leaf of the FY2026 tabular list (e.g. G35.A; not the category G35)."""
    return _icd().is_valid_item(code) and _icd().is_leaf(code)


@lru_cache(maxsize=1024)
def billable_children(code: str, limit: int = 12) -> tuple[str, ...]:
    """The billable codes under a category, in code-set order (at most `limit`)."""
    found: list[str] = []
    stack = list(reversed(_icd().get_children(code)))
    while stack and len(found) < limit:
        child = stack.pop()
        if _icd().is_leaf(child):
            found.append(child)
        else:
            stack.extend(reversed(_icd().get_children(child)))
    return tuple(found)


def icd_problem(code: str) -> str | None:
    """Why `code` cannot go on a claim, in plain English; None when it is a billable FY2026 code."""
    if not _icd().is_valid_item(code):
        return f"{code} is not an ICD-10-CM code in the FY2026 code set"
    if _icd().is_leaf(code):
        return None
    children = billable_children(code)
    more = "…" if len(children) == 12 else ""
    return (
        f"{code} ({_icd().get_description(code)}) is a category, not a billable code; "
        f"use one of: {', '.join(children)}{more}"
    )


def npi_is_valid(npi: str) -> bool:
    """10 digits whose last is the Luhn check digit over '80840' + the first 9 (CMS NPI standard)."""
    if len(npi) != 10 or not npi.isdigit():
        return False
    total = 0
    for position, char in enumerate(reversed("80840" + npi[:9])):
        digit = int(char)
        if position % 2 == 0:
            digit *= 2
            if digit > 9:
                digit -= 9
        total += digit
    return (10 - total % 10) % 10 == int(npi[9])
