"""pending payer responses, notices without a case, the nightly run lock, wider member IDs

Responses that cannot be applied yet stay in the payer-response ledger as `pending` (with the
kept file, the response's position in it and the payer's decision date) and are retried; a
notice about a response for an unknown case has no case ID; one row per named lock is the
nightly run's lease on SQLite (PostgreSQL uses an advisory lock); member IDs take 80 characters.

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-26 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payer_responses", schema=None) as batch_op:
        batch_op.add_column(sa.Column("stored_file", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("response_index", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("decision_date", sa.Date(), nullable=True))
        batch_op.add_column(sa.Column("attempts", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("resolved_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.create_index("ix_payer_responses_outcome", ["outcome"], unique=False)

    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.alter_column("case_id", existing_type=sa.String(length=64), nullable=True)

    op.create_table(
        "run_locks",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=200), nullable=False),
        sa.Column("acquired_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("renewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )

    # SQLite does not enforce VARCHAR lengths (and rebuilding `cases`, which other tables
    # reference, is not worth it there); PostgreSQL does.
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column(
            "cases", "member_id", existing_type=sa.String(length=64), type_=sa.String(length=80)
        )


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        op.alter_column(
            "cases", "member_id", existing_type=sa.String(length=80), type_=sa.String(length=64)
        )
    op.drop_table("run_locks")
    with op.batch_alter_table("notifications", schema=None) as batch_op:
        batch_op.alter_column("case_id", existing_type=sa.String(length=64), nullable=False)
    with op.batch_alter_table("payer_responses", schema=None) as batch_op:
        batch_op.drop_index("ix_payer_responses_outcome")
        batch_op.drop_column("resolved_at")
        batch_op.drop_column("attempts")
        batch_op.drop_column("decision_date")
        batch_op.drop_column("response_index")
        batch_op.drop_column("stored_file")
