"""metered calls: the usage row's maximum and charge breakdown, the claim's payment scheme

Revision ID: 0010_metered_usage
Revises: 0009_streaming
"""

import sqlalchemy as sa
from alembic import op

revision = "0010_metered_usage"
down_revision = "0009_streaming"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("max_amount_atomic", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("charge_breakdown", sa.JSON(), nullable=True))
    with op.batch_alter_table("payment_claims") as batch:
        batch.add_column(sa.Column("scheme", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("payment_claims") as batch:
        batch.drop_column("scheme")
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("charge_breakdown")
        batch.drop_column("max_amount_atomic")
