"""portal: sign-in throttle, a server-side flash message per session, audit log refuses TRUNCATE

Failed sign-ins are counted per client address and per (username, address) in
`sign_in_throttle`; a session row carries the code of a one-time message for the next page (no
message text travels in a URL); on PostgreSQL a statement trigger refuses TRUNCATE of the audit
log (the row triggers of 0001 refuse UPDATE and DELETE; SQLite has no TRUNCATE).

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 16:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "sign_in_throttle",
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("window_start", sa.DateTime(timezone=True), nullable=False),
        sa.Column("locked_until", sa.DateTime(timezone=True), nullable=True),
        sa.Column("locks", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_index("ix_sign_in_throttle_updated_at", "sign_in_throttle", ["updated_at"])
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("flash", sa.String(length=32), nullable=True))
    if op.get_bind().dialect.name == "postgresql":
        # audit_log_append_only() (0001) raises; as a statement trigger it refuses TRUNCATE.
        op.execute(
            "CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log "
            "FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only()"
        )


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP TRIGGER IF EXISTS audit_log_no_truncate ON audit_log")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_column("flash")
    op.drop_index("ix_sign_in_throttle_updated_at", table_name="sign_in_throttle")
    op.drop_table("sign_in_throttle")
