"""Denial notices: word one message and hand it to one apprise channel, reporting failure honestly.

No database here: the outbox ledger decides what is sent and records the outcome. Messages carry
case ID, payer, decision, reason code and its standard meaning, appeal deadline and portal link;
never patient identifiers, and never the payer's free text (it may quote the patient: it is
shown in the portal only). Errors and labels never carry a channel URL's secrets.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import re
from dataclasses import dataclass
from datetime import date, timedelta
from urllib.parse import unquote

import apprise
from apprise.plugins.email import NotifyEmail

from priorauth.errors import PriorAuthError
from priorauth.statuses import Status

# Statuses that trigger a notice (DOMAIN.md §7), with the words used in the message.
DECISION_WORDS: dict[str, str] = {
    Status.DENIED: "Denied",
    Status.PARTIALLY_APPROVED: "Partially approved",
    Status.APPEAL_DENIED: "Appeal denied",
}

DEDUP_HEADER = "X-Priorauth-Dedup"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
_DEDUP_KEY = re.compile(r"[\x21-\x7e]{1,200}")  # printable ASCII, no spaces: safe in a mail header
_DNS_NAME = re.compile(
    r"(?=.{1,253}$)(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}"
)
_ASSET = {"app_id": "PriorAuth", "app_desc": "Prior-authorization denial notices"}


class NotifyError(PriorAuthError):
    """Raised when a message could not be handed to a channel (or a channel URL is unusable)."""


@dataclass(frozen=True)
class DenialNotice:
    """What a denial notice may say. No field for a patient's name, birth date, member ID or
    diagnosis exists, so none can reach a message; keep it that way (SECURITY.md, PHI rules)."""

    case_id: str
    payer_name: str
    status: str  # "denied" | "partially_approved" | "appeal_denied"
    reason_code: str | None  # our stable code (DOMAIN.md §9)
    reason_meaning: str | None  # its standard meaning (reference/denial_reasons.yaml `meanings`)
    decided_on: date
    appeal_deadline: date
    portal_url: str | None  # the link to this case in the staff portal
    certification_number: str | None = None

    def __post_init__(self) -> None:
        if self.status not in DECISION_WORDS:
            raise ValueError(f"no notice for status {self.status!r}")
        if not self.case_id.strip():
            raise ValueError("a notice needs a case ID")
        if self.appeal_deadline < self.decided_on:
            raise ValueError(f"{self.case_id}: appeal deadline before the decision")


def appeal_deadline(decided_on: date, appeal_days: int) -> date:
    """The last day to appeal: `appeal_days` calendar days after the denial date (DOMAIN.md §8).

    No weekend or holiday shift: the payer's rules are data (reference/payers.yaml plan_types).
    """
    if appeal_days <= 0:
        raise ValueError(f"appeal_days must be positive, got {appeal_days}")
    return decided_on + timedelta(days=appeal_days)


def render_notice(notice: DenialNotice) -> tuple[str, str]:
    """The (title, body) of a notice as plain text; the same words go to every channel."""
    decision = DECISION_WORDS[notice.status]
    deadline = notice.appeal_deadline.isoformat()
    days = (notice.appeal_deadline - notice.decided_on).days
    title = f"Prior auth {decision.lower()}: case {notice.case_id} ({notice.payer_name}), appeal by {deadline}"
    lines = [
        f"Case: {notice.case_id}",
        f"Payer: {notice.payer_name}",
        f"Decision: {decision} on {notice.decided_on.isoformat()}",
    ]
    if notice.certification_number:
        # A partial approval certifies something: the number is an authorization. On a denial
        # it is only the payer's reference for the decision.
        label = (
            "Authorization number"
            if notice.status == Status.PARTIALLY_APPROVED
            else "Payer reference"
        )
        lines.append(f"{label}: {notice.certification_number}")
    lines.append(f"Reason: {_reason(notice.reason_code, notice.reason_meaning)}")
    lines.append(
        f"Appeal deadline: {deadline} ({days} days from the {notice.decided_on.isoformat()} decision)"
    )
    lines.append(f"Portal: {notice.portal_url or '(no portal link configured)'}")
    return title, "\n".join(lines)


def _reason(code: str | None, meaning: str | None) -> str:
    """Our code and its standard meaning; the payer's own words are in the portal only."""
    if not code:
        return "not stated by the payer (the payer's words, if any, are in the portal)"
    if meaning:
        return f"{code} ({' '.join(meaning.split())}); the payer's words are in the portal"
    return f"{code}; the payer's words are in the portal"


ATTENTION_TITLES = {
    "pending_response": "Prior auth: payer response waiting",
    "rejection": "Prior auth: payer rejected the request (not a denial)",
}


def render_attention(
    kind: str, case_id: str | None, facts: list[tuple[str, str]], portal_url: str | None
) -> tuple[str, str]:
    """(title, body) of a notice that needs a coordinator: a payer response that cannot be
    applied yet, or a transaction rejection. `facts` are (label, value) lines built from codes
    and case IDs only; the caller never passes patient data or payer free text."""
    title = ATTENTION_TITLES[kind] + (f": case {case_id}" if case_id else "")
    lines = [f"Case: {case_id or '(no matching case yet)'}"]
    lines += [f"{label}: {' '.join(str(value).split())}" for label, value in facts]
    lines.append(f"Portal: {portal_url or '(no portal link configured)'}")
    return title, "\n".join(lines)


def channels(urls_setting: str) -> list[str]:
    """The apprise URLs in PRIORAUTH_NOTIFY_URLS, each checked; duplicates collapse to one.

    Entries are split on commas, so a comma inside a URL must be written `%2C`. A bad entry
    raises NotifyError naming its position and scheme only: URLs hold passwords and tokens.
    """
    found: list[str] = []
    for number, entry in enumerate(urls_setting.split(","), start=1):
        url = entry.strip()
        if not url:
            continue
        scheme = _scheme(url)
        if scheme is None:
            raise NotifyError(f"PRIORAUTH_NOTIFY_URLS entry {number} is not a URL (scheme://...)")
        if _instantiate(url) is None:
            raise NotifyError(
                f"PRIORAUTH_NOTIFY_URLS entry {number}: apprise cannot use this {scheme}:// URL "
                "(unknown scheme or missing parts)"
            )
        if url not in found:
            found.append(url)
    return found


def channel_label(url: str) -> str:
    """A secret-free label for logs and the ledger: scheme + server, e.g. `mailto://127.0.0.1`.

    The server part is kept only when it is a real host name or IP address; in URLs such as
    `slack://TokenA/TokenB/TokenC` the "host" is a token and is left out (`slack://`).
    """
    scheme, netloc, _ = _parts(url)
    hostport = netloc.rpartition("@")[2]
    host, port = hostport, ""
    if not hostport.startswith("["):
        host, _, port = hostport.partition(":")
    elif "]:" in hostport:
        host, _, port = hostport.rpartition(":")
    if not _is_server(host.strip("[]")):
        return f"{scheme or 'unknown'}://"
    return f"{scheme}://{host}:{port}" if port.isdigit() else f"{scheme}://{host}"


def channel_key(url: str) -> str:
    """A stable, secret-free identity of one configured channel, for the ledger's dedup key.

    `channel_label` alone can collide (two mailto:// URLs for different recipients on one server),
    so a short hash of the URL without its password is added; changing only the password keeps it.
    """
    scheme, netloc, tail = _parts(url)
    userinfo, at, hostport = netloc.rpartition("@")
    if at:
        netloc = userinfo.partition(":")[0] + "@" + hostport
    without_password = re.sub(
        r"([?&](?:pass|password)=)[^&#]*", r"\1", f"{scheme}://{netloc}{tail}"
    )
    digest = hashlib.sha256(without_password.encode("utf-8")).hexdigest()[:10]
    return f"{channel_label(url)}#{digest}"


def message_id(dedup_key: str, domain: str = "priorauth.local") -> str:
    """A deterministic RFC 5322 msg-id for a dedup key: a resend after a crash carries the same one."""
    _check_dedup_key(dedup_key)
    return f"<{_ref(dedup_key)}@{domain}>"


def send(url: str, title: str, body: str, *, dedup_key: str, timeout_s: float = 10) -> None:
    """Hand one message to one apprise URL, once, within about `timeout_s` seconds.

    Returns when the channel accepted it; raises NotifyError with a secret-free reason otherwise.
    Every copy ends with a `Reference:` line derived from the dedup key; email also carries the
    key in `X-Priorauth-Dedup` and the deterministic `message_id(dedup_key)` in `References`
    (apprise sets its own Message-ID; see docs/notifications.md), JSON/form/XML webhooks carry the
    `X-Priorauth-Dedup` header. A URL's own `retry=` and `optional=` are overridden: one attempt,
    failures reported (the ledger retries on the next run).
    """
    _check_dedup_key(dedup_key)
    if not (math.isfinite(timeout_s) and timeout_s > 0):
        raise ValueError(f"timeout_s must be a positive number, got {timeout_s}")
    label = channel_label(url)
    scheme = _scheme(url)
    if scheme is None:
        raise NotifyError("the channel is not a URL (scheme://...)")
    asset = apprise.AppriseAsset(**_ASSET)
    plugin = _instantiate(url, asset)
    if plugin is None:
        raise NotifyError(f"{label}: apprise cannot use this {scheme}:// URL")

    plugin.retry = 0  # apprise's own retry could deliver twice within one run
    plugin.optional = False  # `optional=yes` would report a failure as success
    plugin.socket_connect_timeout = min(plugin.socket_connect_timeout or timeout_s, timeout_s)
    plugin.socket_read_timeout = min(plugin.socket_read_timeout or timeout_s, timeout_s)
    headers = getattr(plugin, "headers", None)  # where apprise keeps `+Header=value` URL args
    if isinstance(headers, dict):
        headers[DEDUP_HEADER] = dedup_key
        if isinstance(plugin, NotifyEmail):
            headers["References"] = message_id(dedup_key)

    notifier = apprise.Apprise(asset=asset)
    notifier.add(plugin)
    text = f"{body}\n\nReference: {_ref(dedup_key)}"
    try:
        result = notifier.notify(
            body=text, title=title, body_format=apprise.NotifyFormat.TEXT, timeout=timeout_s
        )
    except Exception as exc:  # apprise raises for arguments it cannot use; never let it escape raw
        raise NotifyError(f"{label}: apprise refused the message ({type(exc).__name__})") from None
    if result:
        return
    if result.status == apprise.AppriseResultStatus.TIMEOUT:
        reason = f"no answer within {timeout_s:g} s (delivery unknown)"
    else:
        reason = _failure_reason(result, _secrets(url)) or "the channel did not accept the message"
    raise NotifyError(f"{label}: {reason}")


def _ref(dedup_key: str) -> str:
    return hashlib.sha256(dedup_key.encode("utf-8")).hexdigest()[:32]


def _check_dedup_key(dedup_key: str) -> None:
    if not _DEDUP_KEY.fullmatch(dedup_key):
        raise ValueError("dedup_key must be 1-200 printable ASCII characters without spaces")


def _scheme(url: str) -> str | None:
    match = _SCHEME.match(url)
    return match.group(1).lower() if match else None


def _parts(url: str) -> tuple[str | None, str, str]:
    """(scheme, netloc with any user:password, the rest from the first / ? or #)."""
    scheme = _scheme(url)
    rest = url[len(scheme) + 3 :] if scheme else url
    netloc, tail = re.match(r"([^/?#]*)(.*)", rest, re.DOTALL).groups()  # type: ignore[union-attr]
    return scheme, netloc, tail


def _instantiate(url: str, asset: apprise.AppriseAsset | None = None) -> apprise.NotifyBase | None:
    try:
        return apprise.Apprise.instantiate(url, asset=asset or apprise.AppriseAsset(**_ASSET))
    except Exception:  # apprise's parser may raise on odd input; treat as unusable
        return None


def _is_server(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return bool(_DNS_NAME.fullmatch(host))
    return True


def _secrets(url: str) -> list[str]:
    """Parts of a URL that may be secret: the password, and any long token-like piece."""
    _, netloc, tail = _parts(url)
    password = netloc.rpartition("@")[0].partition(":")[2]
    found = {password} if len(password) >= 3 else set()
    for piece in re.split(r"[/?#&=:@,]", netloc + tail):
        token_like = len(piece) >= 16 or (len(piece) >= 8 and any(c.isdigit() for c in piece))
        if token_like and not _is_server(piece):
            found.add(piece)
    found |= {unquote(p) for p in found}
    return sorted(found, key=len, reverse=True)


def _failure_reason(result: apprise.AppriseResult, secrets: list[str]) -> str:
    """Apprise's warnings for this call (captured per call, thread-safe), secrets masked."""
    lines: list[str] = []
    for service in result:
        for entry in service.logs():
            if entry.level in {"WARNING", "ERROR", "CRITICAL"} and entry.message not in lines:
                lines.append(entry.message)
    text = " ".join(" ".join(lines).split())
    for secret in secrets:
        text = text.replace(secret, "***")
    return text[:300]
