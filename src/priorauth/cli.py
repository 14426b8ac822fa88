"""The `priorauth` command: a thin shell over the core. Errors become one line and an exit code.

Exit codes: 0 all good; 1 some cases invalid (the valid ones were still written); 2 usage or
configuration error.
"""

from __future__ import annotations

import json
import os
import sys
from datetime import UTC, date, datetime
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import TYPE_CHECKING

import click

from priorauth.errors import PriorAuthError
from priorauth.settings import Settings, load_settings

if TYPE_CHECKING:
    from priorauth.catalog import Product
    from priorauth.dosing import Dose


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
    try:
        with BatchRunner(settings, today=run_date(), out_dir=out_dir) as runner:
            results = runner.run(paths)
    except PriorAuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    invalid = 0
    for result in results:
        if result.ok:
            note = f" ({len(result.warnings)} warning(s))" if result.warnings else ""
            click.echo(f"ready    {result.case_id}{note} -> {out_dir / result.case_id}")
        else:
            invalid += 1
            click.echo(f"invalid  {result.case_id} ({result.source})")
            for error in result.errors:
                click.echo(f"         {error['field']}: {error['message']}")
    click.echo(f"{len(results) - invalid} ready, {invalid} invalid; output in {out_dir}")
    sys.exit(1 if invalid else 0)


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
    as_json: bool,
) -> None:
    """The coordinator's dose calculator (the same engine as the letters)."""
    from priorauth.catalog import load_catalog
    from priorauth.dosing import DoseRequest, compute_dose
    from priorauth.pipeline import inputs_dict, product_dict

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
        result = compute_dose(request, item)
    except PriorAuthError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    if as_json:
        payload = {
            "product": product_dict(item),
            "inputs": inputs_dict(request),
            "dosing": result.as_dict(),
        }
        click.echo(json.dumps(payload, indent=2))
        return
    click.echo(format_dose(item, result))


def format_dose(product: Product, d: Dose) -> str:
    """The dose as a coordinator reads it (weights to 0.1 kg, grams to 0.01 g)."""
    from priorauth.documents import BASIS_LABELS, fixed, frequency_text, grams, kg, vials_text

    lines = [
        f"{product.name} ({product.hcpcs}, {product.billing_unit_mg} mg units)",
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
    return "\n".join(lines)


@main.command()
@click.argument("case_files", nargs=-1, required=True, type=click.Path(path_type=Path))
def check(case_files: tuple[Path, ...]) -> None:
    """Validate case files without rendering; print every error as field: reason."""
    from priorauth.intake import find_case_files
    from priorauth.pipeline import Workbench, check_case

    bench = Workbench.build(_settings(), run_date())
    bad = 0
    for path in find_case_files(list(case_files)):
        errors = check_case(path, bench=bench)
        click.echo(f"{'ok     ' if not errors else 'invalid'}  {path}")
        for error in errors:
            click.echo(f"         {error.field}: {error.message}")
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
def schema(out_file: Path | None) -> None:
    """Print the case file JSON Schema (generated from the models)."""
    from priorauth.domain import case_json_schema

    text = json.dumps(case_json_schema(), indent=2, ensure_ascii=False) + "\n"
    if out_file:
        out_file.write_text(text, encoding="utf-8")
    else:
        click.echo(text, nl=False)


if __name__ == "__main__":  # pragma: no cover
    main()
