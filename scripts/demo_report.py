"""The demo's summary: invoices of the period, jobs and queues, read from the API."""

from __future__ import annotations

import collections
from collections.abc import Iterable
from typing import Any

from scripts.demo_api import ApiClient

UNPAID_STATUSES = ("payment_failed", "uncollectible")
QUEUE_COLUMNS = (
    ("queue", "queue"),
    ("ready", "ready"),
    ("in flight", "in_flight"),
    ("delayed", "delayed"),
    ("dead letters", "dead_letters"),
    ("oldest ready (s)", "oldest_ready_age_s"),
)


def period_invoices(
    api: ApiClient, tenant_ids: list[int], period: str
) -> list[dict[str, Any]]:
    """Return the platform invoices of these tenants for the period (YYYY-MM)."""
    invoices = []
    for tenant_id in tenant_ids:
        for invoice in api.list_all(f"/v1/tenants/{tenant_id}/platform-invoices"):
            if invoice["period"] == period:
                invoices.append(invoice)
    return invoices


def count_statuses(jobs: Iterable[dict[str, Any]]) -> str:
    """Format job counts by status, e.g. ``(enqueued 3, running 8)``."""
    counts = collections.Counter(job["status"] for job in jobs)
    if not counts:
        return ""
    return "(" + _format_counts(counts) + ")"


def describe_jobs(jobs: Iterable[dict[str, Any]]) -> str:
    """Format jobs as ``type dedup_key status: last error`` lines."""
    lines = []
    for job in jobs:
        line = f"\n  {job['type']} {job['dedup_key']} {job['status']}"
        if job.get("last_error"):
            line += f": {job['last_error'][:200]}"
        lines.append(line)
    return "".join(lines)


def print_summary(
    api: ApiClient,
    *,
    period: str,
    run_job: dict[str, Any],
    before: list[dict[str, Any]],
    after: list[dict[str, Any]],
    elapsed_s: float,
) -> None:
    """Print what the billing run did, the ledger's job counts and the queues."""
    ops = api.get("/v1/ops/queues")
    print()
    print(f"Billing run {period}: job {run_job['id']} {run_job['status']}")
    for label, value in _invoice_lines(before, after):
        print(f"  {label:<31} {value}")
    print(f"Jobs by status: {_format_counts(ops['jobs'])}")
    print("Queues:")
    for line in _queue_table(ops["queues"]):
        print(f"  {line}")
    print(f"Elapsed: {elapsed_s:.1f} s")


def _invoice_lines(
    before: list[dict[str, Any]], after: list[dict[str, Any]]
) -> list[tuple[str, str]]:
    statuses = collections.Counter(invoice["status"] for invoice in after)
    unpaid = [i for i in after if i["status"] in UNPAID_STATUSES]
    codes = collections.Counter(
        i["last_decline_code"] for i in unpaid if i["last_decline_code"]
    )
    next_dates = collections.Counter(
        i["next_attempt_at"][:10] for i in unpaid if i["next_attempt_at"]
    )
    awaiting = sum(1 for i in after if i["awaiting_payment_method"])
    return [
        ("invoices created by this run", str(len(after) - len(before))),
        ("invoices that existed before", str(len(before))),
        ("invoices by status", _format_counts(statuses) or "none"),
        ("paid", str(statuses["paid"])),
        ("declined", _with_breakdown(codes.total(), codes)),
        ("unpaid without a decline code", str(len(unpaid) - codes.total())),
        (
            "next attempts scheduled (UTC)",
            _with_breakdown(sum(next_dates.values()), next_dates),
        ),
        ("awaiting a new payment method", str(awaiting)),
    ]


def _with_breakdown(total: int, counts: collections.Counter[str]) -> str:
    if not counts:
        return str(total)
    return f"{total} ({_format_counts(counts, separator=': ')})"


def _format_counts(counts: dict[str, int], *, separator: str = " ") -> str:
    return ", ".join(
        f"{name}{separator}{count}" for name, count in sorted(counts.items())
    )


def _queue_table(queues: list[dict[str, Any]]) -> list[str]:
    rows = [[title for title, _ in QUEUE_COLUMNS]]
    for queue in queues:
        row = []
        for _, field in QUEUE_COLUMNS:
            value = queue.get(field)
            row.append("-" if value is None else str(value))
        rows.append(row)
    widths = [max(len(row[i]) for row in rows) for i in range(len(QUEUE_COLUMNS))]
    return [
        "  ".join(
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
