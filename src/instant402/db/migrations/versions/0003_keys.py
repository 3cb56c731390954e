"""keys tables: encrypted OpenRouter keys, key events, daily decryption counts

Revision ID: 0003_keys
Revises: 0002_catalog
"""

import sqlalchemy as sa
from alembic import op

from instant402.db.base import BigIntPK, ExactDecimal, UTCDateTime

revision = "0003_keys"
down_revision = "0002_catalog"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "openrouter_keys",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("ciphertext", sa.LargeBinary(), nullable=False),
        sa.Column("nonce", sa.LargeBinary(), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("master_version", sa.Integer(), nullable=False),
        sa.Column("masked", sa.String(32), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("label", sa.String(128), nullable=True),
        sa.Column("limit", ExactDecimal(), nullable=True),
        sa.Column("limit_remaining", ExactDecimal(), nullable=True),
        sa.Column("limit_reset", sa.String(16), nullable=True),
        sa.Column("is_free_tier", sa.Boolean(), nullable=True),
        sa.Column("last_verified_at", UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.String(300), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_openrouter_keys_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_openrouter_keys")),
        sa.UniqueConstraint("user_id", name=op.f("uq_openrouter_keys_user_id")),
    )
    op.create_index(op.f("ix_openrouter_keys_master_version"), "openrouter_keys", ["master_version"])
    op.create_table(
        "openrouter_key_events",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(24), nullable=False),
        sa.Column("result", sa.String(24), nullable=True),
        sa.Column("detail", sa.String(300), nullable=True),
        sa.Column("masked", sa.String(32), nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_openrouter_key_events_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_openrouter_key_events")),
    )
    op.create_index(op.f("ix_openrouter_key_events_user_id"), "openrouter_key_events", ["user_id"])
    op.create_table(
        "openrouter_key_decryptions",
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("day", sa.Date(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_openrouter_key_decryptions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("user_id", "day", name=op.f("pk_openrouter_key_decryptions")),
    )


def downgrade() -> None:
    op.drop_table("openrouter_key_decryptions")
    op.drop_index(op.f("ix_openrouter_key_events_user_id"), table_name="openrouter_key_events")
    op.drop_table("openrouter_key_events")
    op.drop_index(op.f("ix_openrouter_keys_master_version"), table_name="openrouter_keys")
    op.drop_table("openrouter_keys")
