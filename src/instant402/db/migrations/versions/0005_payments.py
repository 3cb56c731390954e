"""payments and usage: usage records, payment claims

Revision ID: 0005_payments
Revises: 0004_resources
"""

import sqlalchemy as sa
from alembic import op

from instant402.db.base import ExactDecimal, UTCDateTime

revision = "0005_payments"
down_revision = "0004_resources"
branch_labels = None
depends_on = None

BigIntPK = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "usage_records",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("resource_id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error_category", sa.String(32), nullable=True),
        sa.Column("error_code", sa.String(64), nullable=True),
        sa.Column("error_detail", sa.Text(), nullable=True),
        sa.Column("payer", sa.String(42), nullable=True),
        sa.Column("amount_atomic", sa.BigInteger(), nullable=False),
        sa.Column("network", sa.String(64), nullable=True),
        sa.Column("asset", sa.String(42), nullable=True),
        sa.Column("pay_to", sa.String(42), nullable=True),
        sa.Column("transaction_hash", sa.String(66), nullable=True),
        sa.Column("model_requested", sa.String(200), nullable=True),
        sa.Column("model_used", sa.String(200), nullable=True),
        sa.Column("prompt_tokens", sa.Integer(), nullable=True),
        sa.Column("completion_tokens", sa.Integer(), nullable=True),
        sa.Column("upstream_cost", ExactDecimal(), nullable=True),
        sa.Column("upstream_attempts", sa.Integer(), nullable=False),
        sa.Column("verify_ms", sa.Integer(), nullable=True),
        sa.Column("run_ms", sa.Integer(), nullable=True),
        sa.Column("settle_ms", sa.Integer(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["resource_id"], ["resources.id"], name=op.f("fk_usage_records_resource_id_resources"), ondelete="CASCADE"
        ),
        sa.ForeignKeyConstraint(
            ["owner_id"], ["users.id"], name=op.f("fk_usage_records_owner_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_usage_records")),
    )
    op.create_index("ix_usage_records_owner_created", "usage_records", ["owner_id", "created_at"])
    op.create_index("ix_usage_records_resource_created", "usage_records", ["resource_id", "created_at"])
    op.create_index(op.f("ix_usage_records_payer"), "usage_records", ["payer"])
    op.create_table(
        "payment_claims",
        sa.Column("id", BigIntPK, nullable=False),
        sa.Column("network", sa.String(64), nullable=False),
        sa.Column("payer", sa.String(42), nullable=False),
        sa.Column("nonce", sa.String(66), nullable=False),
        sa.Column("usage_id", BigIntPK, nullable=True),
        sa.Column("amount_atomic", sa.BigInteger(), nullable=False),
        sa.Column("valid_before", UTCDateTime(), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["usage_id"],
            ["usage_records.id"],
            name=op.f("fk_payment_claims_usage_id_usage_records"),
            ondelete="SET NULL",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_payment_claims")),
        sa.UniqueConstraint("network", "payer", "nonce", name=op.f("uq_payment_claims_network_payer_nonce")),
    )


def downgrade() -> None:
    op.drop_table("payment_claims")
    op.drop_index(op.f("ix_usage_records_payer"), table_name="usage_records")
    op.drop_index("ix_usage_records_resource_created", table_name="usage_records")
    op.drop_index("ix_usage_records_owner_created", table_name="usage_records")
    op.drop_table("usage_records")
