"""Auto-charge of platform invoices through Stripe, with a dunning schedule.

The protocol that keeps a customer from being charged twice:
1. Commit a charge attempt whose idempotency key is derived from the invoice
   and the attempt's number in the dunning sequence.
2. Confirm an off-session PaymentIntent with that key and explicit timeouts.
3. Record the outcome and the invoice status in one transaction.
A job that dies between 2 and 3 is redelivered, finds the pending attempt,
and sends the same key again: Stripe replays the saved response.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import logging
from typing import Any

import stripe
from pydantic import Field
from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from actors.errors import PermanentJobError
from actors.ledger import JobRequest, enqueue_many
from actors.middleware import note_success_recorded, success_fence
from actors.registry import JobParams, job_type
from actors.stripe_calls import call_stripe
from infra.db import driver_autocommit, run_sql, transaction
from infra.settings import Settings, get_settings
from infra.stripe_client import get_stripe
from models.billing import ChargeAttempt, ChargeOutcome, InvoiceStatus, PlatformInvoice
from models.jobs import SqlTarget, succeed_cte
from models.notifications import Notification
from models.tenants import Tenant, TenantStatus

logger = logging.getLogger(__name__)

# Declines that fail again on the same card: retrying them only adds to the
# card network's count of retries, so the invoice waits for a new card.
HARD_DECLINE_CODES = frozenset(
    {
        "authentication_required",
        "card_not_supported",
        "do_not_honor",
        "expired_card",
        "fraudulent",
        "incorrect_number",
        "invalid_account",
        "lost_card",
        "merchant_blacklist",
        "pickup_card",
        "restricted_card",
        "revocation_of_all_authorizations",
        "revocation_of_authorization",
        "security_violation",
        "stolen_card",
        "stop_payment_order",
    }
)
DUE_PAGE_SIZE = 500


class ChargeInvoiceParams(JobParams):
    invoice_id: int = Field(gt=0, le=2**63 - 1, strict=True)
    attempt_number: int = Field(
        1,
        ge=1,
        le=50,
        strict=True,
        description="Position of this charge in the dunning sequence.",
    )
    due_at: str | None = Field(
        None,
        max_length=40,
        description="The invoice's next attempt time that made this charge due.",
    )


def _charge_key(params: ChargeInvoiceParams) -> str:
    # The due time is part of the key because an attempt can become due more
    # than once: a charge skipped for want of a card is due again, under the
    # same attempt number, once the clinic adds one.
    key = f"charge-invoice:{params.invoice_id}:{params.attempt_number}"
    return f"{key}:{params.due_at}" if params.due_at else key


class ChargeDueInvoicesParams(JobParams):
    slot: str | None = Field(
        None,
        max_length=64,
        description="Schedule slot that triggered the run, if any.",
    )


def idempotency_key(invoice_id: int, attempt_number: int) -> str:
    """Derive the Stripe idempotency key from business ids, never a random value."""
    return f"vetqueue-platform-invoice-{invoice_id}-attempt-{attempt_number}"


@dataclasses.dataclass(frozen=True)
class PendingCharge:
    """Inputs of one Stripe call, read in the transaction that opened the attempt."""

    attempt_id: int
    invoice_id: int
    tenant_id: int
    attempt_number: int
    key: str
    amount_cents: int
    currency: str
    customer: str
    payment_method: str


def _charge_time_limit_ms(settings: Settings) -> int:
    # The slowest run still ends on its own: a wait for the first slot, the
    # retry budget, then a last call that may wait for a slot again and time out.
    worst_case_s = (
        2 * settings.stripe_slot_wait_s
        + settings.charge_time_budget_s
        + settings.stripe_connect_timeout_s
        + settings.stripe_read_timeout_s
        + 5
    )
    return int(worst_case_s * 1000)


@job_type(
    queue="charges",
    params=ChargeInvoiceParams,
    time_limit_ms=_charge_time_limit_ms,
    max_retries=8,
    max_backoff_ms=6 * 3600_000,
    natural_key=_charge_key,
)
def charge_invoice(params: ChargeInvoiceParams) -> dict[str, Any]:
    """Charge one invoice once for one attempt of its dunning sequence."""
    with driver_autocommit() as conn:
        pending = _open_attempt(conn, params)
    if not isinstance(pending, PendingCharge):
        return pending

    try:
        intent = call_stripe(
            lambda: _confirm_payment_intent(pending),
            description=f"invoice {pending.invoice_id} #{pending.attempt_number}",
        )
    except stripe.CardError as decline:
        return _record_decline(pending, decline)
    except (
        stripe.InvalidRequestError,
        stripe.IdempotencyError,
        stripe.AuthenticationError,
        stripe.PermissionError,
    ) as error:
        _record_error(pending, str(error))
        raise PermanentJobError(f"Stripe rejected the charge: {error}") from error

    if intent.status != "succeeded":
        # A confirmed off-session card payment normally ends succeeded or
        # raises a card error. Any other status, such as processing for a
        # payment method that settles later, is not a payment yet. A new
        # attempt would create a second PaymentIntent that might also charge
        # the clinic, so the invoice waits for an operator.
        reason = (
            f"PaymentIntent {intent.id} is {intent.status}, not succeeded; "
            "check it in Stripe before the invoice is charged again"
        )
        _record_error(pending, reason, payment_intent_id=intent.id)
        raise PermanentJobError(reason)
    return _record_success(pending, intent)


# Opening an attempt runs on every charge, so it is one statement of plain
# SQL, built once and committed on its own. It locks and reads the invoice
# with its tenant's payment details and the attempt with this number, if one
# was opened before. With no such attempt it opens one if the charge is due
# and the tenant has a card, or marks the invoice as waiting for a card if it
# is due and the tenant has none. Python then reads the outcome from the row.
OPEN_ATTEMPT = """
    WITH invoice AS (
        SELECT i.id, i.tenant_id, i.status, i.attempt_count,
               i.awaiting_payment_method, i.next_attempt_at,
               i.amount_due_cents, i.currency,
               t.stripe_customer_id, t.stripe_payment_method_id,
               (i.status NOT IN ('paid', 'uncollectible')
                AND i.attempt_count + 1 = %(attempt_number)s
                AND NOT i.awaiting_payment_method
                AND (i.next_attempt_at IS NULL OR i.next_attempt_at <= now()))
                   AS due,
               (coalesce(t.stripe_customer_id, '') <> ''
                AND coalesce(t.stripe_payment_method_id, '') <> '') AS has_card
        FROM platform_invoices AS i
        JOIN tenants AS t ON t.id = i.tenant_id
        WHERE i.id = %(invoice_id)s
        FOR UPDATE OF i
    ), earlier AS (
        SELECT id, outcome, error, idempotency_key, amount_cents, currency
        FROM charge_attempts
        WHERE invoice_id = %(invoice_id)s AND attempt_number = %(attempt_number)s
    ), opened AS (
        INSERT INTO charge_attempts
            (invoice_id, attempt_number, idempotency_key, amount_cents,
             currency, outcome)
        SELECT id, %(attempt_number)s, %(key)s, amount_due_cents, currency, 'pending'
        FROM invoice
        WHERE due AND has_card AND NOT EXISTS (SELECT 1 FROM earlier)
        RETURNING id, idempotency_key, amount_cents, currency
    ), counted AS (
        UPDATE platform_invoices
        SET attempt_count = %(attempt_number)s, updated_at = now()
        WHERE id = %(invoice_id)s AND EXISTS (SELECT 1 FROM opened)
    ), parked AS (
        UPDATE platform_invoices
        SET awaiting_payment_method = true, next_attempt_at = NULL,
            updated_at = now()
        WHERE id = %(invoice_id)s
          AND EXISTS (SELECT 1 FROM invoice WHERE due AND NOT has_card)
          AND NOT EXISTS (SELECT 1 FROM earlier)
    )
    SELECT invoice.*,
           earlier.id AS attempt_id, earlier.outcome AS attempt_outcome,
           earlier.error AS attempt_error,
           earlier.idempotency_key AS attempt_key,
           earlier.amount_cents AS attempt_amount_cents,
           earlier.currency AS attempt_currency,
           opened.id AS opened_id, opened.idempotency_key AS opened_key,
           opened.amount_cents AS opened_amount_cents,
           opened.currency AS opened_currency
    FROM invoice
    LEFT JOIN earlier ON true
    LEFT JOIN opened ON true
"""


def _open_attempt(
    target: SqlTarget, params: ChargeInvoiceParams
) -> PendingCharge | dict[str, Any]:
    """Return the attempt to send, reusing a pending one, or a result saying why not."""
    rows, _ = run_sql(
        target,
        OPEN_ATTEMPT,
        {
            "invoice_id": params.invoice_id,
            "attempt_number": params.attempt_number,
            "key": idempotency_key(params.invoice_id, params.attempt_number),
        },
    )
    row = rows[0] if rows else None
    if row is None:
        raise PermanentJobError(f"platform invoice {params.invoice_id} not found")
    if row.status in (InvoiceStatus.PAID, InvoiceStatus.UNCOLLECTIBLE):
        return {"invoice_id": row.id, "skipped": f"invoice is {row.status}"}

    if row.attempt_id is not None:
        if row.attempt_outcome == ChargeOutcome.ERROR:
            # Running this attempt again would send the same request again.
            raise PermanentJobError(
                f"attempt {params.attempt_number} of invoice {row.id} did not "
                f"complete: {row.attempt_error}. Correcting the tenant's Stripe "
                "customer or payment method makes the invoice due for a new "
                "attempt"
            )
        if row.attempt_outcome != ChargeOutcome.PENDING:
            return {
                "invoice_id": row.id,
                "skipped": f"attempt {params.attempt_number} already "
                f"{row.attempt_outcome}",
            }
        attempt = (
            row.attempt_id,
            row.attempt_key,
            row.attempt_amount_cents,
            row.attempt_currency,
        )
    elif row.opened_id is not None:
        attempt = (
            row.opened_id,
            row.opened_key,
            row.opened_amount_cents,
            row.opened_currency,
        )
    elif not row.due:
        reason = _why_not_due(row, params.attempt_number)
        return {
            "invoice_id": row.id,
            "skipped": reason or "next attempt is not due yet by the database clock",
        }
    else:
        return {"invoice_id": row.id, "skipped": "tenant has no payment method"}

    attempt_id, key, amount_cents, currency = attempt
    return PendingCharge(
        attempt_id=attempt_id,
        invoice_id=row.id,
        tenant_id=row.tenant_id,
        attempt_number=params.attempt_number,
        key=key,
        amount_cents=amount_cents,
        currency=currency,
        customer=row.stripe_customer_id or "",
        payment_method=row.stripe_payment_method_id or "",
    )


def _why_not_due(invoice: Any, attempt_number: int) -> str | None:
    if attempt_number != invoice.attempt_count + 1:
        return (
            f"attempt {attempt_number} is not next; "
            f"{invoice.attempt_count} attempts were made"
        )
    if invoice.awaiting_payment_method:
        return "invoice is waiting for a new payment method"
    now = dt.datetime.now(dt.UTC)
    if invoice.next_attempt_at is not None and invoice.next_attempt_at > now:
        return f"next attempt is due at {invoice.next_attempt_at.isoformat()}"
    return None


def _confirm_payment_intent(pending: PendingCharge) -> stripe.PaymentIntent:
    return get_stripe().v1.payment_intents.create(
        params={
            "amount": pending.amount_cents,
            "currency": pending.currency,
            "customer": pending.customer,
            "payment_method": pending.payment_method,
            "confirm": True,
            "off_session": True,
            "metadata": {
                "invoice_id": str(pending.invoice_id),
                "tenant_id": str(pending.tenant_id),
                "attempt_number": str(pending.attempt_number),
            },
        },
        options={"idempotency_key": pending.key},
    )


def _lock(
    session: Session, pending: PendingCharge
) -> tuple[PlatformInvoice, ChargeAttempt]:
    invoice = session.get(PlatformInvoice, pending.invoice_id, with_for_update=True)
    attempt = session.get(ChargeAttempt, pending.attempt_id, with_for_update=True)
    assert invoice is not None and attempt is not None
    return invoice, attempt


# One statement records a successful charge and the job's success, so the
# success path costs one round trip and its record commits with the job's.
# Each update is guarded, and a no-op when an earlier delivery of the job
# recorded the outcome already. The tenant check reads the snapshot from
# before the statement, which is enough because the invoice being paid was
# never uncollectible.
RECORD_SUCCESS = f"""
    WITH attempt AS (
        UPDATE charge_attempts
        SET outcome = 'succeeded', stripe_payment_intent_id = %(intent_id)s,
            finished_at = now()
        WHERE id = %(attempt_id)s AND outcome = 'pending'
    ), invoice AS (
        UPDATE platform_invoices
        SET status = 'paid', amount_due_cents = 0, paid_at = now(),
            next_attempt_at = NULL, stripe_payment_intent_id = %(intent_id)s,
            updated_at = now()
        WHERE id = %(invoice_id)s AND status <> 'paid'
    ), tenant AS (
        UPDATE tenants SET status = 'active', updated_at = now()
        WHERE id = %(tenant_id)s AND status = 'past_due'
          AND NOT EXISTS (
              SELECT 1 FROM platform_invoices
              WHERE tenant_id = %(tenant_id)s AND status = 'uncollectible'
          )
    ), {succeed_cte("CAST(%(job_result)s AS jsonb)")}
    SELECT EXISTS (SELECT 1 FROM succeeded_job) AS job_recorded
"""


def _record_success(
    pending: PendingCharge, intent: stripe.PaymentIntent
) -> dict[str, Any]:
    result = {
        "invoice_id": pending.invoice_id,
        "outcome": "paid",
        "payment_intent": intent.id,
    }
    fence = success_fence()
    with driver_autocommit() as conn:
        rows, _ = run_sql(
            conn,
            RECORD_SUCCESS,
            {
                "intent_id": intent.id,
                "attempt_id": pending.attempt_id,
                "invoice_id": pending.invoice_id,
                "tenant_id": pending.tenant_id,
                "job_result": json.dumps(result),
                **fence,
            },
        )
    job_recorded = rows[0].job_recorded
    if fence["job_id"] is not None:
        note_success_recorded(job_recorded)
    logger.info(
        "invoice paid",
        extra={"invoice_id": pending.invoice_id, "tenant_id": pending.tenant_id},
    )
    return result


def _record_decline(
    pending: PendingCharge, decline: stripe.CardError
) -> dict[str, Any]:
    code = (decline.error.decline_code if decline.error else None) or decline.code
    code = code or "card_declined"
    hard = code in HARD_DECLINE_CODES
    schedule = get_settings().dunning_retry_days
    final = not hard and pending.attempt_number > len(schedule)

    with transaction() as session:
        invoice, attempt = _lock(session, pending)
        if attempt.outcome != ChargeOutcome.PENDING:
            return {"invoice_id": invoice.id, "skipped": "outcome already recorded"}
        attempt.outcome = ChargeOutcome.DECLINED
        attempt.decline_code = code
        attempt.error = str(decline.user_message or decline)[:1000]
        attempt.finished_at = func.now()
        invoice.last_decline_code = code

        if hard:
            invoice.status = InvoiceStatus.PAYMENT_FAILED
            invoice.awaiting_payment_method = True
            invoice.next_attempt_at = None
            next_step = "waiting for a new payment method"
        elif final:
            invoice.status = InvoiceStatus.UNCOLLECTIBLE
            invoice.next_attempt_at = None
            session.execute(
                Tenant.__table__.update()
                .where(Tenant.id == invoice.tenant_id)
                .values(status=TenantStatus.PAST_DUE)
            )
            next_step = "invoice is uncollectible after the last attempt"
        else:
            delay = dt.timedelta(days=schedule[pending.attempt_number - 1])
            invoice.status = InvoiceStatus.PAYMENT_FAILED
            invoice.next_attempt_at = dt.datetime.now(dt.UTC) + delay
            next_step = f"next attempt at {invoice.next_attempt_at:%Y-%m-%d %H:%M} UTC"

        _notify(
            session,
            tenant_id=invoice.tenant_id,
            kind="platform_charge_declined",
            dedup_key=f"charge-declined:{attempt.id}",
            message=(
                f"The charge of {invoice.amount_due_cents / 100:.2f} "
                f"{invoice.currency.upper()} for the {invoice.period} platform invoice "
                f"was declined ({code}); {next_step}."
            ),
            data={"invoice_id": invoice.id, "decline_code": code, "hard": hard},
        )
        result = {
            "invoice_id": invoice.id,
            "outcome": "declined",
            "decline_code": code,
            "invoice_status": invoice.status.value,
            "next_attempt_at": invoice.next_attempt_at.isoformat()
            if invoice.next_attempt_at
            else None,
        }
    logger.info(
        "charge declined (%s): %s",
        code,
        next_step,
        extra={"invoice_id": pending.invoice_id, "tenant_id": pending.tenant_id},
    )
    return result


def _record_error(
    pending: PendingCharge, error: str, *, payment_intent_id: str | None = None
) -> None:
    """Close the attempt as an error and hold the invoice for new details.

    For a request Stripe rejected (an unknown customer or payment method, say)
    and for a PaymentIntent that did not succeed. The same details would fail
    again, so the invoice waits until the tenant's Stripe details change,
    which re-arms it for a new attempt with a new key.
    """
    with transaction() as session:
        invoice, attempt = _lock(session, pending)
        if attempt.outcome != ChargeOutcome.PENDING:
            return
        attempt.outcome = ChargeOutcome.ERROR
        attempt.error = error[:1000]
        attempt.finished_at = func.now()
        if payment_intent_id is not None:
            attempt.stripe_payment_intent_id = payment_intent_id
        invoice.status = InvoiceStatus.PAYMENT_FAILED
        invoice.next_attempt_at = None
        invoice.awaiting_payment_method = True
    logger.error(
        "charge not completed: %s",
        error,
        extra={"invoice_id": pending.invoice_id, "tenant_id": pending.tenant_id},
    )


def _notify(session: Session, **values: Any) -> None:
    session.execute(
        insert(Notification)
        .values(**values)
        .on_conflict_do_nothing(index_elements=["dedup_key"])
    )


def _current_minute() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%MZ")


@job_type(
    queue="charges",
    params=ChargeDueInvoicesParams,
    time_limit_ms=5 * 60_000,
    natural_key=lambda p: f"charge-due-invoices:{p.slot or _current_minute()}",
)
def charge_due_invoices(params: ChargeDueInvoicesParams) -> dict[str, Any]:
    """Enqueue a charge job for every invoice whose next attempt is due."""
    now = dt.datetime.now(dt.UTC)
    after_id = 0
    enqueued = 0
    while True:
        with transaction() as session:
            rows = session.execute(
                select(
                    PlatformInvoice.id,
                    PlatformInvoice.attempt_count,
                    PlatformInvoice.tenant_id,
                    PlatformInvoice.next_attempt_at,
                )
                .where(
                    PlatformInvoice.status.in_(
                        (InvoiceStatus.OPEN, InvoiceStatus.PAYMENT_FAILED)
                    ),
                    PlatformInvoice.awaiting_payment_method.is_(False),
                    PlatformInvoice.next_attempt_at <= now,
                    PlatformInvoice.id > after_id,
                )
                .order_by(PlatformInvoice.id)
                .limit(DUE_PAGE_SIZE)
            ).all()
            requests = [
                JobRequest(
                    params={
                        "invoice_id": row.id,
                        "attempt_number": row.attempt_count + 1,
                        "due_at": row.next_attempt_at.isoformat(),
                    },
                    tenant_id=row.tenant_id,
                )
                for row in rows
            ]
            results = enqueue_many("charge_invoice", requests, session=session)
        enqueued += sum(1 for r in results if r.created)
        if len(rows) < DUE_PAGE_SIZE:
            break
        after_id = rows[-1].id
    logger.info("enqueued %d due charges", enqueued)
    return {"enqueued": enqueued}
