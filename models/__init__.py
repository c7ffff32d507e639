"""SQLAlchemy tables and the database operations on them, one module per aggregate."""

from models.api_keys import ApiKey
from models.base import Base
from models.billing import ChargeAttempt, PlatformInvoice
from models.jobs import Job
from models.notifications import Notification
from models.tenants import Tenant

__all__ = [
    "ApiKey",
    "Base",
    "ChargeAttempt",
    "Job",
    "Notification",
    "PlatformInvoice",
    "Tenant",
]
