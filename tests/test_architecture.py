"""The shape of the codebase: a plain core, documented settings, a published schema that is current."""

from __future__ import annotations

import ast
import json
from pathlib import Path

from priorauth.domain import case_json_schema
from priorauth.settings import Settings

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "src" / "priorauth"
EDGE_MODULES = {"cli.py"}  # edges may import the CLI library; the core may not
EDGE_PACKAGES = {"web"}  # the portal is an edge too (FastAPI)
FORBIDDEN = {"prefect", "click", "fastapi", "starlette"}


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
    return found


def test_core_never_imports_prefect_or_the_cli_library() -> None:
    offenders = {
        str(path.relative_to(ROOT)): sorted(_imports(path) & FORBIDDEN)
        for path in CORE.rglob("*.py")
        if path.name not in EDGE_MODULES
        and path.relative_to(CORE).parts[0] not in EDGE_PACKAGES
        and _imports(path) & FORBIDDEN
    }
    assert offenders == {}


def test_every_setting_is_documented_in_the_readme() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    missing = [
        f"PRIORAUTH_{name.upper()}"
        for name in Settings.model_fields
        if f"PRIORAUTH_{name.upper()}" not in readme
    ]
    assert missing == []


def test_published_json_schema_is_current() -> None:
    published = json.loads((ROOT / "docs" / "case.schema.json").read_text(encoding="utf-8"))
    assert published == case_json_schema(), "run: priorauth schema --out docs/case.schema.json"


def test_cli_commands_are_documented() -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for command in [
        "priorauth letter",
        "priorauth dose",
        "priorauth check",
        "priorauth schema",
        "priorauth nightly",
        "priorauth submit",
        "priorauth status",
        "priorauth cases",
        "priorauth db upgrade",
    ]:
        assert command in readme
