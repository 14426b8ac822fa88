"""work-queue indexes: each filter reads its page in index order

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-25 11:50:00
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

INDEXES = {
    "ix_cases_updated_case": ["updated_at", "case_id"],
    "ix_cases_status_updated_case": ["status", "updated_at", "case_id"],
    "ix_cases_payer_updated_case": ["payer_id", "updated_at", "case_id"],
    "ix_cases_status_due_by": ["status", "due_by"],
    "ix_cases_status_auth_end": ["status", "auth_end"],
}


def upgrade() -> None:
    for name, columns in INDEXES.items():
        op.create_index(name, "cases", columns)


def downgrade() -> None:
    for name in INDEXES:
        op.drop_index(name, table_name="cases")
