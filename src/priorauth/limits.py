"""Field lengths, in one place: the case model, the payer-response parsers, the coordinator's
inputs and the store's columns all read them here, so an over-long value is a validation error
for its own case or file, never a database error that stops a night.

Where a standard sets the length we follow it: X12 REF02, HCR02 and TRN02 are at most 50
characters (005010X217); member IDs run up to 80 in practice (payers' own formats).
"""

from __future__ import annotations

CASE_ID = 64  # domain.CASE_ID_PATTERN: 1 + 63
MEMBER_ID = 80
REFERENCE = 50  # payer reference, authorization/certification number, fax confirmation
PERSON_NAME = 99  # first and last name each: "first last" fits the 200-character column
PATIENT_NAME = 2 * PERSON_NAME + 2
CATALOG_ID = 64  # payer, product and indication IDs (each must exist in reference/ too)
PAYER_CODE = 16  # HCR01 action code as sent
REASON_CODE = 64  # our stable reason code, or the payer's when it has no mapping
REASON_TEXT = 2000  # the payer's own words (portal only)


def too_long(value: str | None, limit: int) -> bool:
    return value is not None and len(value) > limit
