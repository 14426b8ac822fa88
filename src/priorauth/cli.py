"""The `priorauth` command: a thin shell over the core. Errors become one line and an exit code.

Exit codes: 0 all good; 1 some cases invalid (the valid ones were still written); 2 usage or
configuration error; 3 another nightly run holds the lock. A valid case whose payer criteria are insufficient (needs_info: a document
or fact is missing, the letter is a DRAFT) is not an error: it exits 0 and prints its checklist.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from priorauth.errors import PriorAuthError
from priorauth.letters.criteria import needs_documents as _needs_documents
from priorauth.progress import Progress
from priorauth.settings import Settings, load_settings

if TYPE_CHECKING:
    from priorauth.catalog import Product
    from priorauth.dosing import Dose, Regimen
    from priorauth.tracking import Actor


def run_date() -> date:
    """The letter date when a case gives none: SOURCE_DATE_EPOCH if set (reproducible), else today."""
    epoch = os.environ.get("SOURCE_DATE_EPOCH")
    if epoch:
        return datetime.fromtimestamp(int(epoch), tz=UTC).date()
    return date.today()


def _settings(**overrides: object) -> Settings:
    try:
        return load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except Exception as exc:  # pydantic ValidationError: a bad PRIORAUTH_* value
        raise click.UsageError(f"bad PRIORAUTH_* setting: {exc}") from None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="priorauth")
def main() -> None:
    """Prior-authorization documents for specialty pharmacy: letters, packets, dosing."""


@main.command()
@click.argument("case_files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(path_type=Path),
    help="Output folder; each case gets OUT/<case_id>/.",
)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=None,
    help="Render processes (default: PRIORAUTH_WORKERS or 2).",
)
def letter(case_files: tuple[Path, ...], out_dir: Path, workers: int | None) -> None:
    """Write letter.pdf, packet.pdf and summary.json for each CASE_FILE (or folder of them)."""
    from priorauth.intake import find_case_files
    from priorauth.pipeline import BatchRunner

    settings = _settings(workers=workers)
    paths = find_case_files(list(case_files))
    if not paths:
        raise click.UsageError("no case files found")
    settings = settings.model_copy(update={"workers": min(settings.workers, len(paths))})
    progress = Progress(len(paths))  # on a terminal only (standard error)
    try:
        with BatchRunner(settings, today=run_date(), out_dir=out_dir) as runner:
            results = runner.run(paths, on_progress=progress.update)
        progress.close()
    except PriorAuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    counts = {"ready": 0, "needs_info": 0, "invalid": 0}
    for result in results:
        folder = Path(result.folder) if result.folder else out_dir / result.case_id
        note = f" ({len(result.warnings)} warning(s))" if result.warnings else ""
        if result.status == "needs_info":
            counts["needs_info"] += 1
            missing = ", ".join(getattr(result, "missing", None) or []) or "see below"
            click.echo(
                f"needs_info {result.case_id} (payer criteria insufficient: {missing}; letter "
                f"and packet are DRAFTs){note} -> {folder}"
            )
        elif result.ok:
            counts["ready"] += 1
            click.echo(f"ready    {result.case_id}{note} -> {folder}")
        else:
            counts["invalid"] += 1
            click.echo(f"invalid  {result.case_id} ({result.source})")
            for error in result.errors:
                click.echo(f"         {error['field']}: {error['message']}")
            continue
        for line in checklist_lines(_written_criteria(folder)):
            click.echo(line)
    click.echo(
        f"{counts['ready']} ready, {counts['needs_info']} needs_info, {counts['invalid']} "
        f"invalid; output in {out_dir}"
    )
    sys.exit(1 if counts["invalid"] else 0)


def _written_criteria(folder: Path) -> dict[str, Any] | None:
    """The `criteria` of a case's summary.json (batch results carry no summary)."""
    try:
        return json.loads((folder / "summary.json").read_text(encoding="utf-8")).get("criteria")
    except (OSError, ValueError, AttributeError):
        return None


VERDICT_LABELS = {
    "met": "met",
    "not_met": "NOT MET",
    "insufficient": "INSUFFICIENT",
    "not_applicable": "n/a",
}


def checklist_lines(criteria: dict[str, Any] | None, indent: str = "         ") -> list[str]:
    """The payer criteria checklist as a coordinator reads it: the policy (id, version,
    effective date, phase) and its verdict, then each criterion's id, verdict and wording, and
    for an insufficient one the document request."""
    if not criteria:
        return []
    version = f" v{criteria['version']}" if criteria.get("version") is not None else ""
    head = (
        f"{indent}criteria {criteria.get('policy_id')}{version}, effective "
        f"{criteria.get('effective_date')} ({criteria.get('phase') or 'initial'}): "
        f"{VERDICT_LABELS.get(criteria.get('verdict'), criteria.get('verdict'))}"
    )
    if criteria.get("coverage") and criteria["coverage"] != "covered":
        head += f" [coverage: {criteria['coverage']}]"
    if criteria.get("override"):
        head += " [insufficient criteria accepted by a coordinator]"
    lines = [head]
    items = criteria.get("items") or []
    width = max([6, *(len(str(item.get("id", ""))) for item in items)])
    for item in items:
        verdict = VERDICT_LABELS.get(item.get("verdict"), item.get("verdict"))
        lines.append(
            f"{indent}  {item.get('id', ''):<{width}} {verdict:<12} {item.get('text', '')}"
        )
        if item.get("verdict") == "insufficient" and item.get("request"):
            lines.append(f"{indent}  {'':<{width}} {'':<12} request: {item['request']}")
    return lines


def _decimal(ctx: click.Context, param: click.Parameter, value: str | None) -> Decimal | None:
    if value is None:
        return None
    try:
        number = Decimal(value)
    except InvalidOperation:
        raise click.BadParameter(f"{value!r} is not a number") from None
    if not number.is_finite() or number <= 0:
        raise click.BadParameter("must be a number above 0")
    return number


@main.command()
@click.option("--product", required=True, help="Catalog slug, e.g. privigen, gamunex-c.")
@click.option("--weight-kg", required=True, callback=_decimal, help="Actual body weight, kg.")
@click.option("--height-cm", required=True, callback=_decimal, help="Height, cm.")
@click.option("--sex", required=True, type=click.Choice(["F", "M"]))
@click.option("--g-per-kg", required=True, callback=_decimal, help="Grams per kg per course.")
@click.option(
    "--days",
    default=1,
    show_default=True,
    type=click.IntRange(1, 30),
    help="Infusion days per course.",
)
@click.option(
    "--interval-days",
    type=click.IntRange(1, 365),
    default=None,
    help="Days between course starts (omit for a one-time course).",
)
@click.option(
    "--auth-days",
    default=180,
    show_default=True,
    type=click.IntRange(1, 366),
    help="Authorization period in days.",
)
@click.option(
    "--basis",
    default="policy",
    show_default=True,
    type=click.Choice(["actual", "ideal", "adjusted", "policy"]),
)
@click.option(
    "--loading-g-per-kg",
    callback=_decimal,
    default=None,
    help="Grams per kg per loading course: a loading phase before the regimen above, which is "
    "then the maintenance (its --interval-days is needed).",
)
@click.option(
    "--loading-days",
    default=1,
    show_default=True,
    type=click.IntRange(1, 30),
    help="Infusion days per loading course.",
)
@click.option(
    "--loading-courses",
    default=1,
    show_default=True,
    type=click.IntRange(1, 12),
    help="Number of loading courses.",
)
@click.option(
    "--loading-interval-days",
    type=click.IntRange(1, 365),
    default=None,
    help="Days between loading course starts (only with --loading-courses above 1).",
)
@click.option("--json", "as_json", is_flag=True, help="Print product, inputs and dosing as JSON.")
def dose(
    product: str,
    weight_kg: Decimal,
    height_cm: Decimal,
    sex: str,
    g_per_kg: Decimal,
    days: int,
    interval_days: int | None,
    auth_days: int,
    basis: str,
    loading_g_per_kg: Decimal | None,
    loading_days: int,
    loading_courses: int,
    loading_interval_days: int | None,
    as_json: bool,
) -> None:
    """The coordinator's dose calculator (the same engine as the letters).

    With --loading-g-per-kg, loading courses start on day 0 (then every
    --loading-interval-days) and maintenance starts --interval-days after the last one.
    """
    from priorauth.catalog import load_catalog
    from priorauth.dosing import DoseRequest, LoadingPhase, compute_regimen
    from priorauth.pipeline import inputs_dict, product_dict

    loading = None
    if loading_g_per_kg is not None:
        loading = LoadingPhase(
            g_per_kg_per_course=loading_g_per_kg,
            days_per_course=loading_days,
            courses=loading_courses,
            interval_days=loading_interval_days,
        )
    else:
        given = click.get_current_context().get_parameter_source
        for name in ("loading_days", "loading_courses", "loading_interval_days"):
            if given(name) == click.core.ParameterSource.COMMANDLINE:
                flag = "--" + name.replace("_", "-")
                raise click.UsageError(f"{flag} needs --loading-g-per-kg")

    settings = _settings()
    try:
        catalog = load_catalog(settings.reference_dir)
        item = catalog.product(product)
        request = DoseRequest(
            sex=sex,
            height_cm=height_cm,
            weight_kg=weight_kg,  # type: ignore[arg-type]
            g_per_kg_per_course=g_per_kg,
            days_per_course=days,
            interval_days=interval_days,
            authorization_days=auth_days,
            basis=basis,
        )  # type: ignore[arg-type]
        result = compute_regimen(request, item, loading)
    except PriorAuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        inputs = inputs_dict(request)
        if loading is not None:
            inputs["loading"] = loading.as_dict()
        payload = {
            "product": product_dict(item),
            "inputs": inputs,
            "dosing": result.as_dict(),
        }
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(format_regimen(item, result))


def format_regimen(product: Product, regimen: Regimen) -> str:
    """A regimen as a coordinator reads it: one dose, or each phase and the total."""
    if regimen.loading is None:
        return format_dose(product, regimen.maintenance)
    lines = [f"{product.name} ({product.hcpcs}, {product.billing_unit_mg} mg units)"]
    for phase, d in regimen.phases:
        first = regimen.maintenance_first_day if phase == "maintenance" else 0
        lines.append(f"  {phase} phase, first course on day {first}")
        lines += ["  " + line for line in _dose_lines(d)]
    lines.append(
        f"  total         {regimen.maintenance.authorization_days} days: "
        f"{regimen.total_billing_units_in_authorization} units"
    )
    return "\n".join(lines)


def format_dose(product: Product, d: Dose) -> str:
    """The dose as a coordinator reads it (weights to 0.1 kg, grams to 0.01 g)."""
    lines = [f"{product.name} ({product.hcpcs}, {product.billing_unit_mg} mg units)"]
    return "\n".join(lines + _dose_lines(d))


def _dose_lines(d: Dose) -> list[str]:
    from priorauth.letters.wording import BASIS_LABELS, fixed, frequency_text, grams, kg, vials_text

    lines = [
        f"  weights       actual {kg(d.actual_weight_kg)}, ideal {kg(d.ideal_weight_kg)}, "
        f"adjusted {kg(d.adjusted_weight_kg)}, BMI {fixed(d.bmi, 1)}",
        f"  dosing weight {kg(d.dosing_weight_kg)} ({BASIS_LABELS[d.weight_basis]}; "
        f"requested basis: {d.requested_basis})",
        f"  per day       calculated {grams(d.calculated_g_per_day)}, dispensed "
        f"{grams(d.dispensed_g_per_day)} ({vials_text(d.vials_per_day)})",
        f"  per course    {grams(d.dispensed_g_per_course)} = {d.billing_units_per_course} units "
        f"({frequency_text(d.interval_days, d.days_per_course)})",
        f"  authorization {d.authorization_days} days: {d.courses_in_authorization} course(s), "
        f"{d.billing_units_in_authorization} units",
    ]
    lines += [f"  warning       {w.code}: {w.message}" for w in d.warnings]
    return lines


@main.command()
@click.argument("case_files", nargs=-1, required=True, type=click.Path(path_type=Path))
def check(case_files: tuple[Path, ...]) -> None:
    """Validate case files without rendering; print every error as field: reason, and for a
    valid case the payer criteria checklist (needs_info: what is missing, as a document request).
    Exits 1 when a case is invalid; a needs_info case is valid (exit 0)."""
    from priorauth.intake import find_case_files
    from priorauth.pipeline import Workbench, evaluate_case_file

    bench = Workbench.build(_settings(), run_date())
    bad = 0
    for path in find_case_files(list(case_files)):
        errors, criteria = evaluate_case_file(path, bench=bench)
        if errors:
            label = "invalid"
        elif _needs_documents(criteria):
            label = "needs_info"
        else:
            label = "ok"
        click.echo(f"{label:<10} {path}")
        for error in errors:
            click.echo(f"           {error.field}: {error.message}")
        for line in checklist_lines(None if errors else criteria, indent="           "):
            click.echo(line)
        bad += bool(errors)
    sys.exit(1 if bad else 0)


@main.command()
@click.option(
    "--out",
    "out_file",
    type=click.Path(path_type=Path),
    default=None,
    help="Write to this file instead of standard output.",
)
@click.option(
    "--policy",
    is_flag=True,
    help="The payer policy file schema (reference/policies/*.yaml) instead of the case file's.",
)
def schema(out_file: Path | None, policy: bool) -> None:
    """Print the case file JSON Schema, or with --policy the payer policy file's (both generated
    from the models)."""
    from priorauth.domain import case_json_schema
    from priorauth.letters.policies import policy_json_schema

    made = policy_json_schema() if policy else case_json_schema()
    text = json.dumps(made, indent=2, ensure_ascii=False) + "\n"
    if out_file:
        out_file.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


# ---- tracking ----------------------------------------------------------------------------


def _coordinator(name: str | None) -> Actor:
    import getpass

    from priorauth.tracking import Actor

    return Actor(
        (name or os.environ.get("USER") or getpass.getuser())[:64], "coordinator", "coordinator"
    )


def _store(settings: Settings):  # type: ignore[no-untyped-def]
    from priorauth.store import Store

    return Store(settings.db_url)


def _now() -> datetime:
    return datetime.now(UTC)


@main.group()
def db() -> None:
    """The tracking database."""


@db.command("upgrade")
def db_upgrade() -> None:
    """Bring the database schema to the newest migration (also done on first use)."""
    from priorauth.store import Store, current_revision

    settings = _settings()
    store = Store(settings.db_url)
    click.echo(f"database at revision {current_revision(store.engine)}")


@main.command()
@click.argument("case_id")
@click.option("--method", required=True, type=click.Choice(["fax", "portal", "epa"]))
@click.option("--reference", default=None, help="The payer's reference or fax confirmation.")
@click.option("--actor", default=None, help="Who submitted (default: your user name).")
def submit(case_id: str, method: str, reference: str | None, actor: str | None) -> None:
    """Record that CASE_ID's packet was sent to the payer (starts the decision clock)."""
    from priorauth.catalog import load_catalog
    from priorauth.tracking import submit as record_submission

    settings = _settings()
    catalog = load_catalog(settings.reference_dir)
    store = _store(settings)
    try:
        with store.session() as session:
            sub = record_submission(
                session,
                case_id,
                method=method,
                reference=reference,
                actor=_coordinator(actor),
                now=_now(),
                catalog=catalog,
            )
            due = sub.due_by
    except PriorAuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"{case_id} submitted by {method}; decision due by {due:%Y-%m-%d %H:%M} UTC")
    _apply_pending(store, settings, catalog, case_id)


def _apply_pending(store, settings: Settings, catalog, case_id: str) -> None:  # type: ignore[no-untyped-def]
    """Payer responses that waited for this case (e.g. a denial faxed back before the
    submission was recorded) apply now, in the payer's decision-date order; the nightly run
    sends their notices."""
    from priorauth.nightly import apply_pending

    outcomes = apply_pending(store, catalog, settings, settings.home, _now(), case_id=case_id)
    if outcomes.get("applied"):
        click.echo(
            f"{case_id}: {outcomes['applied']} payer response(s) that arrived earlier applied "
            "now; `priorauth status` shows them"
        )


@main.command()
@click.argument("case_id")
@click.argument("new_status", required=False)
@click.option(
    "--reason-code", default=None, help="Denial reason code (DOMAIN.md §9) or payer code."
)
@click.option(
    "--reason",
    default=None,
    help="The payer's words; for needs_info -> ready (a criteria override) the coordinator's "
    "reason, required.",
)
@click.option("--reference", default=None, help="Authorization number or payer reference.")
@click.option("--auth-start", type=click.DateTime(["%Y-%m-%d"]), default=None)
@click.option("--auth-end", type=click.DateTime(["%Y-%m-%d"]), default=None)
@click.option("--auth-units", type=click.IntRange(0), default=None)
@click.option(
    "--decided-on",
    type=click.DateTime(["%Y-%m-%d"]),
    default=None,
    help="The date on the payer's decision (default: today); a denial's appeal window runs from it.",
)
@click.option("--actor", default=None, help="Who recorded it (default: your user name).")
@click.option("--json", "as_json", is_flag=True, help="Print {case_id, status, history} as JSON.")
def status(
    case_id: str,
    new_status: str | None,
    reason_code: str | None,
    reason: str | None,
    reference: str | None,
    auth_start: datetime | None,
    auth_end: datetime | None,
    auth_units: int | None,
    decided_on: datetime | None,
    actor: str | None,
    as_json: bool,
) -> None:
    """Show CASE_ID's status and history, or record NEW_STATUS (a payer decision).

    `ready` on a needs_info case is a criteria override: --reason is required; it is recorded
    (who, when, why) and the letter and packet are regenerated without the DRAFT watermark."""
    from priorauth.catalog import load_catalog
    from priorauth.tracking import case_view, get_case, set_status

    settings = _settings()
    store = _store(settings)
    try:
        current = None
        if new_status:
            with store.reader() as session:
                current = get_case(session, case_id).status
        if new_status == "ready" and current == "needs_info":
            _override(store, settings, case_id, reason, actor)
        elif new_status:
            catalog = load_catalog(settings.reference_dir)
            with store.session() as session:
                set_status(
                    session,
                    case_id,
                    new_status,
                    actor=_coordinator(actor),
                    now=_now(),
                    catalog=catalog,
                    settings=settings,
                    reason_code=reason_code,
                    reason_text=reason,
                    reference=reference,
                    auth_start=auth_start.date() if auth_start else None,
                    auth_end=auth_end.date() if auth_end else None,
                    auth_units=auth_units,
                    decided_on=decided_on.date() if decided_on else None,
                )
            _apply_pending(store, settings, catalog, case_id)
            _drain_outbox(store, settings)
        with store.session() as session:
            view = case_view(session, case_id)
    except PriorAuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(view, indent=2))
        return
    click.echo(
        f"{view['case_id']}: {view['status']}"
        + (" (OVERDUE)" if view["overdue"] else "")
        + (f", due by {view['due_by']}" if view["due_by"] else "")
        + (f", appeal by {view['appeal_deadline']}" if view["appeal_deadline"] else "")
        + (
            f", authorized units run out before the course on {runs_out}"
            if (runs_out := view["authorization"]["units_run_out_on"])
            else ""
        )
    )
    for h in view["history"]:
        why = " ".join(x for x in (h["payer_code"], h["reason_code"], h["reason"]) if x)
        click.echo(
            f"  {h['at'][:19]}  {h['from'] or '-':>18} -> {h['to']:<18} "
            f"{h['source']}:{h['actor']}  {why}"
        )
    for n in view["notifications"]:
        error = f"  last error: {n['last_error']}" if n["last_error"] else ""
        click.echo(
            f"  notice {n['event']} via {n['channel']}: {n['state']} "
            f"(attempts {n['attempts']}){error}"
        )
    for r in view["payer_responses"]:
        if r["outcome"] in ("rejection", "refused"):
            click.echo(f"  payer file {r['file']}: {r['outcome']}: {r['detail']}")
    if view["letter_status"] == "needs_info" and view["status"] != "needs_info":
        click.echo(
            f"  warning: the current case file's payer criteria are insufficient "
            f"({', '.join(view['missing'])}); its letter is a DRAFT"
        )
    for line in checklist_lines(view["criteria"], indent="  "):
        click.echo(line)


def _override(
    store,  # type: ignore[no-untyped-def]
    settings: Settings,
    case_id: str,
    reason: str | None,
    actor: str | None,
) -> None:
    """needs_info → ready by a coordinator: the reason is required; the letter and packet are
    regenerated without the DRAFT watermark (a new document version) and the move audited."""
    from priorauth.nightly import regenerate_case
    from priorauth.pipeline import Workbench

    if not (reason or "").strip():
        from priorauth.tracking import case_view

        with store.reader() as session:
            missing = ", ".join(case_view(session, case_id)["missing"]) or "see the checklist"
        click.echo(
            f"error: {case_id} needs information (payer criteria insufficient: {missing}); "
            "moving it to ready overrides those criteria and makes its letter final. Say why "
            'with --reason "…" (recorded in the history and audit log), or add what is missing '
            "to the case file and let the nightly run evaluate it again.",
            err=True,
        )
        sys.exit(2)
    bench = Workbench.build(settings, run_date())
    result = regenerate_case(
        store,
        bench,
        settings.home,
        case_id,
        actor=_coordinator(actor),
        now=_now(),
        override_reason=reason,
    )
    if not result.ok:
        click.echo(f"error: the case file of {case_id} no longer validates:", err=True)
        for error in result.errors:
            click.echo(f"  {error['field']}: {error['message']}", err=True)
        sys.exit(2)
    click.echo(f"{case_id}: needs_info -> ready (criteria override); letter regenerated as final")


def _drain_outbox(store, settings: Settings) -> None:  # type: ignore[no-untyped-def]
    """Send queued notices now (the nightly run retries any that fail)."""
    from priorauth.nightly import NightReport, send_notifications

    report = NightReport()
    send_notifications(store, settings, _now(), report, _now)
    if report.notices_failed:
        click.echo(
            f"warning: {report.notices_failed} notification(s) failed; "
            "the nightly run retries them",
            err=True,
        )


@main.command()
@click.option("--status", "status_filter", default=None, help="Only cases with this status.")
@click.option("--json", "as_json", is_flag=True)
def cases(status_filter: str | None, as_json: bool) -> None:
    """List tracked cases."""
    from priorauth.tracking import list_cases, pending_view

    settings = _settings()
    with _store(settings).session() as session:
        rows = list_cases(session, status=status_filter)
        unmatched = [p for p in pending_view(session) if not p["case_id"]]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for r in rows:
        flag = " OVERDUE" if r["overdue"] else ""
        if r.get("missing"):
            flag += f" missing: {', '.join(r['missing'])}"
        if r.get("rejection"):
            flag += f" REJECTED by payer (correct and resend): {r['rejection']}"
        for why in r.get("pending_responses") or []:
            flag += f" PAYER RESPONSE WAITING: {why}"
        click.echo(
            f"{r['case_id']:<24} {r['status']:<20} {r['payer_id']:<32} {r['product_id']:<18}{flag}"
        )
    click.echo(f"{len(rows)} case(s)")
    if unmatched:
        click.echo(f"{len(unmatched)} payer response(s) match no case yet (kept, retried):")
        for item in unmatched:
            click.echo(
                f"  #{item['id']} {item['file']} (decided {item['decision_date'] or '?'}): "
                f"{item['reason']}; `priorauth responses dismiss {item['id']} --reason …` "
                "closes it"
            )


@main.command()
@click.option(
    "--since",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="First day of the period (default: 365 days before --until).",
)
@click.option(
    "--until",
    type=click.DateTime(formats=["%Y-%m-%d"]),
    default=None,
    help="Day after the period (default: tomorrow, UTC).",
)
@click.option("--json", "as_json", is_flag=True, help="Every figure, overall and per payer.")
def metrics(since: datetime | None, until: datetime | None, as_json: bool) -> None:
    """Prior-authorization metrics for a period: CMS-0057-F (share approved, denied, approved
    after appeal; mean and median decision time, standard and expedited), first-pass approval,
    denials by reason, appeal overturns, days to approval, renewals before expiry."""
    from datetime import timedelta

    from priorauth.metrics import report

    end = until.date() if until else datetime.now(UTC).date() + timedelta(days=1)
    start = since.date() if since else end - timedelta(days=365)
    settings = _settings()
    with _store(settings).reader() as session:
        data = report(session, since=start, until=end)
    if as_json:
        click.echo(json.dumps(data, indent=2))
        return
    rows = [("overall", data["overall"]), *data["payers"].items()]

    def show(value: object, unit: str = "") -> str:
        return "—" if value is None else f"{value}{unit}"

    click.echo(f"period {start} to {end} (first determinations; CMS-0057-F definitions)")
    click.echo(
        f"{'payer':<32} {'decided':>7} {'approved':>9} {'denied':>7} {'after appeal':>12} "
        f"{'std h (mean/median)':>20} {'exp h (mean/median)':>20} {'first pass':>10}"
    )
    for name, f in rows:
        click.echo(
            f"{name:<32} {f['requests_decided']:>7} {show(f['approved_pct'], '%'):>9} "
            f"{show(f['denied_pct'], '%'):>7} {show(f['approved_after_appeal_pct'], '%'):>12} "
            f"{show(f['decision_hours_standard_mean']) + ' / ' + show(f['decision_hours_standard_median']):>20} "
            f"{show(f['decision_hours_expedited_mean']) + ' / ' + show(f['decision_hours_expedited_median']):>20} "
            f"{show(f['first_pass_approval_pct'], '%'):>10}"
        )
    overall = data["overall"]
    reasons = ", ".join(f"{k} {v}" for k, v in overall["denials_by_reason"].items()) or "none"
    click.echo(f"denials by reason: {reasons}")
    click.echo(
        f"appeals: {overall['appeals']}, overturned {show(overall['appeal_overturn_pct'], '%')}; "
        f"median days from case received to approval: "
        f"{show(overall['days_received_to_approval_median'])}; renewals drafted before expiry: "
        f"{show(overall['renewals_drafted_before_expiry_pct'], '%')} of {overall['renewals_due']}"
    )


@main.command("intake")
@click.argument("case_files", nargs=-1, required=True, type=click.Path(path_type=Path))
def intake_cmd(case_files: tuple[Path, ...]) -> None:
    """Copy case files (or folders of them), with their attachments, into $PRIORAUTH_HOME/intake
    for the next nightly run. Attachments keep their path relative to the case file."""
    import shutil

    import yaml

    from priorauth.intake import find_case_files

    settings = _settings()
    intake = settings.folder("intake")
    intake.mkdir(parents=True, exist_ok=True)
    copied = 0
    for path in find_case_files(list(case_files)):
        try:
            data = yaml.safe_load(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, yaml.YAMLError):
            data = None  # the nightly run sets it aside with the reason
        attachments = data.get("attachments", []) if isinstance(data, dict) else []
        for item in attachments if isinstance(attachments, list) else []:
            relative = item.get("path") if isinstance(item, dict) else None
            if not isinstance(relative, str) or Path(relative).is_absolute():
                continue
            source = (path.parent / relative).resolve()
            target = (intake / relative).resolve()
            if source.is_file() and target.is_relative_to(settings.home.resolve()):
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(source, target)
        shutil.copyfile(path, intake / path.name)
        copied += 1
    click.echo(f"{copied} case file(s) copied to {intake}; run `priorauth nightly` to process them")


@main.command("nightly")
@click.option(
    "--prefect/--no-prefect",
    "use_prefect",
    default=None,
    help="Run as a Prefect flow run (default: yes when there is work; a quiet night runs the "
    "deadline checks without starting Prefect).",
)
def nightly_cmd(use_prefect: bool | None) -> None:
    """Run the nightly flow once, now, as a real Prefect flow run.

    One run at a time: a second one exits 3 saying which run holds the lock. Exits 1 when
    notices failed or payer responses have been pending too long (the work is still done)."""
    from priorauth import runguard

    settings = _settings()
    runguard.guard_children(settings.home)  # kill -9 of this process ends its children too
    from priorauth.nightly import NightFailed, has_work, raise_for_failures, run_night
    from priorauth.store import Store

    store = Store(settings.db_url)
    try:
        busy = runguard.lock_holder(store)
    finally:
        store.dispose()
    if busy:
        click.echo(f"error: {busy}", err=True)
        sys.exit(3)
    if use_prefect is None:
        use_prefect = bool(os.environ.get("PREFECT_API_URL")) or has_work(settings)
        if not use_prefect:
            click.echo(
                "quiet night: no new case or payer files, no notices to send, no pending payer "
                "responses; running the deadline checks without Prefect (a flow run would first "
                "start a temporary Prefect server, about 5-15 s). Use --prefect to record one.",
                err=True,
            )
    try:
        if use_prefect:
            summary = _load_flow("nightly").nightly_run()
        else:
            bar: dict[str, Progress] = {}

            def progress(done: int, total: int) -> None:  # on a terminal only
                bar.setdefault("line", Progress(total, what="new cases")).update(done)

            report = run_night(settings, _now(), on_progress=progress)
            if "line" in bar:
                bar["line"].close()
            summary = report.summary()
            click.echo(json.dumps(summary, indent=2))
            raise_for_failures(report)
    except runguard.NightAlreadyRunning as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(3)
    except NightFailed as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
    except PriorAuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if use_prefect:
        click.echo(json.dumps(summary, indent=2))


@main.group()
def responses() -> None:
    """Payer responses kept pending (they could not be applied yet)."""


@responses.command("list")
@click.option("--json", "as_json", is_flag=True)
def responses_list(as_json: bool) -> None:
    """Pending payer responses: ID, case, file, the payer's decision date, why they wait."""
    from priorauth.tracking import pending_view

    settings = _settings()
    with _store(settings).reader() as session:
        items = pending_view(session)
    if as_json:
        click.echo(json.dumps(items, indent=2))
        return
    for item in items:
        click.echo(
            f"#{item['id']:<5} {item['case_id'] or '(no case)':<24} {item['file']} "
            f"decided {item['decision_date'] or '?'}: {item['reason']}"
        )
    click.echo(f"{len(items)} pending payer response(s)")


@responses.command("dismiss")
@click.argument("response_id", type=int)
@click.option("--reason", required=True, help="Why it will never apply (recorded and audited).")
@click.option("--actor", default=None, help="Who (default: your user name).")
def responses_dismiss(response_id: int, reason: str, actor: str | None) -> None:
    """Close a pending payer response that will never apply; it and its file stay on record."""
    from priorauth.tracking import dismiss_response

    settings = _settings()
    try:
        with _store(settings).session() as session:
            dismiss_response(
                session, response_id, reason=reason, actor=_coordinator(actor), now=_now()
            )
    except PriorAuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(f"payer response #{response_id} dismissed")


# ---- the portal ----------------------------------------------------------------------------


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--workers",
    default=1,
    show_default=True,
    type=click.IntRange(1, 32),
    help="Server processes; sessions, lockouts and the audit log live in the store, so any "
    "process can serve any request (one per core is a good start).",
)
@click.option(
    "--certfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="Serve HTTPS with this PEM certificate (chain); cookies are then Secure, plus HSTS.",
)
@click.option(
    "--keyfile",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="The certificate's private key (PEM).",
)
@click.option(
    "--forwarded-allow-ips",
    default=None,
    help="Behind a TLS reverse proxy: the proxy's addresses (comma-separated IPs or networks). "
    "X-Forwarded-Proto/-For are believed from these addresses only; never '*'.",
)
def serve(
    host: str,
    port: int,
    workers: int,
    certfile: Path | None,
    keyfile: Path | None,
    forwarded_allow_ips: str | None,
) -> None:
    """Run the staff portal (sign in with an account from `priorauth users add`)."""
    import contextlib
    import ipaddress
    import socket

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from priorauth.store import Store
    from priorauth.web.app import create_app

    if bool(certfile) != bool(keyfile):
        raise click.UsageError("--certfile and --keyfile go together")
    proxies = []
    for proxy in filter(None, (p.strip() for p in (forwarded_allow_ips or "").split(","))):
        try:
            network = ipaddress.ip_network(proxy, strict=False)
        except ValueError:
            raise click.UsageError(
                f"--forwarded-allow-ips: {proxy!r} is not an IP address or network"
            ) from None
        proxies.append(str(network) if "/" in proxy else str(network.network_address))
    try:
        loopback = ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = host == "localhost"
    if not loopback and not certfile and not proxies:
        click.echo(
            f"WARNING: serving plain HTTP on {host}, a non-loopback address: passwords, session "
            "cookies and patient data cross the network unencrypted. Use --certfile/--keyfile, "
            "or a TLS reverse proxy with --forwarded-allow-ips (docs/deployment.md).",
            err=True,
        )
    settings = _settings()
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "proxy_headers": bool(proxies),
        "server_header": False,
        "log_level": "info",
    }
    if proxies:
        options["forwarded_allow_ips"] = ",".join(proxies)
    if certfile:
        options["ssl_certfile"] = str(certfile)
        options["ssl_keyfile"] = str(keyfile)
    if workers == 1:
        uvicorn.run(create_app(settings), **options)
        return
    # Before the processes start: migrate the store and make the session-signing key once, so
    # they do not race to do it; each process then builds the app from the same environment.
    Store(settings.db_url).dispose()
    settings.signing_key()
    config = uvicorn.Config(
        "priorauth.web.app:create_app", factory=True, workers=workers, **options
    )
    listener = config.bind_socket()
    # uvicorn makes the shared socket without naming TCP, so asyncio leaves Nagle on for the
    # connections it accepts and a page sent in two writes waits ~40 ms for a delayed ACK
    # (measured: queue page 14 ms with one process, 56 ms with two). Linux hands the listening
    # socket's TCP_NODELAY on to every accepted connection.
    listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    with contextlib.suppress(KeyboardInterrupt):  # uvicorn.run does the same
        Multiprocess(config, sockets=[listener]).run()


@main.group()
def users() -> None:
    """Portal accounts (admin)."""


def _password(password_stdin: bool) -> str:
    if password_stdin:
        return sys.stdin.readline().rstrip("\n")
    return click.prompt("Password", hide_input=True, confirmation_prompt=True)


@users.command("add")
@click.argument("username")
@click.option("--role", required=True, type=click.Choice(["pharmacist", "coordinator", "admin"]))
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_add(username: str, role: str, password_stdin: bool) -> None:
    """Create an account."""
    from priorauth.accounts import add_user

    password = _password(password_stdin)
    _account_change(
        lambda s: add_user(s, username, password, role, _now()), f"user {username} added as {role}"
    )


@users.command("disable")
@click.argument("username")
def users_disable(username: str) -> None:
    """Disable an account and end its sessions."""
    from priorauth.accounts import set_disabled

    _account_change(lambda s: set_disabled(s, username, True), f"user {username} disabled")


@users.command("enable")
@click.argument("username")
def users_enable(username: str) -> None:
    """Enable a disabled account."""
    from priorauth.accounts import set_disabled

    _account_change(lambda s: set_disabled(s, username, False), f"user {username} enabled")


@users.command("reset-password")
@click.argument("username")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
def users_reset(username: str, password_stdin: bool) -> None:
    """Set a new password (clears a lockout, ends the user's sessions)."""
    from priorauth.accounts import reset_password

    password = _password(password_stdin)
    _account_change(
        lambda s: reset_password(s, username, password, _now()), f"password of {username} reset"
    )


@users.command("unlock")
@click.argument("username")
def users_unlock(username: str) -> None:
    """End the sign-in locks of an account (from every address) at once."""
    from priorauth.accounts import unlock

    _account_change(lambda s: unlock(s, username, _now()), f"user {username} unlocked")


@users.command("list")
def users_list() -> None:
    """Every account with its role and state."""
    from sqlalchemy import select

    from priorauth.store import UserRow

    with _store(_settings()).session() as session:
        for user in session.scalars(select(UserRow).order_by(UserRow.username)):
            state = "disabled" if user.disabled else "active"
            click.echo(f"{user.username:<24} {user.role:<12} {state}")


def _account_change(change, done: str) -> None:  # type: ignore[no-untyped-def]
    from priorauth.tracking import Actor, audit

    settings = _settings()
    try:
        with _store(settings).session() as session:
            change(session)
            audit(
                session,
                Actor("cli", "coordinator", "admin"),
                "account_change",
                "ok",
                _now(),
                detail=done,
            )
    except PriorAuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    click.echo(done)


def _load_flow(name: str):  # type: ignore[no-untyped-def]
    """Import flows/<name>.py from the repository (flows are not part of the installed core)."""
    import importlib.util

    from priorauth.settings import REPO_ROOT

    path = REPO_ROOT / "flows" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"priorauth_flows_{name}", path)
    if spec is None or spec.loader is None:
        raise click.ClickException(f"cannot load {path}")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


if __name__ == "__main__":  # pragma: no cover
    main()
