"""Prefect flow: the nightly run. Intake and letters → payer responses → denial notifications →
overdue and expiring authorizations, then a table artifact of the night (case IDs and counts).

Thin: each step is a `priorauth.nightly` function; tasks are steps or chunks of cases, never
tiny steps. No parameters carry patient data; every step is idempotent, so re-running after a
crash (or on a schedule that overlaps a manual run) ends in the same state.
"""

from __future__ import annotations

import os
import sys
from datetime import UTC, datetime
from pathlib import Path

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.task_runners import ThreadPoolTaskRunner

from priorauth import nightly
from priorauth.pipeline import BatchRunner, Workbench, chunked
from priorauth.settings import load_settings
from priorauth.store import Store

TASK = {"cache_policy": NO_CACHE, "persist_result": False}


def _now() -> datetime:
    return datetime.now(UTC)


@task(name="letters-chunk", **TASK)
def letters_chunk(night: dict, paths: list[str]) -> list[str]:
    """Generate one chunk of new case files in a render worker, then record them."""
    results = night["runner"].run_chunk([Path(p) for p in paths])
    nightly.record_results(night["store"], results, night["home"], night["now"], night["report"])
    return [r.case_id for r in results]


@task(name="payer-responses", **TASK)
def payer_responses(night: dict) -> None:
    def on_denial(denial: dict[str, str]) -> None:
        # Case ID, status, reason code, deadline: no patient data in Prefect's event store.
        emit_event(
            event=f"priorauth.case.{denial['status']}",
            resource={"prefect.resource.id": f"priorauth.case.{denial['case_id']}"},
            payload=denial,
        )

    nightly.ingest_responses(
        night["store"], night["bench"], night["home"], night["now"], night["report"], on_denial
    )


@task(name="notifications", **TASK)
def notifications(night: dict) -> None:
    nightly.send_notifications(
        night["store"], night["bench"].settings, night["now"], night["report"], _now
    )


@task(name="renewals-and-deadlines", **TASK)
def renewals_and_deadlines(night: dict) -> None:
    now = night["now"]
    nightly.renew(night["store"], night["bench"], night["home"], now.date(), now, night["report"])
    nightly.finish(night["store"], now.date(), now, night["report"])


@flow(name="nightly", log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=2))
def nightly_run() -> dict:
    """One night's work over $PRIORAUTH_HOME (intake/, responses/, letters/, quarantine/)."""
    logger = get_run_logger()
    settings = load_settings()
    home = settings.home
    nightly.ensure_folders(home)
    now = _now()
    store = Store(settings.db_url)
    report = nightly.NightReport()
    bench = Workbench.build(settings, now.date())
    try:
        files = nightly.new_case_files(store, home / "intake")
        logger.info("%d new case file(s) in intake", len(files))
        night = {"store": store, "bench": bench, "home": home, "now": now, "report": report}
        if files:
            size = max(1, min(settings.chunk_size, -(-len(files) // (settings.workers * 2))))
            workers = max(1, min(settings.workers, -(-len(files) // size)))
            run_settings = settings.model_copy(update={"workers": workers})
            with BatchRunner(run_settings, today=now.date(), out_dir=home / "letters") as runner:
                night["runner"] = runner
                chunks = [[str(p) for p in c] for c in chunked(files, size)]
                for future in letters_chunk.map([night] * len(chunks), chunks):
                    future.result()
        payer_responses(night)
        notifications(night)
        renewals_and_deadlines(night)
    finally:
        store.dispose()
    create_table_artifact(
        key="nightly-summary",
        table=report.table(),
        description=f"Nightly run {now:%Y-%m-%d %H:%M} UTC (case IDs only)",
    )
    summary = {
        "by_status": report.by_status,
        "new_cases": len(report.accepted),
        "quarantined": len(report.quarantined),
        "letters": len(report.letters),
        "denials": [d["case_id"] for d in report.denials],
        "notices_sent": report.notices_sent,
        "notices_failed": report.notices_failed,
        "overdue": report.overdue,
        "renewals": report.renewals,
        "expired": report.expired,
        "responses": dict(report.responses),
    }
    logger.info("night done: %s", summary)
    return summary


if __name__ == "__main__":
    print(nightly_run())
    sys.exit(0)
