"""Storage: SQLAlchemy 2 (async) models share one metadata; Alembic migrations live in ``migrations/``."""

from instant402.db.base import Base, utcnow
from instant402.db.engine import Database

__all__ = ["Base", "Database", "utcnow"]
