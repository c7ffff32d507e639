"""Create tenants, API keys, the job ledger, platform invoices and charges.

Revision ID: 0001
Revises:
Create Date: 2026-12-04 15:28:28.215728
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "tenants",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("time_zone", sa.String(length=64), nullable=False),
        sa.Column("plan_price_cents", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column(
            "status",
            sa.Enum("active", "past_due", "cancelled", name="tenant_status"),
            nullable=False,
        ),
        sa.Column("stripe_customer_id", sa.String(length=255), nullable=True),
        sa.Column("stripe_payment_method_id", sa.String(length=255), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "currency ~ '^[a-z]{3}$'", name=op.f("ck_tenants_currency_iso_lower")
        ),
        sa.CheckConstraint(
            "plan_price_cents >= 0", name=op.f("ck_tenants_plan_price_not_negative")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tenants")),
    )

    op.create_table(
        "api_keys",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("display_prefix", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column(
            "role", sa.Enum("operator", "tenant", name="api_key_role"), nullable=False
        ),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.CheckConstraint(
            "(role = 'tenant') = (tenant_id IS NOT NULL)",
            name=op.f("ck_api_keys_tenant_key_has_tenant"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_api_keys_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
        sa.UniqueConstraint("key_hash", name=op.f("uq_api_keys_key_hash")),
    )

    op.create_index(
        op.f("ix_api_keys_tenant_id"), "api_keys", ["tenant_id"], unique=False
    )

    op.create_table(
        "jobs",
        sa.Column("id", sa.UUID(), nullable=False),
        sa.Column("type", sa.String(length=64), nullable=False),
        sa.Column("params", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column("dedup_key", sa.Text(), nullable=False),
        sa.Column("queue", sa.String(length=64), nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=True),
        sa.Column(
            "status",
            sa.Enum(
                "enqueued",
                "running",
                "retrying",
                "succeeded",
                "failed",
                name="job_status",
            ),
            nullable=False,
        ),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("deaths", sa.Integer(), nullable=False),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "next_attempt_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("result", postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_jobs_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_jobs")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_jobs_dedup_key")),
    )

    op.create_index("ix_jobs_created_at_id", "jobs", ["created_at", "id"], unique=False)

    op.create_index(
        "ix_jobs_due",
        "jobs",
        ["next_attempt_at"],
        unique=False,
        postgresql_where="status IN ('enqueued', 'retrying')",
    )

    op.create_index("ix_jobs_finished_at", "jobs", ["finished_at"], unique=False)

    op.create_index(
        "ix_jobs_running_lease",
        "jobs",
        ["lease_expires_at"],
        unique=False,
        postgresql_where="status = 'running'",
    )

    op.create_index(
        "ix_jobs_tenant_id_created_at",
        "jobs",
        ["tenant_id", "created_at"],
        unique=False,
    )

    op.create_table(
        "notifications",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.String(length=64), nullable=False),
        sa.Column("dedup_key", sa.String(length=255), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("data", postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("read_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_notifications_tenant_id_tenants"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notifications")),
        sa.UniqueConstraint("dedup_key", name=op.f("uq_notifications_dedup_key")),
    )

    op.create_index(
        op.f("ix_notifications_tenant_id"), "notifications", ["tenant_id"], unique=False
    )

    op.create_table(
        "platform_invoices",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("tenant_id", sa.BigInteger(), nullable=False),
        sa.Column("period_start", sa.Date(), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column("amount_due_cents", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column(
            "status",
            sa.Enum(
                "open", "paid", "payment_failed", "uncollectible", name="invoice_status"
            ),
            nullable=False,
        ),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("awaiting_payment_method", sa.Boolean(), nullable=False),
        sa.Column("last_decline_code", sa.String(length=64), nullable=True),
        sa.Column("stripe_payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("paid_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column(
            "updated_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.CheckConstraint(
            "amount_cents > 0", name=op.f("ck_platform_invoices_amount_positive")
        ),
        sa.CheckConstraint(
            "amount_due_cents >= 0 AND amount_due_cents <= amount_cents",
            name=op.f("ck_platform_invoices_amount_due_in_range"),
        ),
        sa.CheckConstraint(
            "extract(day from period_start) = 1",
            name=op.f("ck_platform_invoices_period_is_month"),
        ),
        sa.ForeignKeyConstraint(
            ["tenant_id"],
            ["tenants.id"],
            name=op.f("fk_platform_invoices_tenant_id_tenants"),
            ondelete="RESTRICT",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_platform_invoices")),
        sa.UniqueConstraint(
            "tenant_id",
            "period_start",
            name=op.f("uq_platform_invoices_tenant_id_period_start"),
        ),
    )

    op.create_index(
        "ix_platform_invoices_due",
        "platform_invoices",
        ["next_attempt_at"],
        unique=False,
        postgresql_where="status IN ('open', 'payment_failed')",
    )

    op.create_table(
        "charge_attempts",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False),
        sa.Column("invoice_id", sa.BigInteger(), nullable=False),
        sa.Column("attempt_number", sa.Integer(), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=False),
        sa.Column("amount_cents", sa.Integer(), nullable=False),
        sa.Column("currency", sa.String(length=3), nullable=False),
        sa.Column(
            "outcome",
            sa.Enum("pending", "succeeded", "declined", "error", name="charge_outcome"),
            nullable=False,
        ),
        sa.Column("stripe_payment_intent_id", sa.String(length=255), nullable=True),
        sa.Column("decline_code", sa.String(length=64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column(
            "created_at",
            sa.DateTime(timezone=True),
            server_default=sa.text("now()"),
            nullable=False,
        ),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["invoice_id"],
            ["platform_invoices.id"],
            name=op.f("fk_charge_attempts_invoice_id_platform_invoices"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_charge_attempts")),
        sa.UniqueConstraint(
            "idempotency_key", name=op.f("uq_charge_attempts_idempotency_key")
        ),
        sa.UniqueConstraint(
            "invoice_id",
            "attempt_number",
            name=op.f("uq_charge_attempts_invoice_id_attempt_number"),
        ),
    )


def downgrade() -> None:
    op.drop_table("charge_attempts")

    op.drop_index(
        "ix_platform_invoices_due",
        table_name="platform_invoices",
        postgresql_where="status IN ('open', 'payment_failed')",
    )

    op.drop_table("platform_invoices")

    op.drop_index(op.f("ix_notifications_tenant_id"), table_name="notifications")

    op.drop_table("notifications")

    op.drop_index("ix_jobs_tenant_id_created_at", table_name="jobs")

    op.drop_index(
        "ix_jobs_running_lease",
        table_name="jobs",
        postgresql_where="status = 'running'",
    )

    op.drop_index("ix_jobs_finished_at", table_name="jobs")

    op.drop_index(
        "ix_jobs_due",
        table_name="jobs",
        postgresql_where="status IN ('enqueued', 'retrying')",
    )

    op.drop_index("ix_jobs_created_at_id", table_name="jobs")

    op.drop_table("jobs")

    op.drop_index(op.f("ix_api_keys_tenant_id"), table_name="api_keys")

    op.drop_table("api_keys")

    op.drop_table("tenants")

    for enum_name in (
        "charge_outcome",
        "invoice_status",
        "job_status",
        "api_key_role",
        "tenant_status",
    ):
        sa.Enum(name=enum_name).drop(op.get_bind(), checkfirst=False)
