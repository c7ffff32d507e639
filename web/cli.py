"""The ``flask --app web keys`` commands: create, list and revoke API keys."""

from __future__ import annotations

import re
import unicodedata

import click
from flask.cli import AppGroup
from sqlalchemy import func, select

from infra.db import transaction
from models.api_keys import DISPLAY_PREFIX_CHARS, ApiKey, ApiKeyRole, create_api_key
from models.tenants import Tenant

keys = AppGroup("keys", help="Create, list and revoke API keys.")


class TenantIdType(click.ParamType):
    """A tenant id written with the digits 0-9 only, as the API takes it.

    click's own integer types parse with int(), which also reads other
    scripts' digits.
    """

    name = "integer"

    def convert(
        self, value: object, param: click.Parameter | None, ctx: click.Context | None
    ) -> int:
        if isinstance(value, int):
            return value
        text = str(value)
        if not re.fullmatch(r"[0-9]{1,19}", text) or not 1 <= int(text) < 2**63:
            self.fail(
                f"{text!r} is not a tenant id: expected a whole number from 1 "
                "written with the digits 0-9",
                param,
                ctx,
            )
        return int(text)


@keys.command("create")
@click.option(
    "--role",
    type=click.Choice([role.value for role in ApiKeyRole]),
    required=True,
    help="operator: every tenant and the operator endpoints; tenant: one tenant.",
)
@click.option(
    "--tenant-id",
    type=TenantIdType(),
    help="Tenant the key belongs to; required with --role tenant.",
)
@click.option(
    "--name",
    required=True,
    help="Label for the key's owner or use, up to 200 characters.",
)
def create_key(role: str, tenant_id: int | None, name: str) -> None:
    """Create an API key and print its secret on the last line.

    The secret is stored only as a hash, so this is the one time it is shown.
    """
    key_role = ApiKeyRole(role)
    if key_role == ApiKeyRole.TENANT and tenant_id is None:
        raise click.UsageError("--tenant-id is required with --role tenant")
    if key_role == ApiKeyRole.OPERATOR and tenant_id is not None:
        raise click.UsageError("--tenant-id is only valid with --role tenant")
    name = name.strip()
    if not 1 <= len(name) <= 200:
        raise click.BadParameter("expected 1 to 200 characters", param_hint="--name")
    # `keys list` prints tab-separated columns, which a tab or newline in a
    # name would shift.
    if any(unicodedata.category(character).startswith("C") for character in name):
        raise click.BadParameter(
            "must not contain control or format characters such as tabs",
            param_hint="--name",
        )

    with transaction() as session:
        if tenant_id is not None and session.get(Tenant, tenant_id) is None:
            raise click.ClickException(
                f"tenant {tenant_id} not found; create it with POST /v1/tenants first"
            )
        key, secret = create_api_key(
            session, name=name, role=key_role, tenant_id=tenant_id
        )
        key_id, prefix = key.id, key.display_prefix

    owner = f"tenant {tenant_id}" if tenant_id is not None else "operators"
    click.echo(f"Created API key {key_id} ({prefix}) for {owner}, named {name!r}.")
    click.echo("Store the secret now; it is not shown again:")
    click.echo(secret)


@keys.command("list")
def list_keys() -> None:
    """List API keys by id, prefix, role, tenant, name and revocation time."""
    with transaction() as session:
        rows = session.scalars(select(ApiKey).order_by(ApiKey.id)).all()
    for key in rows:
        revoked = key.revoked_at.isoformat() if key.revoked_at else "active"
        click.echo(
            f"{key.id}\t{key.display_prefix}\t{key.role.value}\t"
            f"{key.tenant_id or '-'}\t{key.name}\t{revoked}"
        )


@keys.command("revoke")
@click.option(
    "--prefix",
    required=True,
    help="The key's display prefix, the first 10 characters of its secret.",
)
def revoke_key(prefix: str) -> None:
    """Revoke the active API key with this prefix; requests with it get 401."""
    with transaction() as session:
        matches = session.scalars(
            select(ApiKey).where(
                ApiKey.display_prefix == prefix, ApiKey.revoked_at.is_(None)
            )
        ).all()
        if not matches:
            if len(prefix) != DISPLAY_PREFIX_CHARS:
                raise click.ClickException(
                    f"a key's prefix has {DISPLAY_PREFIX_CHARS} characters, as "
                    f"'flask --app web keys list' shows them; got {len(prefix)} "
                    f"in {prefix!r}"
                )
            raise click.ClickException(
                f"no active API key has prefix {prefix!r}; "
                "see 'flask --app web keys list'"
            )
        if len(matches) > 1:
            ids = ", ".join(str(key.id) for key in matches)
            raise click.ClickException(
                f"prefix {prefix!r} matches {len(matches)} active keys ({ids}); "
                "nothing was revoked"
            )
        key = matches[0]
        key.revoked_at = func.now()
        key_id = key.id
    click.echo(f"Revoked API key {key_id} ({prefix}).")
