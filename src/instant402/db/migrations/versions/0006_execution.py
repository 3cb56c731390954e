"""execution tables

Revision ID: 0006_execution
Revises: 0005_payments
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

from instant402.db.base import UTCDateTime  # noqa: F401

revision = "0006_execution"
down_revision = "0005_payments"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
