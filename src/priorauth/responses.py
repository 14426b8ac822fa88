"""Payer response files (X12 278, JSON, CSV) read into plain `PayerResponse` records.

One record per decision or transaction rejection, carrying every key a case can be matched by.
It matches nothing, moves no file and changes no status: the tracking store does that. This
module holds the record, the reason and reject code lists, the field limits and the entry point;
the formats are read in `responses_x12` and `responses_tabular`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from functools import lru_cache
from pathlib import Path
from typing import Literal

import yaml

from priorauth import limits
from priorauth.errors import PriorAuthError, ReferenceDataError
from priorauth.files import sha256_bytes
from priorauth.settings import REPO_ROOT
from priorauth.statuses import ADVERSE, Status

MAX_RESPONSE_FILE_BYTES = 5_000_000
X12_SUFFIXES = (".x12", ".278", ".edi", ".txt")
RESPONSE_SUFFIXES = (*X12_SUFFIXES, ".json", ".csv")
DENIAL_REASONS_FILE = "denial_reasons.yaml"
UNSPECIFIED = "UNSPECIFIED"  # an adverse decision whose payer reason we cannot map

# What each key of a response may hold: the store's lengths (priorauth.limits).
FIELD_LIMITS: dict[str, int] = {
    "case_id": limits.CASE_ID,
    "payer_reference": limits.REFERENCE,
    "certification_number": limits.REFERENCE,
    "member_id": limits.MEMBER_ID,
    "reason_code": limits.REASON_CODE,
    "reason_text": limits.REASON_TEXT,
}
FIELD_STANDARDS = {
    "payer_reference": "X12 TRN02/REF02 allow 50",
    "certification_number": "X12 HCR02 allows 50",
    "member_id": "member IDs are at most 80 characters",
    "case_id": "our case IDs are at most 64 characters",
}

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

    def __init__(
        self, mapping: Mapping[str, str], default: str, meanings: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(mapping)
        self.default = default
        self.meanings = dict(meanings or {})  # our code → its standard meaning (for notices)


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
    meanings = data.get("meanings") or {}
    if not isinstance(meanings, dict) or not all(
        isinstance(v, str) and k in ours for k, v in meanings.items()
    ):
        raise ReferenceDataError(f"{path.name}: `meanings` must map our `codes` to plain text")
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
    return DenialReasons(mapping, default, meanings)


@lru_cache(maxsize=1)
def _default_reasons() -> DenialReasons:
    return load_denial_reasons(REPO_ROOT / "reference")


@lru_cache(maxsize=8)
def _reasons_in(reference_dir: Path) -> DenialReasons:
    return load_denial_reasons(reference_dir)


def reason_meaning(code: str | None, reference_dir: Path | None = None) -> str | None:
    """The standard meaning of one of our reason codes (None for codes without one)."""
    if not code:
        return None
    reasons = _reasons_in(Path(reference_dir)) if reference_dir else _default_reasons()
    return reasons.meanings.get(code)


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
        from priorauth.responses_x12 import parse_x12

        return parse_x12(data, context)
    from priorauth.responses_tabular import parse_csv, parse_json

    text = _decode_text(data, context.name)
    if suffix == ".json":
        return parse_json(text, context)
    return parse_csv(text, context)


@dataclass
class _FileContext:
    name: str
    digest: str
    reasons: Mapping[str, str]
    count: int = field(default=0)

    def error(self, reason: str) -> ResponseFileError:
        return ResponseFileError(f"{self.name}: {reason}")

    def check_lengths(self, where: str, **values: str | None) -> None:
        """An over-long key fails this file (quarantined with the reason), never the night:
        the same lengths as the store's columns (priorauth.limits)."""
        for name, value in values.items():
            limit = FIELD_LIMITS[name]
            if limits.too_long(value, limit):
                raise self.error(
                    f"{where}{name} is {len(value or '')} characters; at most {limit} "
                    f"({FIELD_STANDARDS.get(name, 'the tracking store keeps no more')})"
                )

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
