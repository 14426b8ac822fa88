"""JSON and CSV payer response files (docs/payer-responses.md) read into `PayerResponse`
records through one pydantic model; errors name the field path or the row and column.
"""

from __future__ import annotations

import csv
import io
import json
import re
from datetime import date
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)

from priorauth import limits
from priorauth.responses import (
    INFO_REQUEST_REASONS,
    Format,
    Kind,
    PayerResponse,
    ResponseFileError,
    _FileContext,
    our_reason_code,
    reject_reason_text,
)
from priorauth.statuses import Status, status_for_decision

DECISION_CODES: dict[str, tuple[str, bool]] = {  # decision word → (HCR01 code, info requested)
    "approved": ("A1", False),
    "partially_approved": ("A2", False),
    "denied": ("A3", False),
    "pending": ("A4", False),
    "info_requested": ("A4", True),
    "not_required": ("NA", False),
    "withdrawn": ("C", False),
}
Decision = Literal[
    "approved",
    "partially_approved",
    "denied",
    "pending",
    "info_requested",
    "not_required",
    "withdrawn",
]
ActionCode = Literal["A1", "A2", "A3", "A4", "A6", "CT", "NA", "C"]
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


def _blank_to_none(value: Any) -> Any:
    if isinstance(value, str):
        value = value.strip()
        return value or None
    return value


def _iso_date(value: Any) -> Any:
    value = _blank_to_none(value)
    if value is None or isinstance(value, date):
        return value
    if not isinstance(value, str) or not _ISO_DATE.match(value):
        raise ValueError("must be a date written YYYY-MM-DD")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a real calendar date written YYYY-MM-DD") from None


def _upper(value: Any) -> Any:
    value = _blank_to_none(value)
    return value.upper() if isinstance(value, str) else value


def _opt_text(max_length: int) -> Any:
    """Optional text no longer than the store keeps (priorauth.limits)."""
    return Annotated[str | None, BeforeValidator(_blank_to_none), Field(max_length=max_length)]


OptText = _opt_text(64)
OptDate = Annotated[date | None, BeforeValidator(_iso_date)]


class RejectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[str, BeforeValidator(_upper), Field(min_length=1, max_length=8)]
    message: Annotated[str | None, BeforeValidator(_blank_to_none), Field(max_length=500)] = None


class ResponseIn(BaseModel):
    """One response in a JSON or CSV payer file (docs/payer-responses.md)."""

    model_config = ConfigDict(extra="forbid")

    case_id: _opt_text(limits.CASE_ID) = None
    payer_reference: _opt_text(limits.REFERENCE) = None
    member_id: _opt_text(limits.MEMBER_ID) = None
    hcpcs: Annotated[str | None, BeforeValidator(_upper), Field(pattern=r"^[A-Z0-9]{5}$")] = None
    service_start: OptDate = None
    service_end: OptDate = None
    decision: Annotated[Decision | None, BeforeValidator(_blank_to_none)] = None
    action_code: Annotated[ActionCode | None, BeforeValidator(_upper)] = None
    on_appeal: Annotated[bool, BeforeValidator(lambda v: _blank_to_none(v) or False)] = False
    reason_code: _opt_text(limits.REASON_CODE) = None
    reason_text: _opt_text(limits.REASON_TEXT) = None
    certification_number: _opt_text(limits.REFERENCE) = None
    authorized_start: OptDate = None
    authorized_end: OptDate = None
    authorized_units: Annotated[
        int | None, BeforeValidator(_blank_to_none), Field(ge=0, le=10_000_000)
    ] = None
    decision_date: OptDate = None
    rejection_errors: list[RejectionIn] = Field(default_factory=list)

    @model_validator(mode="after")
    def _consistent(self) -> ResponseIn:
        if self.rejection_errors:
            if self.decision or self.action_code:
                raise ValueError(
                    "a rejection (rejection_errors) is not a decision: leave out decision "
                    "and action_code"
                )
        elif self.decision and self.action_code:
            raise ValueError("give decision or action_code, not both")
        elif not (self.decision or self.action_code):
            raise ValueError(
                "needs a decision or an action_code (or rejection_errors for a rejection)"
            )
        for first, last in (
            ("service_start", "service_end"),
            ("authorized_start", "authorized_end"),
        ):
            a, b = getattr(self, first), getattr(self, last)
            if a and b and b < a:
                raise ValueError(f"{last} is before {first}")
        return self


class ResponseFileIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    responses: list[ResponseIn] = Field(min_length=1)


COLUMNS = tuple(ResponseIn.model_fields)
_MESSAGES = {
    "missing": "is required",
    "extra_forbidden": "is not a field of the response format (check the spelling)",
    "string_type": "must be text",
    "bool_parsing": "must be true or false",
    "bool_type": "must be true or false",
    "int_parsing": "must be a whole number",
    "int_type": "must be a whole number",
    "int_from_float": "must be a whole number",
    "list_type": "must be a list",
    "model_type": "must be an object of fields",
    "model_attributes_type": "must be an object of fields",
    "too_short": "must not be empty",
}


def _message(error: Any) -> str:
    kind = error["type"]
    if kind in _MESSAGES:
        return _MESSAGES[kind]
    if kind in ("too_long", "string_too_long") and "max_length" in (error.get("ctx") or {}):
        return f"must have at most {error['ctx']['max_length']} characters"
    if kind == "literal_error":
        return f"must be one of {error['ctx']['expected']}"
    if kind == "string_pattern_mismatch":
        return "must be a 5-character HCPCS/CPT code such as J1459"
    msg = str(error["msg"])
    for prefix in ("Value error, ", "Assertion failed, "):
        msg = msg.removeprefix(prefix)
    return msg.replace("Input should be", "must be").replace("String should", "must")


def _loc(parts: tuple[Any, ...]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(file)"


def _summarize(problems: list[str], ctx: _FileContext) -> ResponseFileError:
    shown = problems[:10]
    more = f"; … and {len(problems) - 10} more" if len(problems) > 10 else ""
    return ctx.error("; ".join(shown) + more)


def _from_input(item: ResponseIn, fmt: Format, ctx: _FileContext) -> PayerResponse:
    if item.rejection_errors:
        kind: Kind = "rejection"
        status = None
        errors = tuple(
            (e.code, e.message or reject_reason_text(e.code)) for e in item.rejection_errors
        )
    else:
        kind = "decision"
        errors = ()
        if item.decision is not None:
            code, info_requested = DECISION_CODES[item.decision]
        else:  # A4 pended with HCR03 0U "additional patient information required": a request
            code = str(item.action_code)
            info_requested = (
                code == "A4" and (item.reason_code or "").upper() in INFO_REQUEST_REASONS
            )
        status = status_for_decision(code, on_appeal=item.on_appeal, info_requested=info_requested)
    certifying = status is not None and status in {
        Status.APPROVED,
        Status.PARTIALLY_APPROVED,
        Status.APPEAL_APPROVED,
    }
    index, dedup_key = ctx.next_key()
    return PayerResponse(
        source=ctx.name,
        index=index,
        format=fmt,
        kind=kind,
        case_id=item.case_id,
        payer_reference=item.payer_reference,
        member_id=item.member_id,
        hcpcs=item.hcpcs,
        service_start=item.service_start,
        service_end=item.service_end,
        action_code=item.action_code,
        status=status,
        on_appeal=item.on_appeal if kind == "decision" else False,
        payer_reason_code=item.reason_code,
        reason_code=our_reason_code(status, item.reason_code, ctx.reasons),
        reason_text=item.reason_text,
        certification_number=item.certification_number,
        authorized_start=item.authorized_start if certifying else None,
        authorized_end=item.authorized_end if certifying else None,
        authorized_units=item.authorized_units if certifying else None,
        decision_date=item.decision_date,
        rejection_errors=errors,
        dedup_key=dedup_key,
    )


def parse_json(text: str, ctx: _FileContext) -> list[PayerResponse]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ctx.error(f"not valid JSON (line {exc.lineno}: {exc.msg})") from None
    except RecursionError:
        raise ctx.error("not valid JSON (nested too deeply)") from None
    if not isinstance(data, dict):
        raise ctx.error('expected an object with a "responses" list at the top level')
    try:
        parsed = ResponseFileIn.model_validate(data)
    except ValidationError as exc:
        problems = [f"{_loc(e['loc'])}: {_message(e)}" for e in exc.errors(include_input=False)]
        raise _summarize(problems, ctx) from None
    except RecursionError:
        raise ctx.error("not valid JSON (nested too deeply)") from None
    return [_from_input(item, "json", ctx) for item in parsed.responses]


def _rejection_cell(cell: str) -> list[dict[str, str]]:
    """`72: member ID not on file; AF` → [{code: 72, message: …}, {code: AF}]."""
    entries = []
    for part in cell.split(";"):
        code, sep, message = part.partition(":")
        if code.strip() or message.strip():
            entries.append({"code": code.strip(), **({"message": message.strip()} if sep else {})})
    return entries


def parse_csv(text: str, ctx: _FileContext) -> list[PayerResponse]:
    try:
        numbered = list(enumerate(csv.reader(io.StringIO(text, newline="")), start=1))
    except csv.Error as exc:
        raise ctx.error(f"not valid CSV ({exc})") from None
    rows = [(number, row) for number, row in numbered if any(cell.strip() for cell in row)]
    if not rows:
        raise ctx.error("the file is empty")
    header = [cell.strip().lower() for cell in rows[0][1]]
    known = [h for h in header if h in COLUMNS]
    if not known:
        raise ctx.error(
            "the first row is not a header row: it must name the columns, e.g. case_id, "
            "decision, action_code (see docs/payer-responses.md)"
        )
    unknown = [h for h in header if h not in COLUMNS]
    if unknown:
        names = ", ".join(repr(h[:40]) for h in unknown[:5])
        raise ctx.error(f"unknown column(s) {names} in the header row")
    if len(set(header)) != len(header):
        raise ctx.error("a column appears twice in the header row")
    if not {"decision", "action_code", "rejection_errors"} & set(header):
        raise ctx.error("the header needs a decision, action_code or rejection_errors column")
    if len(rows) == 1:
        raise ctx.error("the file has a header row but no responses")
    problems: list[str] = []
    items: list[ResponseIn] = []
    for number, row in rows[1:]:
        if len(row) > len(header):
            problems.append(f"row {number}: more cells than the header has columns")
            continue
        record: dict[str, Any] = {
            column: cell for column, cell in zip(header, row, strict=False) if cell.strip()
        }
        if "rejection_errors" in record:
            record["rejection_errors"] = _rejection_cell(record["rejection_errors"])
        try:
            items.append(ResponseIn.model_validate(record))
        except ValidationError as exc:
            for e in exc.errors(include_input=False):
                where = f", column {e['loc'][0]}" if e["loc"] else ""
                problems.append(f"row {number}{where}: {_message(e)}")
    if problems:
        raise _summarize(problems, ctx)
    return [_from_input(item, "csv", ctx) for item in items]
