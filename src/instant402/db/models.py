"""Imports every domain's tables so that ``metadata`` knows them all (Alembic and tests use it)."""

from instant402.accounts import models as _accounts  # noqa: F401
from instant402.db.base import Base

metadata = Base.metadata
