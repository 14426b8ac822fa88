"""X12 278 responses (005010X217) read into `PayerResponse` records: the envelope checked, the
HL loops walked by level code, one record per service decision or rejection. Reads only.
"""

from __future__ import annotations

import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date
from typing import Any

from pyx12.errors import EngineError, X12Error
from pyx12.rawx12file import RawX12File
from pyx12.segment import Segment

from priorauth.responses import (
    CERTIFYING,
    INFO_REQUEST_REASONS,
    PayerResponse,
    _FileContext,
    our_reason_code,
    reject_reason_text,
)
from priorauth.statuses import IllegalTransition, status_for_decision

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


def parse_x12(data: bytes, ctx: _FileContext) -> list[PayerResponse]:
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
        case_id = _qualified(request_level, "TRN", "2")
        self.ctx.check_lengths(
            f"transaction {self.tx}: ",
            case_id=case_id,
            payer_reference=payer_reference,
            member_id=member,
        )
        return {
            "case_id": case_id,
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
        self.ctx.check_lengths(
            f"transaction {self.tx}: ",
            certification_number=_v(hcr, "HCR02"),
            reason_text=keys["reason_text"],
        )
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
