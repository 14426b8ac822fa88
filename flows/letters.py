"""Prefect flow: letters of medical necessity and packets for case files or folders of them.

A thin shell over `priorauth.pipeline`: parameters are file paths only (Prefect stores them in
plain text), tasks are chunks of cases (not steps), and results, logs and the artifact carry
case IDs and statuses, never patient data. Run directly for the README's quick start:

    python flows/letters.py fixtures/cases --out var/letters
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import priorauth.prefect_env  # noqa: F401  (Prefect's environment, set before prefect is imported)
from priorauth.settings import load_settings

# isort: split

from prefect import flow, get_run_logger, task
from prefect.artifacts import (
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.cache_policies import NO_CACHE
from prefect.task_runners import ThreadPoolTaskRunner

from priorauth.cli import run_date
from priorauth.intake import find_case_files
from priorauth.pipeline import BatchRunner, CaseResult, chunked

_runner: BatchRunner | None = None  # the render workers of the flow run in progress


@task(name="generate-chunk", cache_policy=NO_CACHE, persist_result=False)
def generate_chunk(paths: list[str]) -> list[CaseResult]:
    """One chunk of cases in one render worker; logs case IDs and field paths only."""
    assert _runner is not None, "generate_chunk runs inside generate_letters"
    logger = get_run_logger()
    results = _runner.run_chunk([Path(p) for p in paths])
    for result in results:
        if not result.ok:
            fields = ", ".join(e["field"] for e in result.errors)
            logger.warning("case %s set aside as invalid (%s)", result.case_id, fields)
    return results


@flow(
    name="generate-letters",
    log_prints=False,
    task_runner=ThreadPoolTaskRunner(max_workers=4),
    validate_parameters=True,
)
def generate_letters(paths: list[str], out_dir: str | None = None) -> dict:
    """Generate letter.pdf, packet.pdf and summary.json under OUT_DIR/<case_id>/ for each case
    file in `paths` (files or folders). Invalid cases get a summary with their errors; every
    valid case is still generated. OUT_DIR defaults to $PRIORAUTH_HOME/letters."""
    global _runner
    logger = get_run_logger()
    settings = load_settings()
    out_dir = out_dir or str(settings.home / "letters")
    files = find_case_files([Path(p) for p in paths])
    logger.info("%d case file(s) to generate into %s", len(files), out_dir)
    if not files:
        return {"out_dir": out_dir, "ready": 0, "needs_info": 0, "invalid": 0, "cases": []}
    size = max(1, min(settings.chunk_size, -(-len(files) // (settings.workers * 2))))
    workers = min(settings.workers, -(-len(files) // size))
    settings = settings.model_copy(update={"workers": workers})
    with BatchRunner(settings, today=run_date(), out_dir=Path(out_dir)) as runner:
        _runner = runner
        try:
            chunks = [[str(p) for p in chunk] for chunk in chunked(files, size)]
            futures = generate_chunk.map(chunks)
            # progress for the UI: a fraction of cases done, updated as chunks finish (in order)
            progress = create_progress_artifact(
                progress=0.0, description=f"Letters: 0 of {len(files)} cases"
            )
            results = []
            for future in futures:
                results += future.result()
                update_progress_artifact(
                    progress,
                    progress=round(100 * len(results) / len(files), 1),
                    description=f"Letters: {len(results)} of {len(files)} cases",
                )
        finally:
            _runner = None
    cases = [
        {
            "case_id": r.case_id,
            "status": r.status,
            "warnings": len(r.warnings),
            "errors": len(r.errors),
        }
        for r in results
    ]
    create_table_artifact(
        key="letters-run",
        table=cases,
        description=f"Letters generated into {out_dir} (case IDs only)",
    )
    ready = sum(r.status == "ready" for r in results)
    needs_info = sum(r.status == "needs_info" for r in results)
    invalid = len(results) - ready - needs_info
    logger.info("%d ready, %d needs_info (DRAFT), %d invalid", ready, needs_info, invalid)
    return {
        "out_dir": out_dir,
        "ready": ready,
        "needs_info": needs_info,
        "invalid": invalid,
        "cases": cases,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Run the generate-letters flow once.")
    parser.add_argument("paths", nargs="+", help="case files or folders of them")
    parser.add_argument(
        "--out", default=None, help="output folder (default $PRIORAUTH_HOME/letters)"
    )
    args = parser.parse_args(argv)
    summary = generate_letters(paths=args.paths, out_dir=args.out)
    out = Path(summary["out_dir"]).resolve()
    print(
        f"\n{summary['ready']} ready, {summary['needs_info']} needs_info (letters marked DRAFT: "
        f"a payer criterion lacks a document), {summary['invalid']} invalid. PDFs are in {out}:"
    )
    for case in summary["cases"]:
        where = out / case["case_id"]
        shown = (
            f"{where}/letter.pdf, packet.pdf"
            if case["status"] in ("ready", "needs_info")
            else f"{where}/summary.json"
        )
        print(f"  {case['status']:<10} {case['case_id']:<24} {shown}")
    return 1 if summary["invalid"] else 0


if __name__ == "__main__":
    sys.exit(main())
