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
    data = yaml.safe_load(BASE_CASE.read_text(encoding="utf-8"))
    for attachment in data.get("attachments", []):  # make paths absolute: tests move case files
        attachment["path"] = str((CASES / attachment["path"]).resolve())
    return data


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
    """Write a case mapping to a YAML file in a temp folder and return its path."""

    def write(data: dict[str, Any], name: str | None = None) -> Path:
        path = tmp_path / (name or f"{data.get('case_id', 'case')}.yaml")
        path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")
        return path

    return write
