"""catalog tables

Revision ID: 0002_catalog
Revises: 0001_accounts
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

from instant402.db.base import UTCDateTime  # noqa: F401

revision = "0002_catalog"
down_revision = "0001_accounts"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
