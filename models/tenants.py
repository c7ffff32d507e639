"""Tenants: the clinics that use the platform and pay a monthly plan price."""

from __future__ import annotations

import datetime as dt
import enum

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Enum,
    Integer,
    String,
    func,
    select,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, created_at_column, enum_values


class TenantStatus(enum.StrEnum):
    ACTIVE = "active"
    PAST_DUE = "past_due"
    CANCELLED = "cancelled"


class Tenant(Base):
    __tablename__ = "tenants"
    __table_args__ = (
        CheckConstraint("plan_price_cents >= 0", name="plan_price_not_negative"),
        CheckConstraint("currency ~ '^[a-z]{3}$'", name="currency_iso_lower"),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    name: Mapped[str] = mapped_column(String(200), nullable=False)
    time_zone: Mapped[str] = mapped_column(String(64), nullable=False, default="UTC")
    plan_price_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False, default="eur")
    status: Mapped[TenantStatus] = mapped_column(
        Enum(TenantStatus, name="tenant_status", values_callable=enum_values),
        nullable=False,
        default=TenantStatus.ACTIVE,
    )
    stripe_customer_id: Mapped[str | None] = mapped_column(String(255))
    stripe_payment_method_id: Mapped[str | None] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = created_at_column()
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True),
        nullable=False,
        server_default=func.now(),
        onupdate=func.now(),
    )

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.id,
            "name": self.name,
            "time_zone": self.time_zone,
            "plan_price_cents": self.plan_price_cents,
            "currency": self.currency,
            "status": self.status.value,
            "stripe_customer_id": self.stripe_customer_id,
            "stripe_payment_method_id": self.stripe_payment_method_id,
            "created_at": self.created_at.isoformat(),
        }


def billable_tenant_ids(
    session: Session, *, after_id: int, limit: int, created_before: dt.datetime
) -> list[int]:
    """Return the ids of billable tenants after ``after_id``, in id order.

    A tenant created at or after ``created_before`` (the end of the billing
    period) is not billed for it. Keyset pagination on the primary key keeps
    every page one index range scan, however deep the run has gone.
    """
    ids = session.scalars(
        select(Tenant.id)
        .where(
            Tenant.id > after_id,
            Tenant.status != TenantStatus.CANCELLED,
            Tenant.plan_price_cents > 0,
            Tenant.created_at < created_before,
        )
        .order_by(Tenant.id)
        .limit(limit)
    )
    return list(ids)
