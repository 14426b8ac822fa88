"""The letter steps in order, with no framework: read → validate → dose → word → lay out →
assemble → write. One case's failure is that case's result; the batch always goes on.

`BatchRunner` spreads cases over long-lived worker processes (reportlab is CPU-bound and gains
nothing from threads). Results carry case IDs, statuses and field errors, never patient data.
"""

from __future__ import annotations

import json
import multiprocessing
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from priorauth import codes
from priorauth.catalog import Catalog, load_catalog
from priorauth.domain import Case
from priorauth.dosing import Dose, DoseRequest, LoadingPhase, Regimen, compute_regimen
from priorauth.errors import (
    AttachmentError,
    CaseFileError,
    CaseValidationError,
    DosingError,
    FieldError,
)
from priorauth.files import crashpoint, keep_version, sha256_bytes, sha256_file, write_atomic
from priorauth.intake import case_id_for, cross_checks, parse_case_file, validate_case
from priorauth.letters.cover import render_cover
from priorauth.letters.criteria import Evaluation, evaluate
from priorauth.letters.findings import case_findings
from priorauth.letters.grounding import Ledger
from priorauth.letters.packet import assemble_packet, read_attachment
from priorauth.letters.page import ensure_fonts
from priorauth.letters.render import render_letter
from priorauth.letters.wording import letter_context, make_environment, render_letter_text
from priorauth.settings import Settings

LETTER_FILE = "letter.pdf"
PACKET_FILE = "packet.pdf"
SUMMARY_FILE = "summary.json"


@dataclass
class CaseResult:
    """What happened to one case file; safe to log (IDs, statuses, field errors, codes)."""

    case_id: str
    source: str
    status: str  # "ready" | "invalid"
    errors: list[dict[str, str]] = field(default_factory=list)
    warnings: list[dict[str, str]] = field(default_factory=list)
    files_written: int = 0
    missing: list[str] = field(default_factory=list)  # insufficient criterion ids (needs_info)
    # For the tracking store only (held in memory, never logged or handed to Prefect):
    case: Case | None = field(default=None, repr=False)
    summary: dict[str, Any] | None = field(default=None, repr=False)
    case_sha256: str | None = None
    folder: str | None = None  # where letter.pdf and packet.pdf were written
    renewal: bool = False

    @property
    def ok(self) -> bool:
        """Letter and packet were written (ready, or needs_info with a DRAFT watermark)."""
        return self.status in ("ready", "needs_info")

    def lean(self) -> CaseResult:
        """Without the validated case and summary (patient data): what a caller that only reports
        IDs and statuses keeps, so a batch's memory does not grow with its patients' records."""
        return replace(self, case=None, summary=None)


@dataclass
class Workbench:
    """What every case needs, built once per process: reference data, templates, fonts, date."""

    settings: Settings
    catalog: Catalog
    today: date
    env: Any

    @classmethod
    def build(cls, settings: Settings, today: date) -> Workbench:
        ensure_fonts()
        return cls(
            settings=settings,
            catalog=load_catalog(settings.reference_dir),
            today=today,
            env=make_environment(settings.templates_dir),
        )


def dose_request(case: Case) -> DoseRequest:
    request = case.request
    return DoseRequest(
        sex=case.patient.sex,
        height_cm=case.patient.height.cm,
        weight_kg=case.patient.weight.kg,
        g_per_kg_per_course=request.g_per_kg_per_course,
        days_per_course=request.days_per_course,
        interval_days=request.interval_days,
        authorization_days=request.authorization_days,
        basis=request.weight_basis,
    )


def inputs_dict(request: DoseRequest, case: Case | None = None) -> dict[str, Any]:
    """The `inputs` block of summary.json and `priorauth dose --json` (with `loading` when the
    case's request has a loading phase)."""
    out = {
        "sex": request.sex,
        "height_cm": float(request.height_cm),
        "weight_kg": float(request.weight_kg),
        "g_per_kg_per_course": float(request.g_per_kg_per_course),
        "days_per_course": request.days_per_course,
        "interval_days": request.interval_days,
        "authorization_days": request.authorization_days,
        "weight_basis": request.basis,
    }
    loading = case.request.loading if case is not None else None
    if loading is not None:
        out["loading"] = LoadingPhase(**loading.model_dump()).as_dict()
    return out


def product_dict(product: Any) -> dict[str, Any]:
    return {
        "id": product.id,
        "name": product.name,
        "hcpcs": product.hcpcs,
        "billing_unit_mg": product.billing_unit_mg,
    }


@dataclass
class Letter:
    """A rendered case: the PDFs and everything summary.json reports about them."""

    case: Case
    dose: Dose  # the maintenance (or only) regimen
    regimen: Regimen
    template: str
    letter_pdf: bytes
    packet_pdf: bytes
    warnings: list[dict[str, str]]
    evaluation: Evaluation | None = None
    claims: list[dict[str, Any]] = field(default_factory=list)
    draft: bool = False


def case_regimen(case: Case, product: Any) -> Regimen:
    """The request's dosing: its loading phase (if any) and its maintenance or only regimen."""
    loading = case.request.loading
    phase = LoadingPhase(**loading.model_dump()) if loading is not None else None
    return compute_regimen(dose_request(case), product, phase)


def case_evaluation(case: Case, catalog: Catalog, dose: Any, on: date) -> Evaluation | None:
    """The case judged against its payer's policy (None when no policy decides it)."""
    payer = catalog.payer(case.coverage.payer_id)
    policy = catalog.policy_for(payer, case.indication, case.diagnoses[0].code, on)
    if policy is None:
        return None
    return evaluate(case, catalog=catalog, policy=policy, dose=dose, on=on)


def build_letter(
    case: Case,
    bench: Workbench,
    case_dir: Path,
    renewal: dict[str, Any] | None = None,
    *,
    accept_insufficient: bool = False,
) -> Letter:
    """Dose, judge, word, lay out and assemble one valid case (raises AttachmentError,
    DosingError). A case whose payer criteria are insufficient is watermarked DRAFT unless a
    coordinator accepted it (`accept_insufficient`)."""
    catalog = bench.catalog
    product = catalog.product(case.request.product_id)
    payer = catalog.payer(case.coverage.payer_id)
    regimen = case_regimen(case, product)
    dose = regimen.maintenance
    letter_date = case.prepared_on or bench.today
    evaluation = case_evaluation(case, catalog, regimen, letter_date)
    if evaluation is not None and accept_insufficient:
        evaluation = replace(evaluation, override=True)
    findings = case_findings(case, catalog, regimen, evaluation)
    attachments = [
        (
            a.title,
            read_attachment(
                case_dir / a.path,
                field=f"attachments[{i}].path",
                max_bytes=bench.settings.max_attachment_mb * 1_048_576,
            ),
        )
        for i, a in enumerate(case.attachments)
    ]
    phases = (
        [(label.title(), d) for label, d in regimen.phases] if regimen.loading is not None else None
    )
    ctx = letter_context(
        case,
        catalog=catalog,
        dose=dose,
        letter_date=letter_date,
        evaluation=evaluation,
        phases=phases,
    )
    ctx["units_in_authorization_total"] = regimen.total_billing_units_in_authorization
    ctx["renewal"] = renewal
    root: dict[str, Any] = {name: getattr(case, name) for name in Case.model_fields}
    ledger = Ledger(root={**root, "renewal": renewal}, library=catalog.evidence)
    template, sections = render_letter_text(
        bench.env,
        ctx,
        payer_id=payer.id,
        indication=case.indication,
        situation=case.clinical_situation,
        ledger=ledger,
    )
    titles = {dx.code: codes.icd_title(dx.code) or "" for dx in case.diagnoses}
    draft = evaluation is not None and evaluation.needs_documents and not accept_insufficient
    letter_pdf = render_letter(
        ctx,
        sections,
        letterhead=catalog.letterhead,
        titles=titles,
        references=ledger.references(),
        enclosures=[a.title for a in case.attachments],
        draft=draft,
    )

    def cover(total: int, parts: list[tuple[str, int]]) -> bytes:
        return render_cover(
            case_id=case.case_id,
            payer=payer,
            letterhead=catalog.letterhead,
            sent_on=letter_date,
            total_pages=total,
            parts=parts,
            urgent=case.request.urgent,
        )

    packet_pdf = assemble_packet(
        letter_pdf=letter_pdf,
        attachments=attachments,
        cover=cover,
        title=f"Prior authorization packet, case {case.case_id}",
    )
    return Letter(
        case,
        dose,
        regimen,
        template,
        letter_pdf,
        packet_pdf,
        [f.as_dict() for f in findings],
        evaluation,
        ledger.as_list(),
        draft,
    )


def _write_summary(folder: Path, summary: dict[str, Any]) -> bool:
    text = json.dumps(summary, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    return write_atomic(folder / SUMMARY_FILE, text.encode("utf-8"))


def _invalid(path: Path, case_id: str, errors: list[FieldError], out_dir: Path) -> CaseResult:
    folder = out_dir / case_id
    # An invalid case leaves only summary.json: PDFs from an earlier, valid version are stale.
    for name in (LETTER_FILE, PACKET_FILE):
        (folder / name).unlink(missing_ok=True)
    error_dicts = [e.as_dict() for e in errors]
    summary = {
        "case_id": case_id,
        "status": "invalid",
        "source": str(path),
        "errors": error_dicts,
        "warnings": [],
        "product": None,
        "inputs": None,
        "dosing": None,
        "documents": {},
    }
    written = _write_summary(folder, summary)
    return CaseResult(
        case_id, str(path), "invalid", error_dicts, [], int(written), case_sha256=sha256_file(path)
    )


def generate_case(
    path: Path,
    *,
    bench: Workbench,
    out_dir: Path,
    renewal: dict[str, Any] | None = None,
    accept_insufficient: bool = False,
) -> CaseResult:
    """One case file → DIR/<case_id>/{letter.pdf, packet.pdf, summary.json}, or an invalid summary.

    Status `ready`; `needs_info` when the payer criteria are insufficient (the PDFs are written,
    watermarked DRAFT, unless `accept_insufficient`: a coordinator's override); `invalid`.
    Re-running with the same input rewrites nothing (identical bytes are detected by hash).
    With `renewal` ({"auth_number", "auth_end"}) it writes a renewal request instead, into
    DIR/<case_id>/renewal-<auth_end>/.
    """
    data: dict[str, Any] | None = None
    try:
        data = parse_case_file(path)
        case = validate_case(data, catalog=bench.catalog, today=bench.today, case_dir=path.parent)
        if renewal:
            case = case.model_copy(
                # A renewal continues maintenance: the loading phase is not repeated.
                update={
                    "request": case.request.model_copy(update={"renewal": True, "loading": None})
                }
            )
        letter = build_letter(
            case, bench, path.parent, renewal, accept_insufficient=accept_insufficient
        )
    except (CaseFileError, CaseValidationError, AttachmentError) as exc:
        return _invalid(path, case_id_for(path, data), exc.errors, out_dir)
    except DosingError as exc:
        return _invalid(path, case_id_for(path, data), [FieldError("request", str(exc))], out_dir)

    folder = out_dir / case.case_id
    if renewal:
        folder = folder / f"renewal-{renewal['auth_end']}"
    written = write_atomic(folder / LETTER_FILE, letter.letter_pdf)
    crashpoint("after_letter_written")
    written += write_atomic(folder / PACKET_FILE, letter.packet_pdf)
    request = dose_request(case)
    status = "needs_info" if letter.draft else "ready"
    missing = (
        [i.id for i in letter.evaluation.insufficient] if letter.draft and letter.evaluation else []
    )
    summary = {
        "case_id": case.case_id,
        "status": status,
        "source": str(path),
        "errors": [],
        "warnings": letter.warnings,
        "indication": case.indication,
        "clinical_situation": case.clinical_situation,
        "payer_id": case.coverage.payer_id,
        "template": letter.template,
        "product": product_dict(bench.catalog.product(case.request.product_id)),
        "inputs": inputs_dict(request, case),
        "dosing": letter.regimen.as_dict(),
        "criteria": letter.evaluation.as_dict() if letter.evaluation else None,
        "claims": letter.claims,
        "documents": {
            "letter": {"file": LETTER_FILE, "sha256": sha256_bytes(letter.letter_pdf)},
            "packet": {"file": PACKET_FILE, "sha256": sha256_bytes(letter.packet_pdf)},
        },
    }
    written += _write_summary(folder, summary)
    return CaseResult(
        case.case_id,
        str(path),
        status,
        [],
        letter.warnings,
        written,
        missing=missing,
        case=case,
        summary=summary,
        case_sha256=sha256_file(path),
        folder=str(folder),
        renewal=bool(renewal),
    )


def document_records(result: CaseResult, home: Path) -> list[tuple[str, str, str]]:
    """(kind, path under `home`, sha256) for the letter and packet of a generated case, each kept
    as its own version file so every version stays downloadable after a regeneration."""
    assert result.summary is not None
    assert result.folder is not None
    records = []
    for kind in ("letter", "packet"):
        doc = result.summary["documents"][kind]
        kept = keep_version(Path(result.folder) / doc["file"], doc["sha256"])
        name = f"renewal_{kind}" if result.renewal else kind
        records.append((name, str(kept.resolve().relative_to(home.resolve())), doc["sha256"]))
    return records


def evaluate_case_file(
    path: Path, *, bench: Workbench
) -> tuple[list[FieldError], dict[str, Any] | None]:
    """Validation errors of a case file, or its payer-criteria checklist (no rendering)."""
    errors = check_case(path, bench=bench)
    if errors:
        return errors, None
    case = validate_case(
        parse_case_file(path), catalog=bench.catalog, today=bench.today, case_dir=None
    )
    try:
        dose = case_regimen(case, bench.catalog.product(case.request.product_id))
    except DosingError as exc:
        return [FieldError("request", str(exc))], None
    evaluation = case_evaluation(case, bench.catalog, dose, case.prepared_on or bench.today)
    return [], evaluation.as_dict() if evaluation else None


def check_case(path: Path, *, bench: Workbench) -> list[FieldError]:
    """Validation only (no rendering): every error of one case file, or []."""
    try:
        data = parse_case_file(path)
        case = validate_case(data, catalog=bench.catalog, today=bench.today, case_dir=None)
    except (CaseFileError, CaseValidationError) as exc:
        return exc.errors
    return cross_checks(case, bench.catalog, path.parent)


# ---- batches over worker processes -------------------------------------------------------

_BENCH: Workbench | None = None


def _init_worker(settings_json: str, today_iso: str) -> None:
    global _BENCH
    _BENCH = Workbench.build(
        Settings.model_validate_json(settings_json), date.fromisoformat(today_iso)
    )


def _generate_all(
    paths: Iterable[Path], bench: Workbench, out_dir: Path, keep_records: bool
) -> list[CaseResult]:
    results = (generate_case(p, bench=bench, out_dir=out_dir) for p in paths)
    return [r if keep_records else r.lean() for r in results]


def _run_chunk(paths: list[str], out_dir: str, keep_records: bool) -> list[CaseResult]:
    assert _BENCH is not None, "worker not initialised"
    return _generate_all(map(Path, paths), _BENCH, Path(out_dir), keep_records)


def chunked(items: list[Any], size: int) -> Iterator[list[Any]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class BatchRunner:
    """Long-lived render workers (one process each), fed chunks of case files.

    With `workers == 1` everything runs in this process. Workers start with `forkserver` so a
    threaded parent (Prefect's engine) is never forked mid-lock. Results are lean (IDs, statuses,
    errors) unless `keep_records` asks for the validated case and summary the tracking store needs.
    """

    def __init__(
        self, settings: Settings, *, today: date, out_dir: Path, keep_records: bool = False
    ) -> None:
        self.settings = settings
        self.today = today
        self.out_dir = out_dir
        self.keep_records = keep_records
        self._pool: Executor | None = None
        self._local: Workbench | None = None

    def __enter__(self) -> BatchRunner:
        if self.settings.workers > 1:
            context = multiprocessing.get_context("forkserver")
            context.set_forkserver_preload(["priorauth.pipeline", "simple_icd_10_cm"])
            self._pool = ProcessPoolExecutor(
                max_workers=self.settings.workers,
                mp_context=context,
                initializer=_init_worker,
                initargs=(self.settings.model_dump_json(), self.today.isoformat()),
            )
        else:
            self._local = Workbench.build(self.settings, self.today)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None

    def run_chunk(self, paths: list[Path]) -> list[CaseResult]:
        """Generate one chunk of cases (in one worker process) and wait for it."""
        if self._pool is None:
            assert self._local is not None, "use BatchRunner as a context manager"
            return _generate_all(paths, self._local, self.out_dir, self.keep_records)
        return self._submit(paths).result()

    def _submit(self, paths: list[Path]) -> Future[list[CaseResult]]:
        assert self._pool is not None
        return self._pool.submit(
            _run_chunk, [str(p) for p in paths], str(self.out_dir), self.keep_records
        )

    def run(
        self, paths: Iterable[Path], on_progress: Callable[[int], None] | None = None
    ) -> list[CaseResult]:
        """Every case, chunk by chunk over all workers, results in input order.

        `on_progress(cases_done)` is called as chunks finish (in any order)."""
        paths = list(paths)
        if self._pool is None:
            size = max(1, min(self.settings.chunk_size, 25))
            results: list[CaseResult] = []
            for chunk in chunked(paths, size):
                results += self.run_chunk(chunk)
                if on_progress:
                    on_progress(len(results))
            return results
        size = max(1, min(self.settings.chunk_size, -(-len(paths) // (self.settings.workers * 4))))
        futures = [self._submit(chunk) for chunk in chunked(paths, size)]
        if on_progress:
            done = 0
            for future in as_completed(futures):
                done += len(future.result())
                on_progress(done)
        return [result for future in futures for result in future.result()]
