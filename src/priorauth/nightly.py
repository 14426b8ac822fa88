"""The nightly run's steps in order, with no framework: intake and letters → payer responses →
denial notifications → overdue and expiring authorizations (renewal letters).

Every step is idempotent and crash-safe: our database is the ledger (case file hashes, document
hashes, a payer-response ledger, a notification outbox), files are written whole or not at all,
and nothing is deleted (set-aside files move to quarantine/ with a reason file).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import SQLAlchemyError

from priorauth.errors import CaseFileError, PriorAuthError
from priorauth.files import crashpoint, write_atomic
from priorauth.intake import CASE_SUFFIXES, declared_case_id, parse_case_file
from priorauth.notify import NotifyError, channel_key, channels, send
from priorauth.pipeline import (
    BatchRunner,
    CaseResult,
    Workbench,
    chunked,
    document_records,
    generate_case,
)
from priorauth.responses import ResponseFileError, parse_response_file
from priorauth.runguard import night_lock, remove_stale_scratch, scratch
from priorauth.statuses import Status
from priorauth.store import CaseRow, DocumentRow, NotificationRow, PayerResponseRow, Store
from priorauth.tracking import (
    EVENT_CHANNEL,
    NIGHTLY,
    Actor,
    CaseFileChanged,
    audit,
    expire_ended,
    expiring,
    flag_overdue,
    follow_ups_due,
    get_case,
    ingest_response,
    insufficient_criteria,
    mark_needs_info,
    open_rejections,
    open_responses,
    override_in_force,
    override_to_ready,
    pending_view,
    receive_response,
    record_documents,
    register_case,
    units_running_out,
)

FOLDERS = ("intake", "responses", "quarantine", "letters")
RESPONSE_SUFFIXES = (".x12", ".278", ".edi", ".txt", ".json", ".csv")
MAX_SEND_ATTEMPTS = 10
SEND_LEASE = timedelta(minutes=10)


class NightFailed(PriorAuthError):
    """Raised (after the night's work is done and recorded) when something needs a person:
    notices that failed to send, or payer responses pending beyond the allowed age. The
    message carries counts and case IDs only."""


@dataclass
class NightReport:
    """What the night did, by case ID and count only (safe for Prefect artifacts and logs)."""

    accepted: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)  # file names
    letters: list[str] = field(default_factory=list)
    # Letters written as DRAFTs: valid cases whose payer criteria are insufficient (a document
    # or fact is missing); a coordinator adds it or overrides. Not the invalid files set aside.
    needs_info: list[str] = field(default_factory=list)
    invalid: list[str] = field(default_factory=list)  # case IDs of the files set aside
    renewals_needs_info: list[str] = field(default_factory=list)  # renewal letters as DRAFTs
    responses: Counter = field(default_factory=Counter)
    denials: list[dict[str, str]] = field(default_factory=list)
    notices_sent: int = 0
    notices_failed: int = 0
    events_emitted: int = 0  # Prefect events for denials (the nightly flow)
    overdue: list[str] = field(default_factory=list)
    follow_ups: list[str] = field(default_factory=list)
    renewals: list[str] = field(default_factory=list)
    units_running_out: list[str] = field(default_factory=list)  # authorized units end early
    expired: list[str] = field(default_factory=list)
    by_status: dict[str, int] = field(default_factory=dict)
    # Every kind of set-aside file (intake and payer files), counted by kind.
    set_aside: Counter = field(default_factory=Counter)
    rejections: list[str] = field(default_factory=list)  # case IDs with an open rejection
    pending: list[str] = field(default_factory=list)  # "#<ledger id> <case ID or ?>: why"
    pending_too_old: list[str] = field(default_factory=list)  # beyond the allowed age
    stale_scratch_removed: list[str] = field(default_factory=list)

    def failures(self) -> list[str]:
        """What makes the night fail loudly (non-zero exit, failed Prefect run): counts and
        IDs only."""
        problems = []
        if self.notices_failed:
            problems.append(
                f"{self.notices_failed} notice(s) failed to send (retried next run; "
                "`priorauth status CASE_ID` shows the error)"
            )
        if self.pending_too_old:
            problems.append(
                f"{len(self.pending_too_old)} payer response(s) pending too long: "
                + "; ".join(self.pending_too_old[:10])
                + " (`priorauth cases` lists them)"
            )
        return problems

    def summary(self) -> dict[str, Any]:
        """Counts and case IDs for logs, the flow's return value and `priorauth nightly`."""
        return {
            "by_status": self.by_status,
            "new_cases": len(self.accepted),
            "quarantined": len(self.quarantined),
            "letters": len(self.letters),
            "needs_info": self.needs_info,
            "invalid": self.invalid,
            "denials": [d["case_id"] for d in self.denials],
            "notices_sent": self.notices_sent,
            "notices_failed": self.notices_failed,
            "events_emitted": self.events_emitted,
            "overdue": self.overdue,
            "follow_ups": self.follow_ups,
            "renewals": self.renewals,
            "units_running_out": self.units_running_out,
            "expired": self.expired,
            "responses": dict(self.responses),
            "set_aside": dict(self.set_aside),
            "rejections": self.rejections,
            "pending_responses": self.pending,
            "pending_too_old": self.pending_too_old,
            "failures": self.failures(),
        }

    def table(self) -> list[dict[str, Any]]:
        rows = [
            {"what": f"status: {k}", "count": v, "cases": ""}
            for k, v in sorted(self.by_status.items())
        ]
        rows += [
            {"what": "new cases", "count": len(self.accepted), "cases": " ".join(self.accepted)},
            {"what": "set aside (quarantine)", "count": len(self.quarantined), "cases": ""},
            {
                "what": "letters generated",
                "count": len(self.letters),
                "cases": " ".join(self.letters),
            },
            {
                "what": "needs info (payer criteria insufficient, draft letter)",
                "count": len(self.needs_info),
                "cases": " ".join(self.needs_info),
            },
            {
                "what": "invalid (case file set aside)",
                "count": len(self.invalid),
                "cases": " ".join(self.invalid),
            },
            {
                "what": "denials",
                "count": len(self.denials),
                "cases": " ".join(d["case_id"] for d in self.denials),
            },
            {"what": "notifications sent", "count": self.notices_sent, "cases": ""},
            {"what": "notifications failed", "count": self.notices_failed, "cases": ""},
            {"what": "overdue", "count": len(self.overdue), "cases": " ".join(self.overdue)},
            {
                "what": "follow up with payer",
                "count": len(self.follow_ups),
                "cases": " ".join(self.follow_ups),
            },
            {"what": "renewals", "count": len(self.renewals), "cases": " ".join(self.renewals)},
            {
                "what": "renewals needing info (draft letter)",
                "count": len(self.renewals_needs_info),
                "cases": " ".join(self.renewals_needs_info),
            },
            {
                "what": "authorized units run out",
                "count": len(self.units_running_out),
                "cases": " ".join(self.units_running_out),
            },
            {"what": "expired", "count": len(self.expired), "cases": " ".join(self.expired)},
        ]
        rows += [
            {"what": f"responses: {k}", "count": v, "cases": ""}
            for k, v in sorted(self.responses.items())
        ]
        rows += [
            {"what": f"set aside: {k}", "count": v, "cases": ""}
            for k, v in sorted(self.set_aside.items())
        ]
        rows += [
            {
                "what": "payer rejections to correct and resend (not denials)",
                "count": len(self.rejections),
                "cases": " ".join(self.rejections),
            },
            {
                "what": "payer responses pending (kept, retried)",
                "count": len(self.pending),
                "cases": " ".join(p.split(":")[0] for p in self.pending),
            },
            {
                "what": "payer responses pending too long",
                "count": len(self.pending_too_old),
                "cases": " ".join(p.split(":")[0] for p in self.pending_too_old),
            },
        ]
        return rows


def ensure_folders(home: Path) -> None:
    for name in (*FOLDERS, "responses/processed"):
        (home / name).mkdir(parents=True, exist_ok=True)


def quarantine(path: Path, reason: str, home: Path) -> Path:
    """Move a file into quarantine/ beside a `<name>.reason.txt`; nothing is deleted or
    overwritten (a name already there gets the file's content hash, then a number).

    The reason is written first, so a crash leaves the file where it was and the next run
    quarantines it again with the same reason."""
    folder = home / "quarantine"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / path.name
    if target.exists() and not target.samefile(path):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()[:12]
        target = folder / f"{path.stem}.{digest}{path.suffix}"
        number = 1
        while target.exists() and not target.samefile(path):
            number += 1
            target = folder / f"{path.stem}.{digest}-{number}{path.suffix}"
    write_atomic(target.with_name(target.name + ".reason.txt"), (reason.rstrip() + "\n").encode())
    os.replace(path, target)
    return target


def _file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def new_case_files(store: Store, intake: Path) -> list[Path]:
    """Case files in intake/ whose exact content the store has not registered yet."""
    files = sorted(p for p in intake.iterdir() if p.is_file() and p.suffix.lower() in CASE_SUFFIXES)
    if not files:
        return []
    with store.session() as session:
        known = set(session.scalars(select(CaseRow.case_sha256)))
    return [p for p in files if _file_sha(p) not in known]


def _case_id_in(path: Path) -> str | None:
    """The case ID a file declares, or None when it cannot be read (validation then says why)."""
    try:
        return declared_case_id(parse_case_file(path))
    except CaseFileError:
        return None


def claim_case_files(
    store: Store, files: list[Path], home: Path, now: datetime, report: NightReport
) -> list[Path]:
    """The new case files that may go on to letters: one intake file per case ID.

    A file for a case that another file in intake already holds (registered earlier, or earlier
    in name order tonight) is set aside with the reason: both would otherwise be rendered, and
    the stored case would flip between them night after night. A correction edits or replaces
    the case's own file; a case whose file is gone from intake may come from a new one."""
    if not files:
        return []
    declared = {path: _case_id_in(path) for path in files}
    intake = (home / "intake").resolve()
    wanted = sorted({case_id for case_id in declared.values() if case_id})
    owners: dict[str, Path] = {}
    with store.reader() as session:
        for start in range(0, len(wanted), 500):
            rows = session.execute(
                select(CaseRow.case_id, CaseRow.source_file).where(
                    CaseRow.case_id.in_(wanted[start : start + 500])
                )
            )
            owners.update(
                (case_id, Path(source).resolve())
                for case_id, source in rows
                if Path(source).is_file() and Path(source).resolve().parent == intake
            )
    claimed = []
    for path in files:
        case_id = declared[path]
        owner = owners.get(case_id) if case_id else None
        if owner is None or owner == path.resolve():
            claimed.append(path)
            if case_id:
                owners[case_id] = path.resolve()
            continue
        reason = (
            f"case file set aside: {path.name}\n"
            f"case_id: case {case_id} already comes from {owner.name} in intake; to correct "
            f"the case, edit or replace {owner.name} (or remove it, then drop this file in again)"
        )
        with store.session() as session:
            audit(
                session, NIGHTLY, "intake_quarantined", "duplicate_case_id", now, case_id=case_id,
                detail=path.name,
            )  # fmt: skip
        quarantine(path, reason, home)
        report.quarantined.append(path.name)
        report.set_aside["case file: duplicate case ID"] += 1
    return claimed


def record_results(
    store: Store, results: Iterable[CaseResult], home: Path, now: datetime, report: NightReport
) -> None:
    """Register generated cases and their documents; set aside invalid files. One transaction
    per case, so a crash loses at most the case in flight (regenerated identically next run).

    A needs_info result (valid, letter written as a DRAFT, payer criteria insufficient) is
    registered and recorded like a ready one, but the case goes to needs_info, not ready."""
    for result in results:
        if result.ok:
            assert result.case is not None and result.summary is not None
            documents = document_records(result, home)
            try:
                with store.session() as session:
                    register_case(
                        session,
                        result.case,
                        source_file=result.source,
                        case_sha256=result.case_sha256 or "",
                        summary=_tracked(result.summary),
                        now=now,
                    )
                    record_documents(
                        session,
                        result.case_id,
                        documents,
                        actor=NIGHTLY,
                        now=now,
                        result_status=result.status,
                        missing=_missing(result),
                    )
            except SQLAlchemyError as exc:
                # The model and the columns share their limits (priorauth.limits), so this is a
                # last guard: that one case is set aside; the message names no values
                # (hide_parameters) and no patient.
                source = Path(result.source)
                if source.exists():
                    quarantine(
                        source,
                        f"case file set aside: {source.name}\nthe tracking store refused the "
                        f"case ({type(exc).__name__}); check field lengths",
                        home,
                    )
                report.quarantined.append(source.name)
                report.invalid.append(result.case_id)
                report.set_aside["case file: refused by the store"] += 1
                continue
            report.accepted.append(result.case_id)
            report.letters.append(result.case_id)
            if result.status == "needs_info":
                report.needs_info.append(result.case_id)
            crashpoint("after_case_recorded")
        else:
            reason = "\n".join(f"{e['field']}: {e['message']}" for e in result.errors)
            with store.session() as session:
                mark_needs_info(session, result.case_id, result.errors, actor=NIGHTLY, now=now)
                audit(
                    session,
                    NIGHTLY,
                    "intake_quarantined",
                    "invalid",
                    now,
                    detail=Path(result.source).name,
                )
            source = Path(result.source)
            if source.exists():
                quarantine(source, f"case file set aside: {source.name}\n{reason}", home)
            report.quarantined.append(source.name)
            report.invalid.append(result.case_id)
            report.set_aside["case file: invalid"] += 1


def _tracked(summary: dict[str, Any]) -> dict[str, Any]:
    """The part of summary.json the store keeps with the case (no patient identifiers)."""
    keep = (
        "product",
        "inputs",
        "dosing",
        "warnings",
        "template",
        "indication",
        "clinical_situation",
        "status",  # ready | needs_info: whether the letter on file is a DRAFT
        "criteria",  # the payer criteria checklist (policy, verdict, items)
    )
    return {k: summary[k] for k in keep if k in summary}


def _missing(result: CaseResult) -> list[str]:
    """The insufficient criterion ids of a result (ids only: safe for history and logs)."""
    missing = getattr(result, "missing", None)
    if missing is None and result.summary is not None:
        missing = insufficient_criteria(result.summary)
    return list(missing or [])


def regenerate_case(
    store: Store,
    bench: Workbench,
    home: Path,
    case_id: str,
    *,
    actor: Actor,
    now: datetime,
    override_reason: str | None = None,
) -> CaseResult:
    """Regenerate a tracked case's letter and packet from its case file and record them (a new
    version only when the bytes change): the portal's "Regenerate letter", and a coordinator's
    criteria override (`override_reason`: needs_info → ready, the letter made final).

    A coordinator's override holds for the case-file version the store evaluated: while that
    file is unchanged, every regeneration leaves the DRAFT watermark off; a changed file is
    evaluated afresh. No transaction is held while the PDFs render. Returns the result; an
    invalid one records nothing (the caller reports its errors). Raises ReasonRequired,
    IllegalTransition or CaseFileChanged for an override that cannot be made (nothing changes)."""
    with store.reader() as session:
        row = get_case(session, case_id)
        source, stored_sha, status = Path(row.source_file), row.case_sha256, row.status
        accepted = override_in_force(row)
    current_sha = _file_sha(source) if source.is_file() else None
    if override_reason is not None:
        if status != Status.NEEDS_INFO or not override_reason.strip():
            with store.session() as session:  # raises the reason it cannot be done
                override_to_ready(session, case_id, reason=override_reason, actor=actor, now=now)
        if current_sha is not None and current_sha != stored_sha:  # missing: invalid below
            raise CaseFileChanged(
                f"the case file of {case_id} changed after it was evaluated; the next nightly "
                "run evaluates the new version (then override that one if still needed)"
            )
    accept = (override_reason is not None or accepted) and current_sha in (stored_sha, None)
    result = generate_case(
        source, bench=bench, out_dir=home / "letters", accept_insufficient=accept
    )
    if not result.ok or result.summary is None:
        return result
    documents = document_records(result, home)
    with store.session() as session:
        if override_reason is not None:
            override_to_ready(
                session,
                case_id,
                reason=override_reason,
                actor=actor,
                now=now,
                case_sha256=result.case_sha256,
                summary=_tracked(result.summary),
            )
        record_documents(
            session,
            case_id,
            documents,
            actor=actor,
            now=now,
            result_status=result.status,
            missing=_missing(result),
        )
    return result


def keep_file(path: Path, folder: Path, digest: str) -> Path:
    """Move a received file into `folder` under a content-addressed name,
    `<first 16 hex of its SHA-256>-<its name>`, never replacing anything there: the same bytes
    dropped again under the same name are kept as `…-2`, `…-3`. Returns where it now is."""
    folder.mkdir(parents=True, exist_ok=True)
    base = f"{digest[:16]}-{path.name}"
    candidate, number = folder / base, 1
    while True:
        try:
            os.link(path, candidate)  # fails if the name exists: nothing is ever overwritten
        except FileExistsError:
            number += 1
            stem, dot, suffix = base.partition(".")
            candidate = folder / (f"{stem}-{number}{dot}{suffix}")
            continue
        except OSError:  # no hard links here: an exclusive create + copy instead
            try:
                with open(candidate, "xb") as out:
                    out.write(path.read_bytes())
            except FileExistsError:
                number += 1
                stem, dot, suffix = base.partition(".")
                candidate = folder / (f"{stem}-{number}{dot}{suffix}")
                continue
        path.unlink()
        return candidate


def ingest_responses(
    store: Store,
    bench: Workbench,
    home: Path,
    now: datetime,
    report: NightReport,
) -> None:
    """Every payer file in responses/: its responses recorded in the ledger, the file kept in
    responses/processed/ under a content-addressed name (never overwritten), then every open
    response (tonight's and those still pending) applied in the payer's decision-date order.
    Unreadable files (and over-long fields) go to quarantine with the reason."""
    folder = home / "responses"
    files = sorted(p for p in folder.iterdir() if p.is_file())
    for path in files:
        if path.suffix.lower() not in RESPONSE_SUFFIXES:
            quarantine(path, f"{path.name}: not a payer response file type", home)
            report.set_aside["payer file: not a response file type"] += 1
            continue
        try:
            responses = parse_response_file(path, reasons=_reasons(bench))
        except ResponseFileError as exc:
            long = "at most" in str(exc) and "characters" in str(exc)
            kind = "over-long field" if long else "unreadable"
            quarantine(path, str(exc), home)
            report.set_aside[f"payer file: {kind}"] += 1
            continue
        digest = responses[0].dedup_key.partition(":")[0]
        planned = (folder / "processed" / f"{digest[:16]}-{path.name}").relative_to(home)
        new = 0
        with store.session() as session:
            for response in responses:
                if receive_response(session, response, now=now, stored_file=str(planned)):
                    new += 1
        report.responses["duplicate"] += len(responses) - new
        crashpoint("after_responses_received")
        keep_file(path, folder / "processed", digest)
    apply_pending(store, bench.catalog, bench.settings, home, now, report)


def _reasons(bench: Workbench):  # type: ignore[no-untyped-def]
    from priorauth.responses import _reasons_in

    return _reasons_in(Path(bench.settings.reference_dir))


def apply_pending(
    store: Store,
    catalog: Any,
    settings: Any,
    home: Path,
    now: datetime,
    report: NightReport | None = None,
    *,
    case_id: str | None = None,
) -> Counter:
    """Apply every open payer response (or those of one case and of no case yet), in the
    payer's decision-date order; what still cannot apply stays pending with its reason.

    Called by the night, and right after a coordinator changes a case (`priorauth submit`,
    `priorauth status`), so a denial that arrived before its submission was recorded applies
    as soon as it is. Each response is one transaction; a database refusal (e.g. a value the
    column cannot hold) keeps that response pending, never stops the rest."""
    report = report if report is not None else NightReport()
    outcomes: Counter = Counter()
    with store.reader() as session:
        todo = [
            (r.id, r.stored_file, r.response_index, r.source_file)
            for r in open_responses(session, case_id=case_id)
        ]
    parsed: dict[str, list[Any] | str] = {}
    reasons = None
    for ledger_id, stored, index, source in todo:
        if stored not in parsed:
            path = home / stored if stored else None
            try:
                if path is None or not path.is_file():
                    raise ResponseFileError(f"{source}: the kept copy {stored} is missing")
                if reasons is None:
                    from priorauth.responses import _reasons_in

                    reasons = _reasons_in(Path(settings.reference_dir))
                parsed[stored] = parse_response_file(path, reasons=reasons)
            except ResponseFileError as exc:
                parsed[stored] = str(exc)
        found = parsed[stored]
        if isinstance(found, str) or index is None or index >= len(found):
            with store.session() as session:
                row = session.get(PayerResponseRow, ledger_id)
                if row is not None and row.outcome in ("received", "pending"):
                    row.outcome, row.detail = (
                        "pending",
                        (found if isinstance(found, str) else "response not found in its file"),
                    )
            outcomes["pending"] += 1
            continue
        response = found[index]
        # The file's name as the payer sent it; the stored name adds its content hash.
        response = replace(response, source=source)
        actor = Actor(f"payer-file:{source}"[:64], "payer_file", "payer")
        denial = None
        try:
            with store.session() as session:
                ingested = ingest_response(
                    session,
                    response,
                    catalog=catalog,
                    settings=settings,
                    now=now,
                    actor=actor,
                    stored_file=stored,
                )
                if ingested.adverse:
                    row = session.get(CaseRow, ingested.case_id)
                    assert row is not None and ingested.change is not None
                    denial = {
                        "case_id": row.case_id,
                        "status": str(row.status),
                        "reason_code": ingested.change.reason_code or "",
                        "appeal_deadline": str(row.appeal_deadline),
                    }
        except SQLAlchemyError as exc:
            # hide_parameters keeps values out of the message; name the kind of error only
            detail = f"the store refused it ({type(exc).__name__}); kept pending"
            with store.session() as session:
                row = session.get(PayerResponseRow, ledger_id)
                if row is not None:
                    row.outcome, row.detail = "pending", detail
            outcomes["pending"] += 1
            report.responses["pending"] += 1
            continue
        if denial is not None:  # after the commit: the denial is on record
            report.denials.append(denial)
        outcomes[ingested.outcome] += 1
        report.responses[ingested.outcome] += 1
        if ingested.outcome == "rejection" and ingested.case_id:
            report.rejections.append(ingested.case_id)
        crashpoint("after_response_applied")
    return outcomes


def _claimable(row: NotificationRow, now: datetime) -> bool:
    """pending and failed rows are; a `sending` row only when its sender is gone: a process on
    this host that no longer exists (it crashed), or a lease older than SEND_LEASE."""
    if row.state in ("pending", "failed"):
        return True
    if row.state != "sending":
        return False
    if row.claimed_at is None or row.claimed_at < now - SEND_LEASE:
        return True
    host, _, pid = (row.claimed_by or "").rpartition(":")
    if host == socket.gethostname() and pid.isdigit():
        try:
            os.kill(int(pid), 0)
        except ProcessLookupError:
            return True  # that sender crashed: resend (same Message-ID/dedup header)
        except PermissionError:
            return False
        return int(pid) == os.getpid()
    return False


def send_notifications(
    store: Store,
    settings: Any,
    now: datetime,
    report: NightReport,
    clock: Callable[[], datetime],
    emit: Callable[[str, dict[str, str]], None] | None = None,
) -> None:
    """Drain the outbox. A row is claimed (pending|failed → sending, guarded by its state and
    attempt count, so two processes never both take it) before it is handed to the channel, and
    marked sent after. A crash in between leaves it `sending`: the next run sends it again (same
    dedup header and References) once its sender is known dead or its lease has run out.

    Event rows go to `emit(event name, payload)` (the nightly flow's Prefect events); without
    `emit` (the CLI, plain runs) they wait for a run that has one."""
    urls = {channel_key(u): u for u in channels(settings.notify_urls)}
    with store.session() as session:
        stmt = select(NotificationRow.id).where(
            NotificationRow.state.in_(["pending", "failed", "sending"]),
            NotificationRow.attempts < MAX_SEND_ATTEMPTS,
        )
        if emit is None:
            stmt = stmt.where(NotificationRow.channel_key != EVENT_CHANNEL)
        ids = list(session.scalars(stmt.order_by(NotificationRow.id)))
    me = f"{socket.gethostname()}:{os.getpid()}"
    for notice_id in ids:
        claim_time = clock()
        with store.session() as session:
            current = session.get(NotificationRow, notice_id)
            if current is None or not _claimable(current, claim_time):
                continue
            claimed = session.execute(
                update(NotificationRow)
                .where(NotificationRow.id == notice_id)
                .where(NotificationRow.state == current.state)
                .where(NotificationRow.attempts == current.attempts)
                .values(
                    state="sending",
                    claimed_at=claim_time,
                    claimed_by=me,
                    attempts=NotificationRow.attempts + 1,
                )
            ).rowcount
            row = session.get(NotificationRow, notice_id) if claimed else None
        if row is None:
            continue
        url = urls.get(row.channel_key)
        error = None
        if row.channel_key == EVENT_CHANNEL and emit is not None:
            try:
                emit(row.title, json.loads(row.body))
            except Exception as exc:
                error = f"event not emitted: {type(exc).__name__}"
        elif url is None:
            error = "channel no longer configured in PRIORAUTH_NOTIFY_URLS"
        else:
            crashpoint("before_send")
            try:
                send(url, row.title, row.body, dedup_key=row.dedup_key)
            except NotifyError as exc:
                error = str(exc)
            crashpoint("after_send")
        with store.session() as session:
            fresh = session.get(NotificationRow, notice_id)
            assert fresh is not None
            if error is None:
                fresh.state, fresh.sent_at, fresh.last_error = "sent", clock(), None
                audit(
                    session,
                    NIGHTLY,
                    "notification_sent",
                    "ok",
                    clock(),
                    case_id=fresh.case_id,
                    detail=fresh.channel,
                )
                if fresh.channel_key == EVENT_CHANNEL:
                    report.events_emitted += 1
                else:
                    report.notices_sent += 1
            else:
                fresh.state, fresh.last_error = "failed", error
                audit(
                    session,
                    NIGHTLY,
                    "notification_failed",
                    "error",
                    clock(),
                    case_id=fresh.case_id,
                    detail=f"{fresh.channel}: {error}",
                )
                report.notices_failed += 1


def renew(
    store: Store, bench: Workbench, home: Path, today: date, now: datetime, report: NightReport
) -> None:
    """Renewal letters for authorizations ending within the renewal window (DOMAIN.md §8).

    Every case in the window is listed each night; its letter is rendered once per authorization
    end date (a later night only lists it, unless the letter went missing)."""
    with store.session() as session:
        due = [
            (r.case_id, r.source_file, r.auth_number, r.auth_end)
            for r in expiring(session, today, bench.catalog.renewal_lead_days)
        ]
        made = {
            (case_id, part)
            for case_id, path in session.execute(
                select(DocumentRow.case_id, DocumentRow.path).where(
                    DocumentRow.kind == "renewal_letter",
                    DocumentRow.case_id.in_([d[0] for d in due]),
                )
            )
            if (home / path).is_file()
            for part in Path(path).parts
            if part.startswith("renewal-")
        }
    for case_id, source, auth_number, auth_end in due:
        if (case_id, f"renewal-{auth_end}") in made:
            report.renewals.append(case_id)
            continue
        renewal = {"auth_number": auth_number, "auth_end": auth_end}
        result = generate_case(Path(source), bench=bench, out_dir=home / "letters", renewal=renewal)
        if not result.ok or result.summary is None:
            with store.session() as session:
                audit(
                    session,
                    NIGHTLY,
                    "renewal_letter",
                    "error",
                    now,
                    case_id=case_id,
                    detail="; ".join(e["field"] for e in result.errors),
                )
            continue
        with store.session() as session:
            record_documents(
                session,
                case_id,
                document_records(result, home),
                actor=NIGHTLY,
                now=now,
                result_status=result.status,
                missing=_missing(result),
            )
        report.renewals.append(case_id)
        if result.status == "needs_info":
            report.renewals_needs_info.append(case_id)


def finish(
    store: Store,
    today: date,
    now: datetime,
    report: NightReport,
    follow_up_business_days: int = 2,
    lead_days: int = 30,
    pending_max_age: timedelta | None = None,
) -> None:
    with store.session() as session:
        report.pending = [
            f"#{item['id']} {item['case_id'] or '?'}: {item['reason']}"
            for item in pending_view(session)
        ]
        if pending_max_age is not None:
            report.pending_too_old = [
                f"#{item['id']} {item['case_id'] or '?'}"
                for item in pending_view(session, older_than=now - pending_max_age)
            ]
        report.rejections = sorted(open_rejections(session))
        report.expired = expire_ended(session, today, now)
        report.units_running_out = [
            case_id for case_id, _ in units_running_out(session, today, lead_days)
        ]
        report.overdue = flag_overdue(session, now)
        report.follow_ups = follow_ups_due(session, now, follow_up_business_days)
        report.by_status = dict(
            session.execute(select(CaseRow.status, func.count()).group_by(CaseRow.status)).all()
        )
        documents = session.scalar(select(func.count(DocumentRow.id))) or 0
        audit(
            session,
            NIGHTLY,
            "nightly_run",
            "ok",
            now,
            detail=f"cases={sum(report.by_status.values())} documents={documents}",
        )


def _threads(workers: int) -> Callable[[Callable[[list[Path]], Any], list[list[Path]]], list[Any]]:
    """Chunks on `workers` threads, so every render worker is busy (as the flow's task runner)."""

    def run(fn: Callable[[list[Path]], Any], chunks: list[list[Path]]) -> list[Any]:
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="letters") as pool:
            return list(pool.map(fn, chunks))

    return run


def _call(name: str, fn: Callable[[], Any]) -> Any:
    return fn()


def run_night(
    settings: Any,
    now: datetime,
    *,
    emit: Callable[[str, dict[str, str]], None] | None = None,
    step: Callable[[str, Callable[[], Any]], Any] = _call,
    map_chunks: Callable[[Callable[[list[Path]], Any], list[list[Path]]], list[Any]] | None = None,
    on_progress: Callable[[int, int], None] | None = None,
) -> NightReport:
    """One night's work over $PRIORAUTH_HOME, step by step. The Prefect flow passes `step` and
    `map_chunks` to make each step (and each chunk of new cases) a task run; without them the
    steps run inline and chunks on one thread per render worker (tests, benchmarks,
    `python -m priorauth.nightly`). `on_progress(cases_done, new_cases)` follows the letters
    step as its chunks finish (from their threads)."""
    home = settings.home
    channels(settings.notify_urls)  # a broken PRIORAUTH_NOTIFY_URLS stops the run before it starts
    ensure_folders(home)
    store = Store(settings.db_url)
    report = NightReport()
    try:
        # One night at a time (NightAlreadyRunning otherwise); the run's temporary files live
        # in its own folder, and a killed run's are removed now that no other run is alive.
        with night_lock(store, now), scratch(home):
            report.stale_scratch_removed = remove_stale_scratch(home)
            _run_steps(
                settings,
                now,
                store,
                report,
                emit=emit,
                step=step,
                map_chunks=map_chunks,
                on_progress=on_progress,
            )
    finally:
        store.dispose()
    return report


def _run_steps(
    settings: Any,
    now: datetime,
    store: Store,
    report: NightReport,
    *,
    emit: Callable[[str, dict[str, str]], None] | None,
    step: Callable[[str, Callable[[], Any]], Any],
    map_chunks: Callable[[Callable[[list[Path]], Any], list[list[Path]]], list[Any]] | None,
    on_progress: Callable[[int, int], None] | None = None,
) -> None:
    home = settings.home
    bench = Workbench.build(settings, now.date())
    files = step(
        "find-new-cases",
        lambda: claim_case_files(store, new_case_files(store, home / "intake"), home, now, report),
    )
    if files:
        size = max(1, min(settings.chunk_size, -(-len(files) // (settings.workers * 2))))
        workers = max(1, min(settings.workers, -(-len(files) // size)))
        run_settings = settings.model_copy(update={"workers": workers})
        with BatchRunner(
            run_settings, today=now.date(), out_dir=home / "letters", keep_records=True
        ) as runner:
            done = [0]
            counting = threading.Lock()

            def letters_chunk(paths: list[Path]) -> list[str]:
                results = runner.run_chunk(paths)
                record_results(store, results, home, now, report)
                if on_progress is not None:
                    with counting:
                        done[0] += len(results)
                        on_progress(done[0], len(files))
                return [r.case_id for r in results]

            (map_chunks or _threads(workers))(letters_chunk, list(chunked(files, size)))
    step("payer-responses", lambda: ingest_responses(store, bench, home, now, report))
    step(
        "notifications",
        lambda: send_notifications(store, settings, now, report, lambda: datetime.now(UTC), emit),
    )
    step(
        "renewals-and-deadlines",
        lambda: (
            renew(store, bench, home, now.date(), now, report),
            finish(
                store,
                now.date(),
                now,
                report,
                bench.catalog.follow_up_business_days,
                bench.catalog.renewal_lead_days,
                timedelta(hours=settings.pending_response_max_age_hours),
            ),
        ),
    )


def raise_for_failures(report: NightReport) -> None:
    """NightFailed when the night needs a person (see NightReport.failures)."""
    problems = report.failures()
    if problems:
        raise NightFailed("nightly run finished with problems: " + "; ".join(problems))


def has_work(settings: Any) -> bool:
    """Whether tonight has anything beyond the deadline checks: a new case file, a payer file,
    a notice or event to send, or a pending payer response. The CLI runs a quiet night without
    starting Prefect."""
    home = settings.home
    if (home / "responses").is_dir() and any(p.is_file() for p in (home / "responses").iterdir()):
        return True
    store = Store(settings.db_url)
    try:
        intake = home / "intake"
        if intake.is_dir() and new_case_files(store, intake):
            return True
        with store.reader() as session:
            waiting = session.scalar(
                select(func.count(NotificationRow.id)).where(
                    NotificationRow.state.in_(["pending", "failed", "sending"]),
                    NotificationRow.attempts < MAX_SEND_ATTEMPTS,
                )
            )
            return bool(waiting) or bool(open_responses(session))
    finally:
        store.dispose()


if __name__ == "__main__":  # the nightly steps without Prefect: crash tests and benchmarks
    from priorauth.settings import load_settings

    night = run_night(load_settings(), datetime.now(UTC))
    print(json.dumps(night.summary()))
