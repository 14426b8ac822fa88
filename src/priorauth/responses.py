"""Payer response files (X12 278, JSON, CSV) read into plain `PayerResponse` records.

One record per decision or transaction rejection, carrying every key a case can be matched by.
It matches nothing, moves no file and changes no status: the tracking store does that.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    model_validator,
)
from pyx12.errors import EngineError, X12Error
from pyx12.rawx12file import RawX12File
from pyx12.segment import Segment

from priorauth.errors import PriorAuthError, ReferenceDataError
from priorauth.files import sha256_bytes
from priorauth.settings import REPO_ROOT
from priorauth.statuses import ADVERSE, IllegalTransition, Status, status_for_decision

MAX_RESPONSE_FILE_BYTES = 5_000_000
X12_SUFFIXES = (".x12", ".278", ".edi", ".txt")
RESPONSE_SUFFIXES = (*X12_SUFFIXES, ".json", ".csv")
DENIAL_REASONS_FILE = "denial_reasons.yaml"
UNSPECIFIED = "UNSPECIFIED"  # an adverse decision whose payer reason we cannot map

Format = Literal["x12-278", "json", "csv"]
Kind = Literal["decision", "rejection"]


class ResponseFileError(PriorAuthError):
    """Raised when a payer response file cannot be read at all: unknown type, too big, not X12,
    JSON or CSV, a broken envelope, or fields outside the documented format. The message is
    "<file name>: <plain reason>" and never quotes member IDs or names."""


@dataclass(frozen=True)
class PayerResponse:
    """One payer decision (or one transaction rejection) with every key to match it to a case."""

    source: str  # file name, not the full path
    index: int  # position of this response within the file (0-based)
    format: Format
    kind: Kind  # rejection = AAA / transaction error, never a denial
    case_id: str | None  # our trace number (X12: TRN02 of the TRN we sent, echoed as TRN*2)
    payer_reference: str | None  # the payer's own tracking/reference number
    member_id: str | None
    hcpcs: str | None
    service_start: date | None
    service_end: date | None
    action_code: str | None  # HCR01 as sent, e.g. A1, A3, CT
    status: Status | None  # None for rejections
    on_appeal: bool
    payer_reason_code: str | None  # HCR03 (or reason_code in JSON/CSV) as sent
    reason_code: str | None  # our stable code (DOMAIN.md §9 or UNSPECIFIED); None unless adverse
    reason_text: str | None  # the payer's words (X12: MSG text)
    certification_number: str | None  # HCR02
    authorized_start: date | None
    authorized_end: date | None
    authorized_units: int | None
    decision_date: date | None
    rejection_errors: tuple[tuple[str, str], ...]  # (AAA03 code, plain-English meaning)
    dedup_key: str  # sha256 of the file bytes + ":" + index


# ---- denial reasons --------------------------------------------------------------------------


class DenialReasons(dict[str, str]):
    """Payer reason code (upper case) → our stable code; `default` for codes not listed.

    Our own codes map to themselves, so a file that already speaks our language passes through.
    """

    def __init__(self, mapping: Mapping[str, str], default: str) -> None:
        super().__init__(mapping)
        self.default = default


def load_denial_reasons(reference_dir: Path) -> DenialReasons:
    """Read `reference/denial_reasons.yaml`: payer HCR03 / text code → our code (DOMAIN.md §9)."""
    path = reference_dir / DENIAL_REASONS_FILE
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ReferenceDataError(f"{path.name}: cannot read reference data: {exc}") from exc
    if not isinstance(data, dict):
        raise ReferenceDataError(f"{path.name}: expected a mapping at the top level")
    codes = data.get("codes")
    default = data.get("default")
    if not isinstance(codes, list) or not all(isinstance(c, str) for c in codes):
        raise ReferenceDataError(f"{path.name}: `codes` must be the list of our stable codes")
    ours = set(codes)
    if default not in ours:
        raise ReferenceDataError(f"{path.name}: `default` must be one of `codes`")
    mapping: dict[str, str] = {code: code for code in ours}
    for section in ("x12_hcr03", "payer_text"):
        entries = data.get(section) or {}
        if not isinstance(entries, dict):
            raise ReferenceDataError(f"{path.name}: `{section}` must map payer codes to ours")
        for payer_code, our_code in entries.items():
            if not isinstance(payer_code, str):
                raise ReferenceDataError(
                    f"{path.name}: {section} key {payer_code!r} must be quoted text "
                    "(YAML reads 07 as the number 7)"
                )
            if our_code not in ours:
                raise ReferenceDataError(
                    f"{path.name}: {section}.{payer_code} maps to {our_code!r}, not one of `codes`"
                )
            key = payer_code.strip().upper()
            if key in mapping and mapping[key] != our_code:
                raise ReferenceDataError(f"{path.name}: payer code {key!r} is mapped twice")
            mapping[key] = our_code
    return DenialReasons(mapping, default)


@lru_cache(maxsize=1)
def _default_reasons() -> DenialReasons:
    return load_denial_reasons(REPO_ROOT / "reference")


def our_reason_code(
    status: Status | None, payer_code: str | None, reasons: Mapping[str, str]
) -> str | None:
    """Our stable reason for an adverse decision (denied, partial, appeal denied); else None."""
    if status not in ADVERSE:
        return None
    default = getattr(reasons, "default", UNSPECIFIED)
    if not payer_code:
        return default
    return reasons.get(payer_code.strip().upper(), default)


# ---- X12 code lists --------------------------------------------------------------------------

# AAA03 Reject Reason Codes (X12 element 901) seen in 278 responses, in plain English. Checked
# against the X12 element 901 code list and OpenEMR's edih_271_code_class.php (AAA03 table).
REJECT_REASONS: dict[str, str] = {
    "04": "authorized quantity exceeded",
    "15": "required application data missing",
    "33": "input errors",
    "35": "out of network",
    "41": "authorization/access restrictions",
    "42": "unable to respond at current time",
    "43": "invalid/missing provider identification",
    "44": "invalid/missing provider name",
    "45": "invalid/missing provider specialty",
    "46": "invalid/missing provider phone number",
    "47": "invalid/missing provider state",
    "48": "invalid/missing referring provider identification number",
    "49": "provider is not primary care physician",
    "51": "provider not on file",
    "52": "service dates not within provider plan enrollment",
    "56": "inappropriate date",
    "57": "invalid/missing date(s) of service",
    "58": "invalid/missing date of birth",
    "60": "date of birth follows date(s) of service",
    "61": "date of death precedes date(s) of service",
    "62": "date of service not within allowable inquiry period",
    "63": "date of service in future",
    "64": "invalid/missing patient ID",
    "65": "invalid/missing patient name",
    "66": "invalid/missing patient gender code",
    "67": "patient not found",
    "68": "duplicate patient ID number",
    "71": "patient birth date does not match that for the patient on the database",
    "72": "invalid/missing subscriber/insured ID",
    "73": "invalid/missing subscriber/insured name",
    "74": "invalid/missing subscriber/insured gender code",
    "75": "subscriber/insured not found",
    "76": "duplicate subscriber/insured ID number",
    "77": "subscriber found, patient not found",
    "78": "subscriber/insured not in group/plan identified",
    "79": "invalid participant identification",
    "95": "patient not eligible",
    "97": "invalid or missing provider address",
    "AA": "authorization number not found",
    "AE": "requires primary care physician authorization",
    "AF": "invalid/missing diagnosis code(s)",
    "AG": "invalid/missing procedure code(s)",
    "AO": "additional patient condition information required",
    "CI": "certification information does not match patient",
    "E8": "requires medical review",
    "IA": "invalid authorization number format",
    "MA": "missing authorization number",
    "T5": "certification information missing",
}

# AAA04 Follow-up Action Codes (X12 element 889).
FOLLOW_UP_ACTIONS: dict[str, str] = {
    "C": "please correct and resubmit",
    "N": "resubmission not allowed",
    "P": "please resubmit original transaction",
    "R": "resubmission allowed",
    "S": "do not resubmit; inquiry initiated to a third party",
    "W": "please wait 30 days and resubmit",
    "X": "please wait 10 days and resubmit",
    "Y": "do not resubmit; we will respond again shortly",
}

# HCR03 (code source 886) "0U Additional patient information required": with A4 (pended) it is
# the payer asking us for more (DOMAIN.md §7: A4 with an information request → info_requested).
INFO_REQUEST_REASONS = frozenset({"0U"})
# Decisions that certify something: only these carry authorized dates and units.
CERTIFYING = frozenset({"A1", "A2", "A6"})

HL_UMO, HL_REQUESTER, HL_SUBSCRIBER, HL_DEPENDENT, HL_EVENT, HL_SERVICE = (
    "20",
    "21",
    "22",
    "23",
    "EV",
    "SS",
)
ISA_LENGTH = 106
# The ISA is fixed-width (X12 5010 ISA01-ISA16): its element separators sit at these positions.
ISA_SEPARATORS = [3, 6, 17, 20, 31, 34, 50, 53, 69, 76, 81, 83, 89, 99, 101, 103]
_SEGMENT_ID = re.compile(r"^[A-Z][A-Z0-9]{1,2}$")
_D8 = re.compile(r"^\d{8}$")
_QUANTITY = re.compile(r"^\d{1,9}(\.0*)?$")  # X12 R type, whole units only


def reject_reason_text(code: str, follow_up: str | None = None) -> str:
    """Plain English for an AAA03 code (and AAA04 follow-up action, when given)."""
    text = REJECT_REASONS.get(code, f"reject reason code {code}" if code else "no reason code")
    if follow_up:
        text += f"; {FOLLOW_UP_ACTIONS.get(follow_up, f'follow-up action {follow_up}')}"
    return text


# ---- the entry point -------------------------------------------------------------------------


def parse_response_file(
    path: Path, *, reasons: Mapping[str, str] | None = None
) -> list[PayerResponse]:
    """Every response in a payer file, in file order. The format is picked by suffix.

    `reasons` maps payer reason codes to ours (`load_denial_reasons`); by default the repository's
    `reference/denial_reasons.yaml`. Anything unreadable raises ResponseFileError, nothing else.
    """
    name = path.name
    suffix = path.suffix.lower()
    if suffix not in RESPONSE_SUFFIXES:
        raise ResponseFileError(
            f"{name}: not a payer response file type (expected {', '.join(RESPONSE_SUFFIXES)})"
        )
    data = _read_bytes(path)
    if reasons is None:
        reasons = _default_reasons()
    context = _FileContext(name=name, digest=sha256_bytes(data), reasons=reasons)
    if suffix in X12_SUFFIXES:
        return _parse_x12(data, context)
    text = _decode_text(data, context.name)
    if suffix == ".json":
        return _parse_json(text, context)
    return _parse_csv(text, context)


@dataclass
class _FileContext:
    name: str
    digest: str
    reasons: Mapping[str, str]
    count: int = field(default=0)

    def error(self, reason: str) -> ResponseFileError:
        return ResponseFileError(f"{self.name}: {reason}")

    def next_key(self) -> tuple[int, str]:
        index = self.count
        self.count += 1
        return index, f"{self.digest}:{index}"


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_RESPONSE_FILE_BYTES + 1)
    except OSError as exc:
        raise ResponseFileError(f"{path.name}: cannot read ({exc.strerror or exc})") from None
    if len(data) > MAX_RESPONSE_FILE_BYTES:
        raise ResponseFileError(
            f"{path.name}: larger than {MAX_RESPONSE_FILE_BYTES:,} bytes; a payer response file "
            "is never this big"
        )
    if not data.strip():
        raise ResponseFileError(f"{path.name}: the file is empty")
    return data


def _decode_text(data: bytes, name: str) -> str:
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ResponseFileError(f"{name}: not UTF-8 text") from None


# ---- X12 278 ---------------------------------------------------------------------------------


@dataclass
class _Loop:
    """One HL loop of a 278 and the segments up to the next HL."""

    hl_id: str
    parent: _Loop | None
    level: str
    segments: list[Segment] = field(default_factory=list)
    children: list[_Loop] = field(default_factory=list)

    def all(self, seg_id: str) -> list[Segment]:
        return [s for s in self.segments if s.get_seg_id() == seg_id]

    def ancestor(self, level: str) -> _Loop | None:
        loop: _Loop | None = self
        while loop is not None and loop.level != level:
            loop = loop.parent
        return loop


def _v(seg: Segment, ref: str) -> str | None:
    """An element's value, stripped; None when absent or empty."""
    value = seg.get_value(ref)
    if value is None:
        return None
    value = value.strip()
    return value or None


def _parse_x12(data: bytes, ctx: _FileContext) -> list[PayerResponse]:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ctx.error("not an X12 interchange: not ASCII/UTF-8 text") from None
    text = text.lstrip("\ufeff \t\r\n")
    if not text.startswith("ISA"):
        raise ctx.error("not an X12 interchange: it does not start with an ISA segment")
    if len(text) < ISA_LENGTH:
        raise ctx.error(
            f"the ISA segment is cut short ({len(text)} characters; an ISA is exactly "
            f"{ISA_LENGTH}): truncated file"
        )
    separator = text[3]
    if [i for i, c in enumerate(text[: ISA_LENGTH - 1]) if c == separator] != ISA_SEPARATORS:
        raise ctx.error(
            "the ISA segment is not the fixed 106 characters with 16 elements: truncated, "
            "hand-edited or not X12"
        )
    try:
        segments, terms = _tokenize(text, ctx)
        transactions = _check_envelope(segments, ctx)
        responses: list[PayerResponse] = []
        for tx in transactions:
            responses.extend(_read_transaction(tx, terms[2], ctx))
    except (X12Error, EngineError, ValueError, IndexError) as exc:
        # pyx12's own errors (and any tokenizer surprise) on input we did not foresee
        raise ctx.error(f"not a readable X12 interchange ({type(exc).__name__})") from None
    if not responses:
        raise ctx.error("the interchange holds no 278 review decision and no rejection")
    return responses


def _tokenize(text: str, ctx: _FileContext) -> tuple[list[Segment], tuple[str, str, str]]:
    """Segments as pyx12 reads them with the delimiters the ISA declares."""
    try:
        raw = RawX12File(io.StringIO(text))
    except X12Error:
        version = text[84:89]
        raise ctx.error(
            f"the ISA declares version {version!r}; expected 00501 (or 00401)"
        ) from None
    seg_term, ele_term, subele_term, _, _ = raw.get_term()
    delimiters = {seg_term, ele_term, subele_term}
    if len(delimiters) != 3 or any(c.isalnum() or c == " " for c in delimiters):
        raise ctx.error(
            "the ISA does not declare three distinct delimiters (element, sub-element, "
            "segment): the ISA is not the fixed 106 characters or the file is not X12"
        )
    segments: list[Segment] = []
    for number, seg_str in enumerate(raw, start=1):
        seg = Segment(seg_str, seg_term, ele_term, subele_term)
        seg_id = seg.get_seg_id() or ""
        if not _SEGMENT_ID.match(seg_id):
            raise ctx.error(f"segment {number} does not start with a segment ID: not X12")
        segments.append(seg)
    if raw.buffer.strip():
        raise ctx.error(
            f"the interchange stops after segment {len(segments)} with an unterminated or "
            "empty segment: truncated file"
        )
    isa = segments[0]
    if len(isa) != 16:
        raise ctx.error("the ISA segment does not have its 16 elements (it must be 106 characters)")
    return segments, (seg_term, ele_term, subele_term)


def _count(seg: Segment, ref: str, ctx: _FileContext) -> int:
    value = _v(seg, ref)
    if value is None or not value.isdigit():
        raise ctx.error(f"{ref} must be a number")
    return int(value)


def _check_envelope(segments: list[Segment], ctx: _FileContext) -> list[list[Segment]]:
    """ISA/GS/ST … SE/GE/IEA in order with consistent counts and control numbers; ST01 = 278."""
    isa13 = _v(segments[0], "ISA13")
    transactions: list[list[Segment]] = []
    groups = 0
    i, n = 1, len(segments)
    while i < n:
        seg_id = segments[i].get_seg_id()
        if seg_id == "IEA":
            if _count(segments[i], "IEA01", ctx) != groups:
                raise ctx.error(f"IEA01 says {_v(segments[i], 'IEA01')} groups; found {groups}")
            if _v(segments[i], "IEA02") != isa13:
                raise ctx.error("IEA02 does not match the ISA13 control number")
            if i + 1 < n:
                raise ctx.error("segments follow the IEA trailer (one interchange per file)")
            return transactions
        if seg_id != "GS":
            raise ctx.error(f"unexpected {seg_id} segment outside a functional group (GS … GE)")
        groups += 1
        gs06 = _v(segments[i], "GS06")
        in_group = 0
        i += 1
        while i < n and segments[i].get_seg_id() == "ST":
            start = i
            st = segments[i]
            st02 = _v(st, "ST02") or "?"
            if _v(st, "ST01") != "278":
                raise ctx.error(
                    f"transaction {st02} is a {_v(st, 'ST01')!s} (ST01), not a 278 "
                    "health care services review"
                )
            i += 1
            while i < n and segments[i].get_seg_id() not in {"SE", "ST", "GE", "GS", "IEA"}:
                i += 1
            if i == n or segments[i].get_seg_id() != "SE":
                raise ctx.error(f"transaction {st02} has no SE trailer: truncated file")
            se = segments[i]
            if _count(se, "SE01", ctx) != i - start + 1:
                raise ctx.error(
                    f"transaction {st02}: SE01 says {_v(se, 'SE01')} segments; found "
                    f"{i - start + 1}"
                )
            if _v(se, "SE02") != _v(st, "ST02"):
                raise ctx.error(f"transaction {st02}: SE02 does not match ST02")
            transactions.append(segments[start : i + 1])
            in_group += 1
            i += 1
        if i == n:
            raise ctx.error("the functional group has no GE trailer: truncated file")
        ge = segments[i]
        if ge.get_seg_id() != "GE":
            raise ctx.error(f"unexpected {ge.get_seg_id()} segment between transactions")
        if _count(ge, "GE01", ctx) != in_group:
            raise ctx.error(f"GE01 says {_v(ge, 'GE01')} transactions; found {in_group}")
        if _v(ge, "GE02") != gs06:
            raise ctx.error("GE02 does not match the GS06 group control number")
        i += 1
    raise ctx.error("the interchange has no IEA trailer: truncated file")


def _x12_date(value: str | None, what: str, ctx: _FileContext) -> date:
    if value is None or not _D8.match(value):
        raise ctx.error(f"{what} is not a CCYYMMDD date")
    try:
        return date(int(value[:4]), int(value[4:6]), int(value[6:]))
    except ValueError:
        raise ctx.error(f"{what} is not a real calendar date") from None


def _dtp(
    loops: list[_Loop], qualifier: str, tx: str, ctx: _FileContext
) -> tuple[date, date | None] | None:
    """The first DTP with this qualifier in the loops given (nearest first): (start, end)."""
    for loop in loops:
        for seg in loop.all("DTP"):
            if _v(seg, "DTP01") != qualifier:
                continue
            what = f"transaction {tx}: DTP*{qualifier}"
            fmt, value = _v(seg, "DTP02"), _v(seg, "DTP03")
            if fmt == "D8":
                return _x12_date(value, what, ctx), None
            if fmt == "RD8":
                first, _, last = (value or "").partition("-")
                start, end = _x12_date(first, what, ctx), _x12_date(last, what, ctx)
                if end < start:
                    raise ctx.error(f"{what} ends before it starts")
                return start, end
            raise ctx.error(f"{what} uses date format {fmt!s}; expected D8 or RD8")
    return None


def _aaa(seg: Segment) -> tuple[str, str]:
    """(AAA03 reject reason code, plain English with the AAA04 follow-up action)."""
    code = _v(seg, "AAA03") or ""
    return code, reject_reason_text(code, _v(seg, "AAA04"))


def _first(loops: list[_Loop], seg_id: str, test: Callable[[Segment], bool]) -> Segment | None:
    for loop in loops:
        for seg in loop.all(seg_id):
            if test(seg):
                return seg
    return None


def _qualified(loops: list[_Loop], seg_id: str, qualifier: str) -> str | None:
    """Element 02 of the first `seg_id` whose element 01 is `qualifier` (TRN*1, REF*NT …)."""
    seg = _first(loops, seg_id, lambda s: _v(s, f"{seg_id}01") == qualifier)
    return _v(seg, f"{seg_id}02") if seg is not None else None


def _build_loops(body: list[Segment], tx: str, ctx: _FileContext) -> list[_Loop]:
    loops: dict[str, _Loop] = {}
    order: list[_Loop] = []
    current: _Loop | None = None
    for seg in body:
        if seg.get_seg_id() == "HL":
            hl_id, parent_id, level = _v(seg, "HL01"), _v(seg, "HL02"), _v(seg, "HL03")
            if hl_id is None or level is None or hl_id in loops:
                raise ctx.error(f"transaction {tx}: an HL segment lacks a unique ID or level code")
            parent = None
            if parent_id is not None:
                parent = loops.get(parent_id)
                if parent is None:
                    raise ctx.error(f"transaction {tx}: HL {hl_id} names an unknown parent")
            current = _Loop(hl_id, parent, level)
            if parent is not None:
                parent.children.append(current)
            loops[hl_id] = current
            order.append(current)
        elif current is not None:
            current.segments.append(seg)
        elif seg.get_seg_id() not in {"REF", "DTP"}:  # header REF/DTP before the first HL
            raise ctx.error(f"transaction {tx}: {seg.get_seg_id()} segment before the first HL")
    return order


def _read_transaction(
    segments: list[Segment], subele_term: str, ctx: _FileContext
) -> Iterator[PayerResponse]:
    tx = _v(segments[0], "ST02") or "?"
    bht = segments[1] if len(segments) > 2 else None
    if bht is None or bht.get_seg_id() != "BHT":
        raise ctx.error(f"transaction {tx}: the BHT segment must follow ST")
    if _v(bht, "BHT02") == "13":
        raise ctx.error(f"transaction {tx} is a 278 request (BHT02 13), not a response")
    bht04 = _x12_date(_v(bht, "BHT04"), f"transaction {tx}: BHT04", ctx)
    loops = _build_loops(segments[2:-1], tx, ctx)
    reader = _TransactionReader(tx, bht04, subele_term, ctx)

    header_errors = [
        seg
        for loop in loops
        if loop.level in {HL_UMO, HL_REQUESTER, HL_SUBSCRIBER, HL_DEPENDENT}
        for seg in loop.all("AAA")
    ]
    events = [loop for loop in loops if loop.level == HL_EVENT]
    if header_errors:
        # The request was refused before review (payer, requester or member level): one rejection
        # for the whole transaction, with every AAA in it.
        event = events[0] if events else None
        service = (
            next((c for c in event.children if c.level == HL_SERVICE), None) if event else None
        )
        every = [seg for loop in loops for seg in loop.all("AAA")]
        anchor = event or next((loop for loop in reversed(loops)), None)
        if anchor is None:
            raise ctx.error(f"transaction {tx}: no HL loops")
        yield reader.rejection(anchor, service, every)
        return
    if not events:
        raise ctx.error(f"transaction {tx}: no patient event (HL level EV) and no rejection")
    for event in events:
        services = [c for c in event.children if c.level == HL_SERVICE]
        event_errors = event.all("AAA")
        if event_errors:
            every = event_errors + [seg for s in services for seg in s.all("AAA")]
            yield reader.rejection(event, services[0] if services else None, every)
            continue
        event_hcr = next(iter(event.all("HCR")), None)
        if not services:
            if event_hcr is None:
                raise ctx.error(
                    f"transaction {tx}: patient event HL {event.hl_id} has no HCR decision "
                    "and no AAA rejection"
                )
            yield reader.decision(event, None, event_hcr)
            continue
        for service in services:
            service_errors = service.all("AAA")
            if service_errors:
                yield reader.rejection(event, service, service_errors)
                continue
            hcr = next(iter(service.all("HCR")), None) or event_hcr
            if hcr is None:
                raise ctx.error(
                    f"transaction {tx}: service HL {service.hl_id} has no HCR decision and no "
                    "AAA rejection"
                )
            yield reader.decision(event, service, hcr)


@dataclass
class _TransactionReader:
    tx: str
    bht04: date
    subele_term: str
    ctx: _FileContext

    def _keys(self, event: _Loop, service: _Loop | None) -> dict[str, Any]:
        """Matching keys: our trace, the payer's reference, member ID, HCPCS and service dates."""
        request_level = [event, *([service] if service else [])]
        near = [*([service] if service else []), event]
        subscriber = event.ancestor(HL_SUBSCRIBER)
        member = None
        if subscriber is not None:
            nm1 = _first([subscriber], "NM1", lambda s: _v(s, "NM101") == "IL")
            member = _v(nm1, "NM109") if nm1 is not None else None
        payer_reference = (
            _qualified(request_level, "TRN", "1")
            or _qualified(request_level, "REF", "NT")
            or _qualified(request_level, "REF", "BB")
        )
        dates = (_dtp([service], "472", self.tx, self.ctx) if service else None) or _dtp(
            [event], "AAH", self.tx, self.ctx
        )
        dates = dates or _dtp([event], "472", self.tx, self.ctx)
        start, end = dates if dates else (None, None)
        return {
            "case_id": _qualified(request_level, "TRN", "2"),
            "payer_reference": payer_reference,
            "member_id": member,
            "hcpcs": self._hcpcs(service),
            "service_start": start,
            "service_end": end if end is not None else start,
            "reason_text": self._messages(near),
            "_near": near,
        }

    def _hcpcs(self, service: _Loop | None) -> str | None:
        if service is None:
            return None
        for seg_id, ref in (("SV1", "SV101"), ("SV2", "SV202")):
            for seg in service.all(seg_id):
                if _v(seg, f"{ref}-1") == "HC":
                    return _v(seg, f"{ref}-2")
        return None

    def _units(self, near: list[_Loop]) -> int | None:
        """Certified quantity in billing units: SV1/SV2 in units (UN), else HSD units (FL).
        HSD*VS counts visits (infusions), not 500 mg units, so it is never read as units."""
        value, what = None, ""
        service = near[0] if near[0].level == HL_SERVICE else None
        if service is not None:
            sv1 = _first([service], "SV1", lambda s: _v(s, "SV103") == "UN")
            sv2 = _first([service], "SV2", lambda s: _v(s, "SV204") == "UN")
            if sv1 is not None:
                value, what = _v(sv1, "SV104"), "SV104"
            elif sv2 is not None:
                value, what = _v(sv2, "SV205"), "SV205"
        if value is None:
            for qualifier in ("FL",):
                hsd = _first(near, "HSD", lambda s, q=qualifier: _v(s, "HSD01") == q)
                if hsd is not None:
                    value, what = _v(hsd, "HSD02"), "HSD02"
                    break
        if value is None:
            return None
        if not _QUANTITY.match(value):
            raise self.ctx.error(f"transaction {self.tx}: {what} is not a whole number of units")
        return int(value.partition(".")[0])

    def _messages(self, near: list[_Loop]) -> str | None:
        for loop in near:
            texts = [t for seg in loop.all("MSG") if (t := _v(seg, "MSG01"))]
            if texts:
                return " ".join(texts)
        return None

    def decision(self, event: _Loop, service: _Loop | None, hcr: Segment) -> PayerResponse:
        keys = self._keys(event, service)
        near: list[_Loop] = keys.pop("_near")
        code = (_v(hcr, "HCR01") or "").upper()
        if not code:
            raise self.ctx.error(f"transaction {self.tx}: an HCR segment has no HCR01 action code")
        payer_reason = _v(hcr, "HCR03")
        um = _first(near, "UM", lambda s: True)
        on_appeal = um is not None and _v(um, "UM02") in {"1", "2"}  # appeal immediate/standard
        info_requested = code == "A4" and (
            (payer_reason or "").upper() in INFO_REQUEST_REASONS
            or _first(near, "PWK", lambda s: True) is not None
        )
        try:
            status = status_for_decision(code, on_appeal=on_appeal, info_requested=info_requested)
        except IllegalTransition:
            raise self.ctx.error(
                f"transaction {self.tx}: HCR01 {code!r} is not a 278 action code"
            ) from None
        auth_start = auth_end = units = None
        if code in CERTIFYING:
            effective = _dtp(near, "007", self.tx, self.ctx)
            expires = _dtp(near, "036", self.tx, self.ctx)
            if effective or expires:
                auth_start = effective[0] if effective else None
                auth_end = expires[0] if expires else (effective[1] if effective else None)
            else:  # the certified service dates are the authorized period
                auth_start, auth_end = keys["service_start"], keys["service_end"]
            units = self._units(near)
        issued = _dtp(near, "102", self.tx, self.ctx)
        index, dedup_key = self.ctx.next_key()
        return PayerResponse(
            source=self.ctx.name,
            index=index,
            format="x12-278",
            kind="decision",
            action_code=code,
            status=status,
            on_appeal=on_appeal,
            payer_reason_code=payer_reason,
            reason_code=our_reason_code(status, payer_reason, self.ctx.reasons),
            certification_number=_v(hcr, "HCR02"),
            authorized_start=auth_start,
            authorized_end=auth_end,
            authorized_units=units,
            decision_date=issued[0] if issued else self.bht04,
            rejection_errors=(),
            dedup_key=dedup_key,
            **keys,
        )

    def rejection(
        self, anchor: _Loop, service: _Loop | None, errors: list[Segment]
    ) -> PayerResponse:
        keys = self._keys(anchor, service)
        keys.pop("_near")
        index, dedup_key = self.ctx.next_key()
        return PayerResponse(
            source=self.ctx.name,
            index=index,
            format="x12-278",
            kind="rejection",
            action_code=None,
            status=None,
            on_appeal=False,
            payer_reason_code=None,
            reason_code=None,
            certification_number=None,
            authorized_start=None,
            authorized_end=None,
            authorized_units=None,
            decision_date=self.bht04,
            rejection_errors=tuple(_aaa(seg) for seg in errors),
            dedup_key=dedup_key,
            **keys,
        )


# ---- JSON and CSV ----------------------------------------------------------------------------

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


OptText = Annotated[str | None, BeforeValidator(_blank_to_none), Field(max_length=64)]
OptDate = Annotated[date | None, BeforeValidator(_iso_date)]


class RejectionIn(BaseModel):
    model_config = ConfigDict(extra="forbid")

    code: Annotated[str, BeforeValidator(_upper), Field(min_length=1, max_length=8)]
    message: Annotated[str | None, BeforeValidator(_blank_to_none), Field(max_length=500)] = None


class ResponseIn(BaseModel):
    """One response in a JSON or CSV payer file (docs/payer-responses.md)."""

    model_config = ConfigDict(extra="forbid")

    case_id: OptText = None
    payer_reference: OptText = None
    member_id: OptText = None
    hcpcs: Annotated[str | None, BeforeValidator(_upper), Field(pattern=r"^[A-Z0-9]{5}$")] = None
    service_start: OptDate = None
    service_end: OptDate = None
    decision: Annotated[Decision | None, BeforeValidator(_blank_to_none)] = None
    action_code: Annotated[ActionCode | None, BeforeValidator(_upper)] = None
    on_appeal: Annotated[bool, BeforeValidator(lambda v: _blank_to_none(v) or False)] = False
    reason_code: OptText = None
    reason_text: Annotated[str | None, BeforeValidator(_blank_to_none), Field(max_length=2000)] = (
        None
    )
    certification_number: OptText = None
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
        else:
            code, info_requested = str(item.action_code), False
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


def _parse_json(text: str, ctx: _FileContext) -> list[PayerResponse]:
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


def _parse_csv(text: str, ctx: _FileContext) -> list[PayerResponse]:
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
