"""payments tables

Revision ID: 0005_payments
Revises: 0004_resources
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

from instant402.db.base import UTCDateTime  # noqa: F401

revision = "0005_payments"
down_revision = "0004_resources"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
