"""catalog: models, curated list, sync reports, sync lock

Revision ID: 0002_catalog
Revises: 0001_accounts
"""

import sqlalchemy as sa
from alembic import op

from instant402.db.base import BigIntPK, ExactDecimal, UTCDateTime

revision = "0002_catalog"
down_revision = "0001_accounts"
branch_labels = None
depends_on = None

_MODEL_INDEXES = [
    "name",
    "modality",
    "context_length",
    "prompt_price_micro",
    "completion_price_micro",
    "created",
    "is_active",
]
# A covering index for counting matches of the common filters.
_FILTER_COUNT_COLUMNS = [
    "is_active",
    "provider",
    "modality",
    "context_length",
    "supports_vision",
    "supports_tools",
    "supports_structured_output",
    "supports_reasoning",
    "is_free",
    "produces_image",
]


# SQLite's text index: an FTS5 table of search_text trigrams (finds substrings of 3+ characters, case-folded, like
# pg_trgm on PostgreSQL). It keeps no copy of the text (content='models'), its rowids are the models' rowids, and the
# triggers below keep it current on every write to models, whoever writes.
_SQLITE_SEARCH_DDL = [
    "CREATE VIRTUAL TABLE models_search USING fts5(search_text, content='models', content_rowid='rowid', "
    "tokenize='trigram')",
    "CREATE TRIGGER models_search_insert AFTER INSERT ON models BEGIN "
    "INSERT INTO models_search(rowid, search_text) VALUES (new.rowid, new.search_text); END",
    "CREATE TRIGGER models_search_delete AFTER DELETE ON models BEGIN "
    "INSERT INTO models_search(models_search, rowid, search_text) VALUES ('delete', old.rowid, old.search_text); END",
    "CREATE TRIGGER models_search_update AFTER UPDATE OF search_text ON models "
    "WHEN old.search_text IS NOT new.search_text BEGIN "
    "INSERT INTO models_search(models_search, rowid, search_text) VALUES ('delete', old.rowid, old.search_text); "
    "INSERT INTO models_search(rowid, search_text) VALUES (new.rowid, new.search_text); END",
]


def upgrade() -> None:
    op.create_table(
        "models",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("canonical_slug", sa.String(255), nullable=True),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("description", sa.Text(), nullable=False),
        sa.Column("provider", sa.String(100), nullable=False),
        sa.Column("provider_name", sa.String(100), nullable=False),
        sa.Column("modality", sa.String(16), nullable=False),
        sa.Column("input_modalities", sa.JSON(), nullable=False),
        sa.Column("output_modalities", sa.JSON(), nullable=False),
        sa.Column("context_length", sa.Integer(), nullable=True),
        sa.Column("max_completion_tokens", sa.Integer(), nullable=True),
        sa.Column("prompt_price", ExactDecimal(), nullable=True),
        sa.Column("completion_price", ExactDecimal(), nullable=True),
        sa.Column("request_price", ExactDecimal(), nullable=True),
        sa.Column("image_price", ExactDecimal(), nullable=True),
        sa.Column("image_output_price", ExactDecimal(), nullable=True),
        sa.Column("prompt_price_micro", sa.BigInteger(), nullable=True),
        sa.Column("completion_price_micro", sa.BigInteger(), nullable=True),
        sa.Column("supported_parameters", sa.JSON(), nullable=False),
        sa.Column("supports_vision", sa.Boolean(), nullable=False),
        sa.Column("supports_tools", sa.Boolean(), nullable=False),
        sa.Column("supports_structured_output", sa.Boolean(), nullable=False),
        sa.Column("supports_reasoning", sa.Boolean(), nullable=False),
        sa.Column("is_free", sa.Boolean(), nullable=False),
        sa.Column("produces_image", sa.Boolean(), nullable=False),
        sa.Column("is_moderated", sa.Boolean(), nullable=False),
        sa.Column("created", UTCDateTime(), nullable=True),
        sa.Column("expiration_date", sa.Date(), nullable=True),
        sa.Column("content_hash", sa.String(64), nullable=False),
        sa.Column("search_text", sa.Text(), nullable=False),
        sa.Column("first_seen_at", UTCDateTime(), nullable=False),
        sa.Column("last_seen_at", UTCDateTime(), nullable=False),
        sa.Column("is_active", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_models")),
    )
    for column in _MODEL_INDEXES:
        op.create_index(op.f(f"ix_models_{column}"), "models", [column])
    if op.get_bind().dialect.name == "postgresql":
        # Database-wide and shared by every schema, hence created in (and named from) public; a trusted extension,
        # so the database owner may create it.
        op.execute("CREATE EXTENSION IF NOT EXISTS pg_trgm SCHEMA public")
        # Room on each page for a second version of every row: a sync's last_seen_at update then stays on the page
        # (a HOT update) and touches none of the indexes; the vacuum after each sync frees the room again.
        op.execute("ALTER TABLE models SET (fillfactor = 50)")
    op.create_index(
        op.f("ix_models_search_text_trgm"),
        "models",
        ["search_text"],
        postgresql_using="gin",
        postgresql_ops={"search_text": "public.gin_trgm_ops"},
        sqlite_where=sa.text("0"),  # SQLite has no trigram index: an empty one keeps the schemas alike
    )
    op.create_index(op.f("ix_models_provider_name"), "models", ["provider", "name", "id"])
    op.create_index(op.f("ix_models_filter_count"), "models", _FILTER_COUNT_COLUMNS)
    for price in ("prompt", "completion"):
        columns = ["is_active", f"{price}_price_micro", "name", "id"]
        op.create_index(op.f(f"ix_models_active_{price}_price"), "models", columns)
    op.create_index(
        op.f("ix_models_active_search_text"),
        "models",
        ["is_active", "search_text"],
        postgresql_where=sa.text("false"),  # SQLite only: PostgreSQL counts text matches from the trigram index
    )
    if op.get_bind().dialect.name == "sqlite":
        for statement in _SQLITE_SEARCH_DDL:
            op.execute(statement)
    op.create_table(
        "model_raw",
        sa.Column("id", sa.String(255), nullable=False),
        sa.Column("raw", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["id"], ["models.id"], name=op.f("fk_model_raw_id_models"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_model_raw")),
    )
    op.create_table(
        "catalog_curated",
        sa.Column("model_id", sa.String(255), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("added_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("model_id", name=op.f("pk_catalog_curated")),
    )
    op.create_table(
        "catalog_sync_runs",
        sa.Column("id", BigIntPK, autoincrement=True, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("source", sa.String(500), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("started_at", UTCDateTime(), nullable=False),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("fetched", sa.Integer(), nullable=False),
        sa.Column("added", sa.Integer(), nullable=False),
        sa.Column("updated", sa.Integer(), nullable=False),
        sa.Column("price_changes", sa.Integer(), nullable=False),
        sa.Column("deactivated", sa.Integer(), nullable=False),
        sa.Column("reactivated", sa.Integer(), nullable=False),
        sa.Column("newly_expiring", sa.Integer(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_catalog_sync_runs")),
    )
    op.create_index(op.f("ix_catalog_sync_runs_status"), "catalog_sync_runs", ["status"])
    op.create_table(
        "catalog_locks",
        sa.Column("name", sa.String(32), nullable=False),
        sa.Column("holder", sa.String(64), nullable=True),
        sa.Column("expires_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_catalog_locks")),
    )


def downgrade() -> None:
    op.drop_table("catalog_locks")
    op.drop_index(op.f("ix_catalog_sync_runs_status"), table_name="catalog_sync_runs")
    op.drop_table("catalog_sync_runs")
    op.drop_table("catalog_curated")
    op.drop_table("model_raw")
    if op.get_bind().dialect.name == "sqlite":
        op.execute("DROP TABLE models_search")  # its triggers go with the models table below
    for name in (
        "ix_models_active_search_text",
        "ix_models_active_completion_price",
        "ix_models_active_prompt_price",
        "ix_models_filter_count",
        "ix_models_provider_name",
    ):
        op.drop_index(op.f(name), table_name="models")
    op.drop_index(op.f("ix_models_search_text_trgm"), table_name="models")  # pg_trgm stays: other schemas may use it
    for column in reversed(_MODEL_INDEXES):
        op.drop_index(op.f(f"ix_models_{column}"), table_name="models")
    op.drop_table("models")
