"""streaming: usage rows record whether the answer was streamed and its time to first token

Revision ID: 0009_streaming
Revises: 0008_redelivery
"""

import sqlalchemy as sa
from alembic import op

revision = "0009_streaming"
down_revision = "0008_redelivery"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.add_column(sa.Column("streamed", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("first_token_ms", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("usage_records") as batch:
        batch.drop_column("first_token_ms")
        batch.drop_column("streamed")
