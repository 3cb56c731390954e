"""resources: metered pricing (markup on the upstream cost, fee per call, maximum per call)

Revision ID: 0007_metered
Revises: 0006_execution
"""

import sqlalchemy as sa
from alembic import op

from instant402.db.base import ExactDecimal

revision = "0007_metered"
down_revision = "0006_execution"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Existing resources are flat; the metered fields stay null for them.
    with op.batch_alter_table("resources") as batch:
        batch.add_column(sa.Column("pricing_mode", sa.String(8), nullable=False, server_default="flat"))
        batch.add_column(sa.Column("markup", ExactDecimal(), nullable=True))
        batch.add_column(sa.Column("fee_atomic", sa.BigInteger(), nullable=True))
        batch.add_column(sa.Column("max_price_atomic", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("resources") as batch:
        batch.drop_column("max_price_atomic")
        batch.drop_column("fee_atomic")
        batch.drop_column("markup")
        batch.drop_column("pricing_mode")
