"""keys tables

Revision ID: 0003_keys
Revises: 0002_catalog
"""

import sqlalchemy as sa  # noqa: F401
from alembic import op  # noqa: F401

from instant402.db.base import UTCDateTime  # noqa: F401

revision = "0003_keys"
down_revision = "0002_catalog"
branch_labels = None
depends_on = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
