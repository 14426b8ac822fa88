"""Shared test fixtures: a scrubbed environment, the reference catalog, a case factory.

Unit tests run with no Prefect engine at all (an accidental engine call fails fast); only
tests marked `flow` start the one session-wide Prefect test server (tests/test_flow.py).
"""

from __future__ import annotations

import copy
import os
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml

from priorauth.catalog import Catalog, load_catalog
from priorauth.pipeline import Workbench
from priorauth.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "fixtures"
CASES = FIXTURES / "cases"
INVALID = FIXTURES / "invalid"
ATTACHMENTS = FIXTURES / "attachments"
TODAY = date(2026, 11, 25)
BASE_CASE = CASES / "ms-dmt-failure-privigen.yaml"
# The machine-readable `dosing` keys of DOMAIN.md §5, plus the basis the prescriber asked for.
DOSING_KEYS = {
    "weight_basis",
    "requested_basis",
    "actual_weight_kg",
    "ideal_weight_kg",
    "adjusted_weight_kg",
    "bmi",
    "dosing_weight_kg",
    "g_per_kg_per_course",
    "days_per_course",
    "calculated_g_per_day",
    "dispensed_g_per_day",
    "vials_per_day",
    "dispensed_g_per_course",
    "billing_units_per_course",
    "interval_days",
    "authorization_days",
    "courses_in_authorization",
    "billing_units_in_authorization",
    "warnings",
}


# CI points PRIORAUTH_DATABASE_URL at a PostgreSQL server; tests that need one read it here,
# then make a database of their own on that server.
# (kept under another name so xdist workers, which inherit the scrubbed environment, see it too)
PG_URL = os.environ.get("PRIORAUTH_DATABASE_URL") or os.environ.get("_PRIORAUTH_TEST_PG_URL", "")
PG_URL = PG_URL if PG_URL.startswith("postgresql") else ""
os.environ["_PRIORAUTH_TEST_PG_URL"] = PG_URL

# A developer's own settings must never change results.
for name in list(os.environ):
    if name.startswith("PRIORAUTH_") or name in {"PREFECT_API_URL", "SOURCE_DATE_EPOCH"}:
        del os.environ[name]
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return load_catalog(ROOT / "reference")


@pytest.fixture(scope="session")
def bench() -> Workbench:
    return Workbench.build(load_settings(workers=1), TODAY)


def base_case_data() -> dict[str, Any]:
    return yaml.safe_load(BASE_CASE.read_text(encoding="utf-8"))


def make_case(**overrides: Any) -> dict[str, Any]:
    """The base MS case as a mapping, with dotted-path overrides: make_case(**{"patient.sex": "M"}).

    A value of `...` deletes the field.
    """
    data = copy.deepcopy(base_case_data())
    for dotted, value in overrides.items():
        target = data
        *parents, last = dotted.split(".")
        for part in parents:
            target = target[int(part)] if isinstance(target, list) else target[part]
        if value is ...:
            del target[int(last) if isinstance(target, list) else last]
        elif isinstance(target, list):
            target[int(last)] = value
        else:
            target[last] = value
    return data


@pytest.fixture
def write_case(tmp_path: Path):
    """Write a case mapping to TMP/cases/<name>.yaml beside a copy of the fixture attachments
    (TMP/attachments/, which the cases' ../attachments/ paths reach) and return its path."""
    import shutil

    shutil.copytree(ATTACHMENTS, tmp_path / "attachments", dirs_exist_ok=True)
    (tmp_path / "cases").mkdir(exist_ok=True)

    def write(data: dict[str, Any], name: str | None = None) -> Path:
        path = tmp_path / "cases" / (name or f"{data.get('case_id', 'case')}.yaml")
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    return write


def _fresh_pg_database(base_url: str) -> tuple[str, callable]:
    """A new, empty database on the server of `base_url`; returns its URL and a dropper."""
    import uuid

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    name = f"priorauth_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(base_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.exec_driver_sql(f'CREATE DATABASE "{name}"')
    url = make_url(base_url).set(database=name).render_as_string(hide_password=False)

    def drop() -> None:
        with admin.connect() as conn:
            conn.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return url, drop


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> Any:
    """A fresh, empty tracking database: SQLite always, PostgreSQL when CI configures one."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'priorauth.sqlite3'}"
        return
    if not PG_URL:
        pytest.skip(
            "PostgreSQL not configured: set PRIORAUTH_DATABASE_URL=postgresql+psycopg://… (CI does)"
        )
    url, drop = _fresh_pg_database(PG_URL)
    try:
        yield url
    finally:
        drop()
