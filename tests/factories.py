"""Builders of rows and messages shared by the tests."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

from sqlalchemy import func, select, text

from infra.db import transaction
from models.billing import PlatformInvoice
from models.jobs import Job, JobStatus
from models.tenants import Tenant

# Tests bill past months, and a tenant is billed only for months that ended
# after it was created, so test tenants signed up well before them.
SIGNED_UP_AT = dt.datetime(2023, 1, 1, tzinfo=dt.UTC)


def create_tenants(
    count: int,
    *,
    payment_methods: Sequence[str] = ("pm_card_visa",),
    price_cents: int = 4900,
    created_at: dt.datetime = SIGNED_UP_AT,
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
                created_at=created_at,
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


@contextmanager
def database_rejects(
    *, table: str, event: str, message: str, condition: str = "true"
) -> Iterator[None]:
    """Make PostgreSQL raise ``message`` on matching writes until the block ends.

    A trigger is a fault on the server's side, so the code under test runs
    unchanged. ``event`` is INSERT or UPDATE and ``condition`` a PL/pgSQL
    expression over NEW.
    """
    with transaction() as session:
        session.execute(
            text(
                "CREATE FUNCTION reject_writes() RETURNS trigger AS $$ BEGIN "
                f"IF {condition} THEN RAISE EXCEPTION '{message}'; END IF; "
                "RETURN NEW; END $$ LANGUAGE plpgsql;"
                f"CREATE TRIGGER reject_writes BEFORE {event} ON {table} "
                "FOR EACH ROW EXECUTE FUNCTION reject_writes();"
            )
        )
    try:
        yield
    finally:
        with transaction() as session:
            session.execute(
                text(
                    f"DROP TRIGGER reject_writes ON {table};"
                    "DROP FUNCTION reject_writes();"
                )
            )
