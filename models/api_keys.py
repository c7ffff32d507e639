"""API keys: bearer secrets stored only as SHA-256 hashes."""

from __future__ import annotations

import datetime as dt
import enum
import hashlib
import secrets

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    ForeignKey,
    String,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, created_at_column, enum_values

KEY_PREFIX = "vq_"
# How many leading characters of a secret are stored in clear, to name the key
# in listings.
DISPLAY_PREFIX_CHARS = 10


class ApiKeyRole(enum.StrEnum):
    OPERATOR = "operator"
    TENANT = "tenant"


class ApiKey(Base):
    __tablename__ = "api_keys"
    __table_args__ = (
        CheckConstraint(
            "(role = 'tenant') = (tenant_id IS NOT NULL)",
            name="tenant_key_has_tenant",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    key_hash: Mapped[str] = mapped_column(String(64), nullable=False, unique=True)
    display_prefix: Mapped[str] = mapped_column(String(16), nullable=False)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    role: Mapped[ApiKeyRole] = mapped_column(
        Enum(ApiKeyRole, name="api_key_role", values_callable=enum_values),
        nullable=False,
    )
    tenant_id: Mapped[int | None] = mapped_column(
        BigInteger, ForeignKey("tenants.id", ondelete="CASCADE"), index=True
    )
    created_at: Mapped[dt.datetime] = created_at_column()
    revoked_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


def hash_key(secret: str) -> str:
    # A fast hash is enough: keys are 256-bit random values, not passwords.
    return hashlib.sha256(secret.encode()).hexdigest()


def create_api_key(
    session: Session, *, name: str, role: ApiKeyRole, tenant_id: int | None = None
) -> tuple[ApiKey, str]:
    """Create a key and return it with its secret, which is shown only this once."""
    secret = KEY_PREFIX + secrets.token_urlsafe(32)
    key = ApiKey(
        key_hash=hash_key(secret),
        display_prefix=secret[:DISPLAY_PREFIX_CHARS],
        name=name,
        role=role,
        tenant_id=tenant_id,
    )
    session.add(key)
    session.flush()
    return key, secret


def find_active_key(session: Session, secret: str) -> ApiKey | None:
    """Return the unrevoked key whose hash matches ``secret``, or None."""
    return session.scalar(
        select(ApiKey).where(
            ApiKey.key_hash == hash_key(secret), ApiKey.revoked_at.is_(None)
        )
    )
