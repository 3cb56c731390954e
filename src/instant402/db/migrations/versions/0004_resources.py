"""resources tables

Revision ID: 0004_resources
Revises: 0003_keys
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

from instant402.db.base import UTCDateTime  # noqa: F401

revision = "0004_resources"
down_revision = "0003_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
