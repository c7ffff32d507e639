"""Builders of rows and messages shared by the tests."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import func, select

from infra.db import transaction
from models.billing import PlatformInvoice
from models.jobs import Job, JobStatus
from models.tenants import Tenant


def create_tenants(
    count: int,
    *,
    payment_methods: Sequence[str] = ("pm_card_visa",),
    price_cents: int = 4900,
) -> list[int]:
    """Create ``count`` tenants, cycling through ``payment_methods``; return ids."""
    with transaction() as session:
        tenants = [
            Tenant(
                name=f"Clinic {index}",
                plan_price_cents=price_cents,
                currency="eur",
                stripe_customer_id=f"cus_test{index}",
                stripe_payment_method_id=payment_methods[index % len(payment_methods)],
            )
            for index in range(count)
        ]
        session.add_all(tenants)
        session.flush()
        return [tenant.id for tenant in tenants]


def jobs_by_status() -> dict[str, int]:
    with transaction() as session:
        rows = session.execute(select(Job.status, func.count()).group_by(Job.status))
        return {status.value: count for status, count in rows}


def all_jobs_finished() -> bool:
    counts = jobs_by_status()
    busy = sum(
        counts.get(s.value, 0)
        for s in JobStatus
        if s.value not in ("succeeded", "failed")
    )
    return bool(counts) and busy == 0


def invoices() -> list[PlatformInvoice]:
    with transaction() as session:
        return list(
            session.scalars(select(PlatformInvoice).order_by(PlatformInvoice.id))
        )


def get_job(dedup_key: str) -> Job | None:
    with transaction() as session:
        return session.scalar(select(Job).where(Job.dedup_key == dedup_key))
