"""Intake: read a case file (YAML or JSON) and give back a valid `Case` or every error at once.

Errors are `FieldError(field, message)` with a dotted field path and a plain-English reason.
Messages never quote patient names, birth dates or member IDs. Nothing here renders or writes.
"""

from __future__ import annotations

import json
import re
from datetime import date
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from priorauth.catalog import Catalog
from priorauth.domain import CASE_ID_PATTERN, Case
from priorauth.errors import CaseFileError, CaseValidationError, FieldError

MAX_CASE_FILE_BYTES = 1_000_000
CASE_SUFFIXES = (".yaml", ".yml", ".json")

try:  # libyaml is much faster when present; the pure-Python loader is the same grammar.
    _Loader: Any = yaml.CSafeLoader
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader

_PYDANTIC_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a field of the case format (check the spelling)",
    "string_type": "must be text (quote numbers with leading zeros, e.g. '0012345')",
    "date_type": "must be a date written YYYY-MM-DD",
    "date_from_datetime_parsing": "must be a date written YYYY-MM-DD",
    "date_parsing": "must be a date written YYYY-MM-DD",
    "model_type": "must be a mapping of fields",
    "list_type": "must be a list",
}


def field_path(loc: tuple[Any, ...]) -> str:
    """('prior_therapies', 1, 'stop') → 'prior_therapies[1].stop'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(case)"


def _message(error: dict[str, Any]) -> str:
    kind = error["type"]
    if kind in _PYDANTIC_MESSAGES:
        return _PYDANTIC_MESSAGES[kind]
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    if kind == "literal_error":
        return msg.replace("Input should be", "must be")
    return msg.replace("Input should be", "must be").replace("String should", "must")


def errors_from_validation(exc: ValidationError) -> list[FieldError]:
    """Pydantic's errors as field path + plain-English reason, without echoing input values."""
    return [FieldError(field_path(e["loc"]), _message(e)) for e in exc.errors(include_input=False)]


def parse_case_file(path: Path) -> dict[str, Any]:
    """Read a YAML or JSON case file into a mapping; raise CaseFileError if it is not one."""
    if path.suffix.lower() not in CASE_SUFFIXES:
        raise CaseFileError(f"{path.name}: not a case file (expected .yaml, .yml or .json)")
    try:
        size = path.stat().st_size
        if size > MAX_CASE_FILE_BYTES:
            raise CaseFileError(f"{path.name}: {size} bytes is larger than a case file can be")
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise CaseFileError(f"{path.name}: not UTF-8 text") from None
    except OSError as exc:
        raise CaseFileError(f"{path.name}: cannot read ({exc.strerror})") from None
    try:
        data = json.loads(text) if path.suffix.lower() == ".json" else yaml.load(text, _Loader)  # noqa: S506
    except json.JSONDecodeError as exc:
        raise CaseFileError(f"{path.name}: not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark else ""
        raise CaseFileError(f"{path.name}: not valid YAML{where}") from None
    if not isinstance(data, dict):
        raise CaseFileError(f"{path.name}: expected a mapping of case fields at the top level")
    return data


def cross_checks(case: Case, catalog: Catalog, case_dir: Path | None) -> list[FieldError]:
    """Rules that span sections: situation vs indication, dates vs birth, attachments exist."""
    errors: list[FieldError] = []
    born = case.patient.date_of_birth
    indication = catalog.indications[case.indication]
    if indication.situations:
        if case.clinical_situation is None:
            errors.append(
                FieldError(
                    "clinical_situation",
                    f"is required for {indication.id}; one of: {', '.join(indication.situations)}",
                )
            )
        elif case.clinical_situation not in indication.situations:
            errors.append(
                FieldError(
                    "clinical_situation",
                    f"{case.clinical_situation!r} is not a situation of {indication.id}; "
                    f"one of: {', '.join(indication.situations)}",
                )
            )
    elif case.clinical_situation is not None:
        errors.append(
            FieldError("clinical_situation", f"{indication.id} has no clinical situations")
        )

    def before_birth(field: str, when: date | None) -> None:
        if when is not None and when < born:
            errors.append(FieldError(field, "is before the date of birth"))

    for i, dx in enumerate(case.diagnoses):
        before_birth(f"diagnoses[{i}].diagnosed_on", dx.diagnosed_on)
    for i, therapy in enumerate(case.prior_therapies):
        before_birth(f"prior_therapies[{i}].start", therapy.start)
    for i, relapse in enumerate(case.clinical.relapses):
        before_birth(f"clinical.relapses[{i}].date", relapse.date)
    before_birth("patient.weight_measured_on", case.patient.weight_measured_on)
    if case_dir is not None:
        # Attachments sit beside the case file or in a sibling folder (../attachments/x.pdf);
        # a case file must not reach anywhere else on the machine.
        allowed_root = case_dir.resolve().parent
        for i, attachment in enumerate(case.attachments):
            resolved = (case_dir / attachment.path).resolve()
            if not attachment.path.lower().endswith(".pdf"):
                errors.append(FieldError(f"attachments[{i}].path", "must be a PDF file"))
            elif Path(attachment.path).is_absolute() or not resolved.is_relative_to(allowed_root):
                errors.append(
                    FieldError(
                        f"attachments[{i}].path",
                        "must be a relative path inside the case file's folder or a sibling folder",
                    )
                )
            elif not resolved.is_file():
                errors.append(
                    FieldError(f"attachments[{i}].path", f"file not found: {attachment.path}")
                )
    return errors


def validate_case(
    data: dict[str, Any], *, catalog: Catalog, today: date, case_dir: Path | None = None
) -> Case:
    """A mapping → a valid Case, or CaseValidationError listing every problem found."""
    try:
        case = Case.model_validate(data, context={"catalog": catalog, "today": today})
    except ValidationError as exc:
        raise CaseValidationError(errors_from_validation(exc)) from None
    errors = cross_checks(case, catalog, case_dir)
    if errors:
        raise CaseValidationError(errors)
    return case


def load_case(path: Path, *, catalog: Catalog, today: date) -> Case:
    """Read and validate one case file; attachment paths are checked relative to its folder."""
    data = parse_case_file(path)
    return validate_case(data, catalog=catalog, today=today, case_dir=path.parent)


def declared_case_id(data: dict[str, Any] | None) -> str | None:
    """The case ID a parsed case file declares, when it is well-formed; else None."""
    candidate = data.get("case_id") if data else None
    if isinstance(candidate, str) and re.fullmatch(CASE_ID_PATTERN, candidate):
        return candidate
    return None


def case_id_for(path: Path, data: dict[str, Any] | None) -> str:
    """The case ID to file a result under: the case's own when well-formed, else one made from the
    file name (restricted to safe characters so it can always name a folder)."""
    declared = declared_case_id(data)
    if declared:
        return declared
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", path.stem)[:63]
    return f"file-{stem}"[:64] if stem else "file-unnamed"


def find_case_files(paths: list[Path]) -> list[Path]:
    """Expand folders into their case files (sorted); keep files as given."""
    out: list[Path] = []
    for path in paths:
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix.lower() in CASE_SUFFIXES))
        else:
            out.append(path)
    return out
