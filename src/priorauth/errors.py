"""The exception tree. Findings (warnings about a case) are data, not exceptions.

    PriorAuthError                  base of everything raised on purpose
    ├── ReferenceDataError          a catalog, payer or indication file is broken or an ID is unknown
    ├── CaseFileError               a case file cannot be read or parsed (not YAML/JSON, too big)
    ├── CaseValidationError         a case parsed but breaks the case format; carries every error
    ├── AttachmentError             an attachment is missing, encrypted, unreadable or unsafe
    └── DosingError                 dosing inputs that no dose can be computed from

Edges (CLI, flow, portal) translate these once: a one-line message, an exit code, a status.
Messages name case IDs and field paths, never patient names, birth dates or member IDs.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class FieldError:
    """One problem with one field: `field` is a dotted path such as `prior_therapies[1].stop`."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


class PriorAuthError(Exception):
    """Raised on purpose by the pipeline; the base of every error below."""


class ReferenceDataError(PriorAuthError):
    """Raised when a reference data file (products, payers, indications) is broken or an ID is unknown."""


class CaseFileError(PriorAuthError):
    """Raised when a case file cannot be read or parsed at all."""

    def __init__(self, message: str, *, field: str = "(file)") -> None:
        super().__init__(message)
        self.errors = [FieldError(field, message)]


class CaseValidationError(PriorAuthError):
    """Raised when a case breaks the case format; `errors` lists every problem found at once."""

    def __init__(self, errors: list[FieldError]) -> None:
        self.errors = errors
        super().__init__("; ".join(f"{e.field}: {e.message}" for e in errors))


class AttachmentError(PriorAuthError):
    """Raised when an attachment is missing, encrypted, unreadable or unsafe to read."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.errors = [FieldError(field, message)]


class DosingError(PriorAuthError):
    """Raised when dosing inputs cannot give a dose (no vial sizes, non-positive weight)."""
