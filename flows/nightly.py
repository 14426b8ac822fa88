"""Prefect flow: the nightly run. Intake and letters → payer responses → denial notifications →
overdue and expiring authorizations, then a table artifact of the night (case IDs and counts).

Thin: the steps are `priorauth.nightly.run_night`; this flow makes each step, and each chunk of
new cases, a task run, emits a Prefect event per denial, and publishes the artifact. No
parameters carry patient data; every step is idempotent, so a re-run after a crash ends in the
same state, and a run overlapping another stops at once (the store's nightly lock). The run
fails (a failed state, counts and case IDs in its message) when notices failed or payer
responses have been pending too long, after the artifact is published.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import priorauth.prefect_env  # noqa: F401  (Prefect's environment, set before prefect is imported)
from priorauth.progress import Progress
from priorauth.settings import load_settings

# isort: split

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.events import emit_event
from prefect.task_runners import ThreadPoolTaskRunner

from priorauth.nightly import raise_for_failures, run_night

TASK: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}


def emit_denial(event: str, denial: dict[str, str]) -> None:
    """A Prefect event per denial, for automations: case ID, status, reason code, deadline.
    Called from the outbox, so a denial recorded by the CLI or the portal is emitted too."""
    emit_event(
        event=event,
        resource={"prefect.resource.id": f"priorauth.case.{denial['case_id']}"},
        payload=denial,
    )


def as_task(name: str, fn: Callable[[], Any]) -> Any:
    return task(fn, name=name, **TASK)()


def map_as_tasks(fn: Callable[[list[Path]], Any], chunks: list[list[Path]]) -> list[Any]:
    futures = task(fn, name="letters-chunk", **TASK).map(chunks)
    return [future.result() for future in futures]


def progress_reporter() -> Callable[[int, int], None]:
    """Progress of the letters step: a Prefect progress artifact (created with the first
    finished chunk), and a line on standard error when that is a terminal. Counts only."""
    lock = threading.Lock()
    state: dict[str, Any] = {}

    def report(done: int, total: int) -> None:
        with lock:
            text = f"Nightly letters: {done} of {total} new cases"
            share = round(100 * done / total, 1)
            if "artifact" not in state:
                state["artifact"] = create_progress_artifact(progress=share, description=text)
                state["terminal"] = Progress(total, what="new cases")
            else:
                update_progress_artifact(state["artifact"], progress=share, description=text)
            state["terminal"].update(done)
            if done >= total:
                state["terminal"].close()

    return report


@flow(name="nightly", log_prints=False, task_runner=ThreadPoolTaskRunner(max_workers=2))
def nightly_run() -> dict:
    """One night's work over $PRIORAUTH_HOME (intake/, responses/, letters/, quarantine/)."""
    logger = get_run_logger()
    now = datetime.now(UTC)
    report = run_night(
        load_settings(),
        now,
        emit=emit_denial,
        step=as_task,
        map_chunks=map_as_tasks,
        on_progress=progress_reporter(),
    )
    create_table_artifact(
        key="nightly-summary",
        table=report.table(),
        description=f"Nightly run {now:%Y-%m-%d %H:%M} UTC (case IDs only)",
    )
    summary = report.summary()
    logger.info("night done: %s", summary)
    raise_for_failures(report)  # a failed run state, after the artifact and the log line
    return summary


if __name__ == "__main__":
    print(nightly_run())
