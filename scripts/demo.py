"""Run vetqueue on loopback, bill 50 demo clinics for last month, print the outcome.

Usage: ``python -m scripts.demo`` (or ``make demo``) from the repository root.

The demo starts localstripe, the API under gunicorn, one worker and the
scheduler, creates the demo clinics through the API, enqueues the billing run
for the previous month through ``POST /v1/jobs`` and waits until every job has
finished. A second run reuses the clinics and the run, so it adds no invoice.
Exits 1 if a step fails, a job fails or the wait times out.
"""

from __future__ import annotations

import datetime as dt
import signal
import subprocess
import sys
import time
from typing import Any

import stripe

from actors.billing import period_start, previous_month
from scripts import demo_report
from scripts.demo_api import ApiClient
from scripts.demo_data import backdate_signups, ensure_clinics
from scripts.demo_setup import (
    ROOT,
    STATE_DIR,
    STRIPE_API_KEY,
    DemoError,
    check_servers,
    clear_demo_queues,
    create_database,
    demo_environment,
    free_port,
    migrate,
)
from scripts.demo_stack import (
    Stack,
    start_localstripe,
    start_web,
    start_worker_and_scheduler,
)

OPERATOR_KEY_FILE = STATE_DIR / "operator-key"
KEY_COMMAND_TIMEOUT_S = 60.0
JOBS_TIMEOUT_S = 180.0
POLL_INTERVAL_S = 1.0
PROGRESS_INTERVAL_S = 5.0
UNFINISHED_STATUSES = ("enqueued", "running", "retrying")
FINISHED_STATUSES = ("succeeded", "failed")


def main() -> int:
    started = time.monotonic()
    started_at = dt.datetime.now(dt.UTC)
    signal.signal(signal.SIGTERM, _raise_keyboard_interrupt)
    try:
        run(started=started, started_at=started_at)
    except DemoError as error:
        print(f"\nDemo failed: {error}", file=sys.stderr)
        print(f"Logs are in {STATE_DIR}/.", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nDemo interrupted; the processes it started are stopped.")
        return 130
    return 0


def _raise_keyboard_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def run(*, started: float, started_at: dt.datetime) -> None:
    STATE_DIR.mkdir(exist_ok=True)
    check_servers()
    if create_database():
        clear_demo_queues()

    stripe_port, web_port = free_port(), free_port()
    stripe_url = f"http://127.0.0.1:{stripe_port}"
    environment = demo_environment(stripe_api_base=stripe_url)
    migrate(environment)

    with Stack(environment) as stack:
        start_localstripe(stack, stripe_port)
        start_worker_and_scheduler(stack)
        web_url = start_web(stack, web_port)
        print(f"API at {web_url}, localstripe at {stripe_url}, logs in {STATE_DIR}/")

        api = ApiClient(web_url, operator_key(web_url, environment))
        stripe_client = stripe.StripeClient(
            STRIPE_API_KEY, base_addresses={"api": stripe_url}, max_network_retries=0
        )
        clinics = ensure_clinics(api, stripe_client)
        created = sum(clinic.created for clinic in clinics)
        print(f"Demo clinics: {created} created, {len(clinics) - created} reused.")

        period = previous_month()
        backdate_signups(
            [clinic.tenant_id for clinic in clinics],
            created_at=dt.datetime.combine(
                period_start(period), dt.time(), tzinfo=dt.UTC
            ),
        )
        tenant_ids = [clinic.tenant_id for clinic in clinics]
        before = demo_report.period_invoices(api, tenant_ids, period)
        run_job = enqueue_billing_run(api, period)
        run_job = wait_for_jobs(api, stack, run_job["id"], started=started)
        after = demo_report.period_invoices(api, tenant_ids, period)

        demo_report.print_summary(
            api,
            period=period,
            run_job=run_job,
            before=before,
            after=after,
            elapsed_s=time.monotonic() - started,
        )
        check_failures(api, run_job, started_at)


def operator_key(web_url: str, environment: dict[str, str]) -> str:
    """Return the saved operator key if the API accepts it, else create one."""
    if OPERATOR_KEY_FILE.exists():
        saved = OPERATOR_KEY_FILE.read_text().strip()
        status, _ = ApiClient(web_url, saved).request("GET", "/v1/ops/queues")
        if status == 200:
            return saved
        print(f"The saved operator key got HTTP {status}; creating a new one.")

    command = [sys.executable, "-m", "flask", "--app", "web", "keys", "create"]
    command += ["--role", "operator", "--name", "vetqueue demo"]
    try:
        result = subprocess.run(
            command,
            cwd=ROOT,
            env=environment,
            capture_output=True,
            text=True,
            timeout=KEY_COMMAND_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DemoError(
            f"flask keys create timed out after {KEY_COMMAND_TIMEOUT_S:.0f}s"
        ) from None
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        raise DemoError(
            f"flask keys create failed with code {result.returncode}:\n"
            f"{result.stdout}{result.stderr}"
        )
    key = lines[-1].strip()
    OPERATOR_KEY_FILE.touch(mode=0o600)
    OPERATOR_KEY_FILE.write_text(key + "\n")
    print(f"Created an operator key, saved in {OPERATOR_KEY_FILE}.")
    return key


def enqueue_billing_run(api: ApiClient, period: str) -> dict[str, Any]:
    """Enqueue the period's billing run and return the new or the existing job."""
    status, job = api.call(
        "POST",
        "/v1/jobs",
        expected=(200, 202),
        body={"type": "billing_run", "params": {"period": period}},
    )
    state = "enqueued" if status == 202 else f"already exists ({job['status']})"
    print(f"Billing run for {period}: job {job['id']} {state}.")
    return job


def wait_for_jobs(
    api: ApiClient, stack: Stack, run_job_id: str, *, started: float
) -> dict[str, Any]:
    """Wait until the run job and every job due now have finished.

    Jobs whose next attempt is in the future (a retry or a deferral) do not
    count as due. Returns the run job. Raises DemoError on timeout or when a
    process of the stack has exited.
    """
    deadline = time.monotonic() + JOBS_TIMEOUT_S
    next_progress = 0.0
    while True:
        stack.check_running()
        run_job = api.get(f"/v1/jobs/{run_job_id}")
        due = due_jobs(api)
        if run_job["status"] in FINISHED_STATUSES and not due:
            return run_job
        now = time.monotonic()
        if now >= deadline:
            raise DemoError(
                f"timed out after {JOBS_TIMEOUT_S:.0f}s waiting for the jobs to "
                f"finish; the billing run is {run_job['status']} and {len(due)} "
                "jobs are unfinished, the first ones:"
                + demo_report.describe_jobs(due[:5])
            )
        if now >= next_progress:
            print(
                f"  {now - started:5.1f}s  billing run {run_job['status']}, "
                f"unfinished jobs: {len(due)} {demo_report.count_statuses(due)}"
            )
            next_progress = now + PROGRESS_INTERVAL_S
        time.sleep(POLL_INTERVAL_S)


def due_jobs(api: ApiClient) -> list[dict[str, Any]]:
    """Return the unfinished jobs, leaving out those scheduled for later."""
    now = dt.datetime.now(dt.UTC)
    jobs = []
    for status in UNFINISHED_STATUSES:
        for job in api.list_all("/v1/jobs", status=status):
            if not _scheduled_later(job, now):
                jobs.append(job)
    return jobs


def _scheduled_later(job: dict[str, Any], now: dt.datetime) -> bool:
    next_attempt_at = job.get("next_attempt_at")
    if job["status"] == "running" or not next_attempt_at:
        return False
    return dt.datetime.fromisoformat(next_attempt_at) > now


def check_failures(
    api: ApiClient, run_job: dict[str, Any], started_at: dt.datetime
) -> None:
    """Raise DemoError if the run job or any job finished during this run failed."""
    failed = [
        job
        for job in api.list_all("/v1/jobs", status="failed")
        if job.get("finished_at")
        and dt.datetime.fromisoformat(job["finished_at"]) >= started_at
    ]
    if run_job["status"] == "failed" and all(j["id"] != run_job["id"] for j in failed):
        failed.insert(0, run_job)
    if failed:
        raise DemoError(
            f"{len(failed)} jobs failed, the first ones:"
            + demo_report.describe_jobs(failed[:10])
        )


if __name__ == "__main__":
    sys.exit(main())
