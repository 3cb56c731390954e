"""payments: what each claim was for, and results kept for re-delivery

Revision ID: 0008_redelivery
Revises: 0007_metered
"""

import sqlalchemy as sa
from alembic import op

from instant402.db.base import UTCDateTime

revision = "0008_redelivery"
down_revision = "0007_metered"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("payment_claims") as batch:
        batch.add_column(sa.Column("payment_digest", sa.String(64), nullable=True))
        batch.add_column(sa.Column("request_digest", sa.String(64), nullable=True))
        batch.add_column(sa.Column("payment_id", sa.String(128), nullable=True))
    op.create_index("uq_payment_claims_payment_id", "payment_claims", ["network", "payer", "payment_id"], unique=True)
    op.create_table(
        "kept_results",
        sa.Column("usage_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("body", sa.JSON(), nullable=False),
        sa.Column("payment_response", sa.Text(), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("payment", sa.JSON(), nullable=True),
        sa.Column("requirements", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["usage_id"], ["usage_records.id"], name=op.f("fk_kept_results_usage_id_usage_records"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("usage_id", name=op.f("pk_kept_results")),
    )
    op.create_index(op.f("ix_kept_results_expires_at"), "kept_results", ["expires_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_kept_results_expires_at"), table_name="kept_results")
    op.drop_table("kept_results")
    op.drop_index("uq_payment_claims_payment_id", table_name="payment_claims")
    with op.batch_alter_table("payment_claims") as batch:
        batch.drop_column("payment_id")
        batch.drop_column("request_digest")
        batch.drop_column("payment_digest")
