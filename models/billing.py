"""Platform invoices and the charge attempts made to collect them."""

from __future__ import annotations

import datetime as dt
import enum
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Enum,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    func,
    select,
    update,
)
from sqlalchemy.orm import Mapped, Session, mapped_column

from models.base import Base, created_at_column, enum_values


class InvoiceStatus(enum.StrEnum):
    OPEN = "open"
    PAID = "paid"
    PAYMENT_FAILED = "payment_failed"
    UNCOLLECTIBLE = "uncollectible"


class ChargeOutcome(enum.StrEnum):
    PENDING = "pending"
    SUCCEEDED = "succeeded"
    DECLINED = "declined"
    ERROR = "error"


class PlatformInvoice(Base):
    """One month of a tenant's plan price, billed once per tenant and period."""

    __tablename__ = "platform_invoices"
    __table_args__ = (
        UniqueConstraint("tenant_id", "period_start"),
        CheckConstraint("amount_cents > 0", name="amount_positive"),
        CheckConstraint(
            "amount_due_cents >= 0 AND amount_due_cents <= amount_cents",
            name="amount_due_in_range",
        ),
        CheckConstraint("extract(day from period_start) = 1", name="period_is_month"),
        Index(
            "ix_platform_invoices_due",
            "next_attempt_at",
            postgresql_where="status IN ('open', 'payment_failed')",
        ),
    )

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[int] = mapped_column(
        BigInteger, ForeignKey("tenants.id", ondelete="RESTRICT"), nullable=False
    )
    period_start: Mapped[dt.date] = mapped_column(Date, nullable=False)
    amount_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    amount_due_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    status: Mapped[InvoiceStatus] = mapped_column(
        Enum(InvoiceStatus, name="invoice_status", values_callable=enum_values),
        nullable=False,
        default=InvoiceStatus.OPEN,
    )
    attempt_count: Mapped[int] = mapped_column(Integer, nullable=False, default=0)
    next_attempt_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    awaiting_payment_method: Mapped[bool] = mapped_column(
        Boolean, nullable=False, default=False
    )
    last_decline_code: Mapped[str | None] = mapped_column(String(64))
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    paid_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[dt.datetime] = created_at_column()
    updated_at: Mapped[dt.datetime] = mapped_column(
        DateTime(timezone=True),
        nullable=False,
        server_default=func.now(),
        onupdate=func.now(),
    )

    @property
    def period(self) -> str:
        return self.period_start.strftime("%Y-%m")

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "tenant_id": self.tenant_id,
            "period": self.period,
            "amount_cents": self.amount_cents,
            "amount_due_cents": self.amount_due_cents,
            "currency": self.currency,
            "status": self.status.value,
            "attempt_count": self.attempt_count,
            "next_attempt_at": self.next_attempt_at.isoformat()
            if self.next_attempt_at
            else None,
            "awaiting_payment_method": self.awaiting_payment_method,
            "last_decline_code": self.last_decline_code,
            "stripe_payment_intent_id": self.stripe_payment_intent_id,
            "paid_at": self.paid_at.isoformat() if self.paid_at else None,
            "created_at": self.created_at.isoformat(),
        }


class ChargeAttempt(Base):
    """One attempt in an invoice's dunning sequence, committed before Stripe is called.

    The idempotency key is derived from the invoice and the attempt number, so a
    redelivered job sends Stripe the same key and gets the saved response back.
    """

    __tablename__ = "charge_attempts"
    __table_args__ = (UniqueConstraint("invoice_id", "attempt_number"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    invoice_id: Mapped[int] = mapped_column(
        BigInteger,
        ForeignKey("platform_invoices.id", ondelete="CASCADE"),
        nullable=False,
    )
    attempt_number: Mapped[int] = mapped_column(Integer, nullable=False)
    idempotency_key: Mapped[str] = mapped_column(
        String(255), nullable=False, unique=True
    )
    amount_cents: Mapped[int] = mapped_column(Integer, nullable=False)
    currency: Mapped[str] = mapped_column(String(3), nullable=False)
    outcome: Mapped[ChargeOutcome] = mapped_column(
        Enum(ChargeOutcome, name="charge_outcome", values_callable=enum_values),
        nullable=False,
        default=ChargeOutcome.PENDING,
    )
    stripe_payment_intent_id: Mapped[str | None] = mapped_column(String(255))
    decline_code: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[dt.datetime] = created_at_column()
    finished_at: Mapped[dt.datetime | None] = mapped_column(DateTime(timezone=True))


def list_invoices(
    session: Session, *, tenant_id: int, limit: int, before_id: int | None = None
) -> list[PlatformInvoice]:
    """Return up to ``limit`` of a tenant's invoices, newest (highest id) first.

    ``before_id`` is the id of the last invoice of the previous page.
    """
    query = select(PlatformInvoice).where(PlatformInvoice.tenant_id == tenant_id)
    if before_id is not None:
        query = query.where(PlatformInvoice.id < before_id)
    query = query.order_by(PlatformInvoice.id.desc()).limit(limit)
    return list(session.scalars(query))


def rearm_awaiting_invoices(session: Session, *, tenant_id: int) -> list[int]:
    """Make a tenant's invoices that wait for a new payment method due now.

    Call this in the transaction that stores the new payment method, so the
    next ``charge_due_invoices`` run retries them. Returns the invoice ids.
    """
    rows = session.execute(
        update(PlatformInvoice)
        .where(
            PlatformInvoice.tenant_id == tenant_id,
            PlatformInvoice.awaiting_payment_method.is_(True),
            PlatformInvoice.status.in_(
                (InvoiceStatus.OPEN, InvoiceStatus.PAYMENT_FAILED)
            ),
        )
        .values(
            awaiting_payment_method=False,
            next_attempt_at=func.now(),
            updated_at=func.now(),
        )
        .returning(PlatformInvoice.id)
    )
    return sorted(rows.scalars())
