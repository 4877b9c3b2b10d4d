"""The gateway's store: SQLModel tables, engines and migrations."""

from gateway.store.db import is_postgres, make_engine, session_factory, sqlite_url, transaction, upgrade
from gateway.store.models import (
    ApiToken,
    Batch,
    Delivery,
    Document,
    Event,
    Interchange,
    Lease,
    LoginThrottle,
    PartnerFile,
    RateWindow,
    RawPayload,
    Secret,
    SourceStatus,
    Supplier,
    SupplierAlias,
    User,
    WebSession,
    utcnow,
)

__all__ = [
    "ApiToken", "Batch", "Delivery", "Document", "Event", "Interchange", "Lease", "LoginThrottle", "PartnerFile", "RateWindow",
    "RawPayload", "Secret", "SourceStatus", "Supplier", "SupplierAlias", "User", "WebSession", "utcnow",
    "is_postgres", "make_engine", "session_factory", "sqlite_url", "transaction", "upgrade",
]
