"""Imports every domain's tables so that ``metadata`` knows them all (Alembic and tests use it)."""

from instant402.accounts import models as _accounts  # noqa: F401
from instant402.catalog import models as _catalog  # noqa: F401
from instant402.db.base import Base
from instant402.execution import models as _execution  # noqa: F401
from instant402.keys import models as _keys  # noqa: F401
from instant402.payments import models as _payments  # noqa: F401
from instant402.resources import models as _resources  # noqa: F401
from instant402.usage import models as _usage  # noqa: F401

metadata = Base.metadata
