"""Settings: one object, read from `PRIORAUTH_*` environment variables at the edges and passed down.

Nothing here is read at import time; `load_settings()` is called by the CLI, the flows and tests.
"""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

REPO_ROOT = Path(__file__).resolve().parents[2]


class Settings(BaseSettings):
    """Every setting the pipeline reads; each one is documented in the README."""

    model_config = SettingsConfigDict(env_prefix="PRIORAUTH_", extra="ignore")

    home: Path = Field(Path("var"), description="Data folder: generated letters, intake, database.")
    reference_dir: Path = Field(
        REPO_ROOT / "reference", description="Products, payers, indications and letterhead files."
    )
    templates_dir: Path = Field(
        REPO_ROOT / "templates", description="jinja2 templates (letters/ and portal/)."
    )
    workers: int = Field(2, ge=1, le=64, description="Render processes for batches.")
    chunk_size: int = Field(50, ge=1, le=1000, description="Cases per Prefect task.")
    max_attachment_mb: int = Field(25, ge=1, description="Largest attachment accepted, in MiB.")
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite file $PRIORAUTH_HOME/priorauth.sqlite3."
    )
    notify_urls: str = Field("", description="Comma-separated apprise URLs for denial notices.")
    portal_url: str = Field(
        "http://127.0.0.1:8000", description="Base URL of the staff portal, for links in notices."
    )

    pending_response_max_age_hours: int = Field(
        72,
        ge=1,
        description="A payer response still pending after this many hours fails the night.",
    )
    prefect_startup_timeout_s: int = Field(
        120,
        ge=10,
        description="How long the temporary Prefect server may take to start (Prefect: 20 s).",
    )

    secret_key: str | None = Field(
        None,
        description="Signs portal cookies; default: a random key kept in $PRIORAUTH_HOME/secret_key.",
    )

    @property
    def db_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.home / 'priorauth.sqlite3').resolve()}"

    def signing_key(self) -> str:
        """PRIORAUTH_SECRET_KEY, else a random key created once (mode 0600) under PRIORAUTH_HOME."""
        if self.secret_key:
            return self.secret_key
        import os
        import secrets

        path = self.home / "secret_key"
        if not path.exists():
            self.home.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:  # another process made it first
                pass
            else:
                with os.fdopen(fd, "w") as handle:
                    handle.write(secrets.token_urlsafe(48))
        return path.read_text().strip()

    def folder(self, name: str) -> Path:
        """A folder under PRIORAUTH_HOME (intake, responses, quarantine, letters, cases)."""
        return self.home / name


def load_settings(**overrides: object) -> Settings:
    """Build the settings from the environment, with explicit overrides winning."""
    return Settings(**overrides)  # type: ignore[arg-type]


def prefect_environment(settings: Settings | None = None) -> None:
    """Environment Prefect reads when it starts, for the flows (call before importing prefect):
    no usage telemetry from a system that handles PHI (this network has no route out anyway),
    and the temporary server's start limit (Prefect's default, 20 s, fails first nights and the
    README's first command on a loaded machine). Values already set win."""
    settings = settings or load_settings()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault(
        "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", str(settings.prefect_startup_timeout_s)
    )
