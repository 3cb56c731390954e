"""resources: instant resources (model, templates, typed parameters, price, status)

Revision ID: 0004_resources
Revises: 0003_keys
"""

import sqlalchemy as sa
from alembic import op

from instant402.db.base import UTCDateTime

revision = "0004_resources"
down_revision = "0003_keys"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "resources",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("owner_id", sa.Integer(), nullable=False),
        sa.Column("slug", sa.String(64), nullable=False),
        sa.Column("name", sa.String(100), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("model_id", sa.String(255), nullable=False),
        sa.Column("fallback_model_ids", sa.JSON(), nullable=False),
        sa.Column("system_prompt", sa.Text(), nullable=False),
        sa.Column("prompt_template", sa.Text(), nullable=False),
        sa.Column("parameters", sa.JSON(), nullable=False),
        sa.Column("temperature", sa.Float(), nullable=True),
        sa.Column("top_p", sa.Float(), nullable=True),
        sa.Column("max_tokens", sa.Integer(), nullable=False),
        sa.Column("output_kind", sa.String(8), nullable=False),
        sa.Column("output_schema", sa.JSON(), nullable=True),
        sa.Column("price_atomic", sa.BigInteger(), nullable=False),
        sa.Column("network", sa.String(64), nullable=False),
        sa.Column("pay_to", sa.String(42), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("pause_kind", sa.String(32), nullable=True),
        sa.Column("paused_reason", sa.String(300), nullable=True),
        sa.Column("running_on_fallback", sa.String(255), nullable=True),
        sa.Column("model_warning", sa.String(500), nullable=True),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.Column("published_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(["owner_id"], ["users.id"], name=op.f("fk_resources_owner_id_users")),
        sa.ForeignKeyConstraint(["model_id"], ["models.id"], name=op.f("fk_resources_model_id_models")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_resources")),
        sa.UniqueConstraint("owner_id", "slug", name=op.f("uq_resources_owner_id_slug")),
    )
    op.create_index(op.f("ix_resources_model_id"), "resources", ["model_id"])
    op.create_index(op.f("ix_resources_status"), "resources", ["status"])
    op.create_index(op.f("ix_resources_created_at"), "resources", ["created_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_resources_created_at"), table_name="resources")
    op.drop_index(op.f("ix_resources_status"), table_name="resources")
    op.drop_index(op.f("ix_resources_model_id"), table_name="resources")
    op.drop_table("resources")
