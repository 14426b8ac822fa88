"""alembic environment: runs on the connection the store hands over (store.upgrade)."""

from __future__ import annotations

from alembic import context

from priorauth.store import Base

connection = context.config.attributes.get("connection")
if connection is None:  # pragma: no cover - always called through priorauth.store.upgrade
    raise RuntimeError("run migrations with `priorauth db upgrade`")
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
