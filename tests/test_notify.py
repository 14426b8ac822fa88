"""Denial notices (DOMAIN.md §8, SECURITY.md notifications): wording, deadlines, channel parsing,
and delivery to real SMTP and HTTP receivers on loopback (tests/sinks.py), including failures."""

from __future__ import annotations

import re
import time
from datetime import date

import pytest

from conftest import base_case_data
from priorauth.catalog import Catalog
from priorauth.notify import (
    DEDUP_HEADER,
    DenialNotice,
    NotifyError,
    appeal_deadline,
    channel_key,
    channel_label,
    channels,
    message_id,
    render_notice,
    send,
)
from sinks import http_sink, refusing_port, silent_port, smtp_sink

DECIDED = date(2026, 11, 21)
KEY = "denial:MS-1001:41:mailto://127.0.0.1"
PASSWORD = "Pw-S3cret-9931"


def _notice(**overrides: object) -> DenialNotice:
    fields: dict[str, object] = {
        "case_id": "MS-1001",
        "payer_name": "Summit Health Plan",
        "status": "denied",
        "reason_code": "EXPERIMENTAL_INVESTIGATIONAL",
        "reason_meaning": "investigational for this diagnosis",
        "decided_on": DECIDED,
        "appeal_deadline": appeal_deadline(DECIDED, 180),
        "portal_url": "http://127.0.0.1:8000/cases/MS-1001",
    }
    fields.update(overrides)
    return DenialNotice(**fields)  # type: ignore[arg-type]


def _phi() -> list[str]:
    """The base fixture patient's identifiers: none may appear in anything a channel receives."""
    case = base_case_data()
    patient, coverage = case["patient"], case["coverage"]
    dob = patient["date_of_birth"]
    return [
        patient["first_name"],
        patient["last_name"],
        str(dob),
        dob.strftime("%m/%d/%Y"),
        coverage["member_id"],
        coverage["group_number"],
    ]


# --- the appeal deadline (DOMAIN.md §8: calendar days from the denial date) -------------------


@pytest.mark.parametrize(
    ("plan_type", "days", "deadline"),
    [
        ("commercial", 180, date(2027, 5, 20)),
        ("medicare_advantage", 65, date(2027, 1, 25)),
        ("part_d", 65, date(2027, 1, 25)),
        ("medicaid", 60, date(2027, 1, 20)),
    ],
)
def test_appeal_deadline_per_plan_type(
    catalog: Catalog, plan_type: str, days: int, deadline: date
) -> None:
    # conftest's `catalog` is load_catalog(reference/): the windows are data, never code.
    rules = catalog.plan_types[plan_type]
    assert rules.appeal_days == days
    assert appeal_deadline(DECIDED, rules.appeal_days) == deadline


def test_appeal_deadline_counts_calendar_days_across_a_leap_day() -> None:
    assert appeal_deadline(date(2027, 12, 31), 60) == date(2028, 2, 29)


@pytest.mark.parametrize("days", [0, -5])
def test_appeal_deadline_needs_a_positive_window(days: int) -> None:
    with pytest.raises(ValueError, match="appeal_days"):
        appeal_deadline(DECIDED, days)


# --- wording -----------------------------------------------------------------------------------


def test_render_notice_lists_every_fact_staff_need() -> None:
    title, body = render_notice(_notice())
    assert title == ("Prior auth denied: case MS-1001 (Summit Health Plan), appeal by 2027-05-20")
    assert body.splitlines() == [
        "Case: MS-1001",
        "Payer: Summit Health Plan",
        "Decision: Denied on 2026-11-21",
        "Reason: EXPERIMENTAL_INVESTIGATIONAL (investigational for this diagnosis); "
        "the payer's words are in the portal",
        "Appeal deadline: 2027-05-20 (180 days from the 2026-11-21 decision)",
        "Portal: http://127.0.0.1:8000/cases/MS-1001",
    ]


def test_render_partial_approval_shows_the_authorization_number() -> None:
    notice = _notice(
        status="partially_approved",
        reason_code="DOSE_EXCEEDS_POLICY",
        reason_meaning=None,
        certification_number="AUTH-77812",
        appeal_deadline=appeal_deadline(DECIDED, 65),
    )
    title, body = render_notice(notice)
    assert title.startswith("Prior auth partially approved: case MS-1001")
    assert "Decision: Partially approved on 2026-11-21" in body
    assert "Authorization number: AUTH-77812" in body
    assert "Reason: DOSE_EXCEEDS_POLICY; the payer's words are in the portal\n" in body
    assert "Appeal deadline: 2027-01-25 (65 days from the 2026-11-21 decision)" in body


def test_a_full_denial_does_not_call_the_payers_number_an_authorization() -> None:
    _, body = render_notice(_notice(certification_number="SHP-DEN-4410"))
    assert "Payer reference: SHP-DEN-4410" in body
    assert "Authorization number" not in body


def test_a_notice_has_no_field_for_the_payers_free_text() -> None:
    # The payer's words may quote the patient: they are shown in the portal only.
    with pytest.raises(TypeError):
        _notice(reason_text="Patient Jane Doe, DOB 01/02/1980, member SHP1234")


def test_render_without_reason_or_portal_says_so() -> None:
    _, body = render_notice(_notice(reason_code=None, reason_meaning=None, portal_url=None))
    assert "Reason: not stated by the payer" in body
    assert "Portal: (no portal link configured)" in body


@pytest.mark.parametrize(
    "overrides",
    [
        {"status": "approved"},
        {"case_id": " "},
        {"appeal_deadline": date(2026, 11, 20)},
    ],
)
def test_a_notice_refuses_what_it_cannot_say(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        _notice(**overrides)


# --- message IDs, channel parsing and labels --------------------------------------------------


def test_message_id_is_deterministic_and_rfc5322_shaped() -> None:
    first = message_id(KEY)
    assert first == message_id(KEY)
    assert re.fullmatch(r"<[0-9a-f]{32}@priorauth\.local>", first)
    assert message_id(KEY.replace("41", "42")) != first
    assert message_id(KEY, domain="pa.example.org").endswith("@pa.example.org>")


@pytest.mark.parametrize("key", ["", "denial:MS-1001\r\nBcc: x@example.org", "has space"])
def test_dedup_keys_that_could_break_a_header_are_refused(key: str) -> None:
    with pytest.raises(ValueError, match="dedup_key"):
        message_id(key)


def test_channels_split_on_commas_drop_blanks_and_duplicates() -> None:
    setting = (
        " mailto://127.0.0.1:2525?from=pa@example.org&to=a@example.org ,,"
        "  , json://127.0.0.1:8123/hook,"
        "mailto://127.0.0.1:2525?from=pa@example.org&to=a@example.org"
    )
    assert channels(setting) == [
        "mailto://127.0.0.1:2525?from=pa@example.org&to=a@example.org",
        "json://127.0.0.1:8123/hook",
    ]
    assert channels("") == []
    assert channels(" , ") == []


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        (
            f"nosuch://admin:{PASSWORD}@relay.example.org",
            "entry 2: apprise cannot use this nosuch://",
        ),
        (f"admin:{PASSWORD}@relay.example.org", "entry 2 is not a URL"),
        ("json://", "entry 2: apprise cannot use this json://"),
        ("msteams://a/b/c", "msteams://"),  # retired in apprise 2: Teams goes via workflows://
    ],
)
def test_channels_name_a_bad_entry_by_position_and_scheme_only(entry: str, expected: str) -> None:
    with pytest.raises(NotifyError, match=re.escape(expected)) as caught:
        channels(f"json://127.0.0.1:8123/hook, {entry}")
    assert PASSWORD not in str(caught.value)
    assert "relay.example.org" not in str(caught.value)


@pytest.mark.parametrize(
    ("url", "label"),
    [
        (f"mailto://bob:{PASSWORD}@127.0.0.1:2525?from=a@example.org", "mailto://127.0.0.1:2525"),
        ("mailtos://smtp.example.org?to=a@example.org", "mailtos://smtp.example.org"),
        ("json://127.0.0.1:8123/hook", "json://127.0.0.1:8123"),
        ("jsons://[::1]:8443/hook", "jsons://[::1]:8443"),
        ("slack://T1JJ3T3L2/A1BRTD4JD/TIiajkdnlazkcOXrIdevi7FQ/#pa-team", "slack://"),
        (
            "workflows://prod-00.westus.logic.azure.com:443/wf1/sig2",
            "workflows://prod-00.westus.logic.azure.com:443",
        ),
    ],
)
def test_channel_label_is_scheme_and_server_without_secrets(url: str, label: str) -> None:
    assert channel_label(url) == label
    assert channel_key(url).startswith(label + "#")


def test_channel_key_tells_channels_apart_but_survives_a_password_change() -> None:
    base = "mailto://bob:{pw}@smtp.example.org?to={to}"
    one = channel_key(base.format(pw="old-pass-1", to="a@example.org"))
    assert one == channel_key(base.format(pw="new-pass-2", to="a@example.org"))
    assert one != channel_key(base.format(pw="old-pass-1", to="b@example.org"))
    assert "old-pass-1" not in one


# --- delivery to real receivers ---------------------------------------------------------------


def test_email_arrives_whole_recognisable_and_without_phi() -> None:
    title, body = render_notice(_notice())
    with smtp_sink() as sink:
        send(sink.apprise_url(), title, body, dedup_key=KEY, timeout_s=5)
    assert len(sink.messages) == 1
    mail = sink.messages[0]
    assert mail.rcpt_tos == ["staff@example.org"]
    assert mail.message["Subject"] == title
    text = mail.text
    for fact in [
        "Case: MS-1001",
        "Payer: Summit Health Plan",
        "EXPERIMENTAL_INVESTIGATIONAL",
        "investigational for this diagnosis",
        "Appeal deadline: 2027-05-20 (180 days from the 2026-11-21 decision)",
        "Portal: http://127.0.0.1:8000/cases/MS-1001",
    ]:
        assert fact in text
    # apprise writes its own random Message-ID (one, not two); our deterministic ID travels in
    # References and the dedup key in X-Priorauth-Dedup, so a resend is recognisable.
    assert len(mail.message.get_all("Message-ID")) == 1
    assert mail.message["References"] == message_id(KEY)
    assert mail.message[DEDUP_HEADER] == KEY
    assert text.rstrip().endswith("Reference: " + message_id(KEY)[1:33])
    raw = mail.raw.decode("utf-8", errors="replace")
    assert [s for s in _phi() if s in raw] == []


def test_a_resend_after_a_crash_carries_the_same_identity() -> None:
    title, body = render_notice(_notice())
    with smtp_sink() as sink:
        send(sink.apprise_url(), title, body, dedup_key=KEY, timeout_s=5)
        send(sink.apprise_url(), title, body, dedup_key=KEY, timeout_s=5)
    first, second = sink.messages
    assert first.message["Message-ID"] != second.message["Message-ID"]  # apprise's own
    for header in ["References", DEDUP_HEADER]:
        assert first.message[header] == second.message[header]
    assert first.text == second.text


def test_json_webhook_receives_the_same_words_and_the_dedup_key() -> None:
    title, body = render_notice(_notice())
    with http_sink() as sink:
        send(sink.apprise_url("/priorauth/notices"), title, body, dedup_key=KEY, timeout_s=5)
    (request,) = sink.requests
    assert (request.method, request.path) == ("POST", "/priorauth/notices")
    assert request.headers[DEDUP_HEADER] == KEY
    payload = request.json()
    assert payload["title"] == title
    assert payload["message"] == f"{body}\n\nReference: {message_id(KEY)[1:33]}"
    assert [s for s in _phi() if s in request.body.decode()] == []


def test_a_failing_webhook_raises_once_quickly_and_secret_free() -> None:
    # retry= and optional= in the URL must not change the outcome: one attempt, failure reported.
    with http_sink(status=500) as sink:
        url = sink.apprise_url("/hook", userinfo=f"svc:{PASSWORD}") + "?retry=3&optional=yes"
        started = time.monotonic()
        with pytest.raises(NotifyError) as caught:
            send(url, "t", "b", dedup_key=KEY, timeout_s=5)
        elapsed = time.monotonic() - started
    assert elapsed < 2
    assert len(sink.requests) == 1
    message = str(caught.value)
    assert message.startswith(f"json://127.0.0.1:{sink.port}: ")
    assert "500" in message
    assert PASSWORD not in message


def test_a_closed_smtp_port_raises_quickly_and_secret_free() -> None:
    with refusing_port() as port:
        url = f"mailto://bob:{PASSWORD}@127.0.0.1:{port}?from=pa@example.org&to=a@example.org&mode=insecure"
        started = time.monotonic()
        with pytest.raises(NotifyError) as caught:
            send(url, "t", "b", dedup_key=KEY, timeout_s=5)
    assert time.monotonic() - started < 2
    assert str(caught.value).startswith(f"mailto://127.0.0.1:{port}: ")
    assert PASSWORD not in str(caught.value)


@pytest.mark.parametrize("scheme", ["mailto", "json"])
def test_a_server_that_never_answers_is_given_up_on_in_time(scheme: str) -> None:
    with silent_port() as port:
        url = f"{scheme}://127.0.0.1:{port}/?from=pa@example.org&to=a@example.org"
        started = time.monotonic()
        with pytest.raises(NotifyError):
            send(url, "t", "b", dedup_key=KEY, timeout_s=0.3)
    assert time.monotonic() - started < 1.0


def test_a_server_that_answers_too_slowly_is_abandoned_and_reported_as_unknown() -> None:
    # Each header arrives within the socket timeout, so only send()'s overall limit stops it.
    with http_sink(drip_s=2) as sink:
        started = time.monotonic()
        with pytest.raises(NotifyError, match=r"no answer within 0\.3 s \(delivery unknown\)"):
            send(sink.apprise_url(), "t", "b", dedup_key=KEY, timeout_s=0.3)
        assert time.monotonic() - started < 1.0


def test_send_refuses_an_unusable_url_without_echoing_it() -> None:
    with pytest.raises(NotifyError) as caught:
        send(f"nosuch://admin:{PASSWORD}@relay.example.org", "t", "b", dedup_key=KEY)
    assert str(caught.value) == "nosuch://relay.example.org: apprise cannot use this nosuch:// URL"
    assert PASSWORD not in str(caught.value)


def test_apprise_still_cannot_set_the_message_id() -> None:
    """Why send() uses References + X-Priorauth-Dedup: a `+Message-ID=` header is added *beside*
    apprise's own, giving two Message-ID headers (RFC 5322 allows one; Gmail rejects such mail).
    If this fails, apprise now honours a custom Message-ID: set message_id() directly instead."""
    with smtp_sink() as sink:
        url = sink.apprise_url() + "&+Message-ID=" + message_id(KEY).replace("@", "%40")
        send(url, "t", "b", dedup_key=KEY, timeout_s=5)
    ids = sink.messages[0].message.get_all("Message-ID")
    assert len(ids) == 2 and message_id(KEY) in ids
