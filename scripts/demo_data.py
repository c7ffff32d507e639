"""Demo clinics: fixed names, localstripe customers with cards, and API tenants."""

from __future__ import annotations

import dataclasses
import datetime as dt

import psycopg
import stripe

from scripts.demo_api import ApiClient
from scripts.demo_setup import DATABASE_URL, LOCALSTRIPE_STATE_DIR, DemoError

# Town, IANA time zone and billing currency.
TOWNS = (
    ("Ashford", "Europe/London", "gbp"),
    ("Galway", "Europe/Dublin", "eur"),
    ("Utrecht", "Europe/Amsterdam", "eur"),
    ("Freiburg", "Europe/Berlin", "eur"),
    ("Annecy", "Europe/Paris", "eur"),
    ("Harrogate", "Europe/London", "gbp"),
    ("Ghent", "Europe/Brussels", "eur"),
    ("Salzburg", "Europe/Vienna", "eur"),
    ("Kilkenny", "Europe/Dublin", "eur"),
    ("Lucca", "Europe/Rome", "eur"),
)
PRACTICE_NAMES = (
    "Veterinary Clinic",
    "Animal Hospital",
    "Vets",
    "Pet Care Centre",
    "Veterinary Practice",
)
PLAN_PRICES_CENTS = (4900, 7900, 12900)
CLINIC_COUNT = 50

# localstripe test payment methods. The second one (card 4000000000000341)
# attaches to a customer and is declined with card_declined when charged.
CARD_THAT_PAYS = "pm_card_visa"
CARD_DECLINED_AT_CHARGE = "pm_card_chargeCustomerFail"
# Every tenth clinic, starting with the eighth, gets the declining card.
DECLINING_CLINIC_STEP = 10
DECLINING_CLINIC_OFFSET = 7


@dataclasses.dataclass(frozen=True)
class DemoClinic:
    name: str
    time_zone: str
    currency: str
    plan_price_cents: int
    card: str


@dataclasses.dataclass(frozen=True)
class Clinic:
    """A demo clinic as a tenant of the API."""

    tenant_id: int
    name: str
    created: bool


def demo_clinics() -> list[DemoClinic]:
    """Return the 50 demo clinics, the same list on every run.

    Clinic i pairs town ``i % 10`` with practice name ``i // 10``, so all 50
    names differ and neighbours in the list are in different towns.
    """
    clinics = []
    for index in range(CLINIC_COUNT):
        town, time_zone, currency = TOWNS[index % len(TOWNS)]
        practice = PRACTICE_NAMES[index // len(TOWNS) % len(PRACTICE_NAMES)]
        declines = index % DECLINING_CLINIC_STEP == DECLINING_CLINIC_OFFSET
        clinics.append(
            DemoClinic(
                name=f"{town} {practice}",
                time_zone=time_zone,
                currency=currency,
                plan_price_cents=PLAN_PRICES_CENTS[index % len(PLAN_PRICES_CENTS)],
                card=CARD_DECLINED_AT_CHARGE if declines else CARD_THAT_PAYS,
            )
        )
    return clinics


def find_tenants(names: list[str]) -> dict[str, tuple[int, str | None]]:
    """Return the tenant id and Stripe customer of each name that exists.

    A read-only query on the demo database. Where two tenants have the same
    name, the older one is returned.
    """
    query = (
        "SELECT DISTINCT ON (name) name, id, stripe_customer_id FROM tenants "
        "WHERE name = ANY(%s) ORDER BY name, id"
    )
    try:
        with psycopg.connect(
            DATABASE_URL,
            connect_timeout=5,
            options="-c default_transaction_read_only=on",
        ) as connection:
            rows = connection.execute(query, (names,)).fetchall()
    except psycopg.Error as error:
        raise DemoError(f"looking up demo clinics failed: {error}") from error
    return {name: (tenant_id, customer) for name, tenant_id, customer in rows}


def backdate_signups(tenant_ids: list[int], *, created_at: dt.datetime) -> None:
    """Set the creation time of the given clinics to ``created_at``, if later.

    A billing run bills a clinic only for months that ended after the clinic
    was created, and the demo bills last month for clinics it created a
    moment ago. So the demo dates their sign-up back, as if they had joined
    before that month.
    """
    if not tenant_ids:
        return
    try:
        with psycopg.connect(DATABASE_URL, connect_timeout=5) as connection:
            connection.execute(
                "UPDATE tenants SET created_at = %s "
                "WHERE id = ANY(%s) AND created_at > %s",
                (created_at, tenant_ids, created_at),
            )
    except psycopg.Error as error:
        raise DemoError(f"dating the demo clinics' sign-up failed: {error}") from error


def ensure_clinics(api: ApiClient, stripe_client: stripe.StripeClient) -> list[Clinic]:
    """Create the demo clinics that do not exist yet, and return all of them.

    A clinic whose Stripe customer is missing from this checkout's localstripe
    state (the demo database outlived it, or another checkout created it) gets
    a new customer and card, stored through the API.
    """
    definitions = demo_clinics()
    existing = find_tenants([clinic.name for clinic in definitions])
    clinics = []
    restored = 0
    for clinic in definitions:
        if clinic.name in existing:
            tenant_id, customer = existing[clinic.name]
            if not _customer_exists(stripe_client, customer):
                _give_new_customer(api, stripe_client, clinic, tenant_id)
                restored += 1
            clinics.append(Clinic(tenant_id, clinic.name, created=False))
        else:
            tenant_id = _create_clinic(api, stripe_client, clinic)
            clinics.append(Clinic(tenant_id, clinic.name, created=True))
    if restored:
        print(
            f"{restored} clinics referred to Stripe customers that the localstripe "
            f"state in {LOCALSTRIPE_STATE_DIR} does not contain; they got new ones."
        )
    return clinics


def _customer_exists(stripe_client: stripe.StripeClient, customer: str | None) -> bool:
    if not customer:
        return False
    try:
        stripe_client.v1.customers.retrieve(customer)
    except stripe.InvalidRequestError:
        return False
    return True


def _create_customer(
    stripe_client: stripe.StripeClient, clinic: DemoClinic
) -> tuple[str, str]:
    """Create a localstripe customer with the clinic's card; return both ids."""
    try:
        customer = stripe_client.v1.customers.create(
            params={"name": clinic.name, "metadata": {"source": "vetqueue-demo"}}
        )
        payment_method = stripe_client.v1.payment_methods.attach(
            clinic.card, params={"customer": customer.id}
        )
    except stripe.StripeError as error:
        raise DemoError(
            f"creating the localstripe customer of {clinic.name!r} failed: {error}"
        ) from error
    return customer.id, payment_method.id


def _give_new_customer(
    api: ApiClient,
    stripe_client: stripe.StripeClient,
    clinic: DemoClinic,
    tenant_id: int,
) -> None:
    customer, payment_method = _create_customer(stripe_client, clinic)
    api.call(
        "PATCH",
        f"/v1/tenants/{tenant_id}",
        expected=(200,),
        body={
            "stripe_customer_id": customer,
            "stripe_payment_method_id": payment_method,
        },
    )


def _create_clinic(
    api: ApiClient, stripe_client: stripe.StripeClient, clinic: DemoClinic
) -> int:
    """Create a localstripe customer with the clinic's card, then the tenant."""
    customer, payment_method = _create_customer(stripe_client, clinic)
    _, tenant = api.call(
        "POST",
        "/v1/tenants",
        expected=(201,),
        body={
            "name": clinic.name,
            "time_zone": clinic.time_zone,
            "plan_price_cents": clinic.plan_price_cents,
            "currency": clinic.currency,
            "stripe_customer_id": customer,
            "stripe_payment_method_id": payment_method,
        },
    )
    return int(tenant["id"])
