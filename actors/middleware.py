"""The ledger middleware: starts, fences and records every run of a job."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import random
import threading
import uuid
from typing import Any

import dramatiq
from dramatiq.middleware import Middleware
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.orm import Session

from infra import logging as log_context
from infra.db import (
    close_ledger_connection,
    driver_autocommit,
    ledger_cursor,
    retry_once_if_disconnected,
    transaction,
)
from models.jobs import Claim, Job, JobStatus, claim, finish, mark_pending_failed

logger = logging.getLogger(__name__)

# Message option counting how often the ledger failed to claim a message.
UNCLAIMED_TRIES_OPTION = "vetqueue_unclaimed_tries"
UNCLAIMED_MAX_DELAY_S = 300


@dataclasses.dataclass
class RunContext:
    """The job a worker thread is running, set for the length of one message."""

    job_id: uuid.UUID | None
    attempt: int
    message_id: str
    skip: bool = False
    retry_eta_ms: int | None = None
    result: dict[str, Any] | None = None
    log_token: Any = None
    # Set when the job's own final statement recorded its success in the
    # ledger, in the same transaction as its work (see ``success_fence``).
    success_recorded: bool = False


_local = threading.local()


def current_run() -> RunContext | None:
    """Return the job this thread is running, or None outside a job."""
    return getattr(_local, "run", None)


def success_fence() -> dict[str, Any]:
    """Return the parameters with which a job's last statement records its success.

    A job whose work ends in one statement can mark its ledger row succeeded
    in that statement (``models.jobs.succeed_cte``), which saves the ledger
    its own transaction and makes the work and its record commit together.
    The job then calls ``note_success_recorded`` with what the statement
    returned. Outside a job the job id is None and the statement updates no
    ledger row.
    """
    run = current_run()
    if run is None or run.job_id is None:
        return {"job_id": None, "attempt": 0}
    return {"job_id": run.job_id, "attempt": run.attempt}


def note_success_recorded(recorded: bool) -> None:
    """Tell the ledger middleware whether the job's statement recorded its success."""
    run = current_run()
    if run is None:
        return
    if not recorded:
        logger.warning(
            "outcome succeeded not recorded: a newer attempt took the job over"
        )
    # Either way nothing is left to record: the row is succeeded, or it belongs
    # to the newer attempt.
    run.success_recorded = True


class LedgerMiddleware(Middleware):
    """Moves ledger rows through running, succeeded, retrying and failed.

    Add it before Dramatiq's Retries middleware: "after" hooks run in reverse
    order, so this one runs after Retries has failed the message or scheduled
    a retry, and can record which it was and when the retry is due.
    """

    def __init__(self, *, lease_grace_s: float, max_deaths: int) -> None:
        self.lease_grace_s = lease_grace_s
        self.max_deaths = max_deaths

    def before_process_message(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy
    ) -> None:
        _local.run = None
        actor = broker.get_actor(message.actor_name)
        time_limit_ms = message.options.get("time_limit") or actor.options.get(
            "time_limit", 600_000
        )
        lease_s = time_limit_ms / 1000 + self.lease_grace_s

        job_id = _parse_uuid(message.message_id)
        if job_id is None:
            self._reject_unknown(message, reason="message id is not a job id")
            return
        try:
            outcome = retry_once_if_disconnected(
                ledger_cursor,
                lambda cursor: claim(cursor, job_id=job_id, lease_s=lease_s),
            )
        except Exception:
            self._send_unclaimed_again(broker, message, job_id)
            return
        if not outcome.started:
            self._skip(message, job_id, outcome)
            return

        run = RunContext(
            job_id=job_id, attempt=outcome.attempt, message_id=message.message_id
        )
        _local.run = run
        run.log_token = log_context.bind(
            job_id=str(job_id), actor=message.actor_name, attempt=outcome.attempt
        )
        if outcome.deaths >= self.max_deaths:
            reason = (
                f"lease expired {outcome.deaths} times while running this job (a "
                "worker died, or could not record the outcome); marked failed "
                "instead of running again"
            )
            self._record(run, JobStatus.FAILED, error=reason)
            logger.error("job failed after repeated lease expiries: %s", reason)
            run.skip = True
            message.fail()
            return
        logger.debug("job started")

    def _send_unclaimed_again(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy, job_id: uuid.UUID
    ) -> None:
        """Send a message that the ledger could not claim again after a delay.

        This delivery is skipped and acknowledged.

        The job has not run, so the wait does not use up one of its retries: a
        job without retries would otherwise fail because the database was
        down. The delay doubles with each new try, up to a limit.
        """
        tries = message.options.get(UNCLAIMED_TRIES_OPTION, 0) + 1
        delay_s = min(UNCLAIMED_MAX_DELAY_S, 2**tries) * random.uniform(0.5, 1)
        extra = {"job_id": str(job_id), "actor": message.actor_name}
        try:
            broker.enqueue(
                message.copy(options={UNCLAIMED_TRIES_OPTION: tries}),
                delay=int(delay_s * 1000),
            )
        except Exception:
            # Without a run context the actor raises LedgerUnavailable, so
            # Dramatiq retries the message instead of acknowledging it.
            logger.error(
                "claiming the job in the ledger failed, and so did sending it again;"
                " Dramatiq will retry the message",
                extra=extra,
                exc_info=True,
            )
            return
        # While the database is down every waiting message comes back here,
        # so only the first try logs the traceback.
        logger.error(
            "claiming the job in the ledger failed; the message is sent again in"
            " %.1f s (try %d)",
            delay_s,
            tries,
            extra=extra,
            exc_info=tries == 1,
        )
        _local.run = RunContext(
            job_id=job_id, attempt=0, message_id=message.message_id, skip=True
        )

    def _skip(
        self, message: dramatiq.MessageProxy, job_id: uuid.UUID, outcome: Claim
    ) -> None:
        if outcome.reason == "no ledger row":
            self._reject_unknown(message, reason="no ledger row for this message id")
            return
        _local.run = RunContext(
            job_id=job_id, attempt=0, message_id=message.message_id, skip=True
        )
        logger.debug(
            "skipping message: job %s",
            outcome.reason,
            extra={"job_id": str(job_id), "actor": message.actor_name},
        )

    def _reject_unknown(self, message: dramatiq.MessageProxy, *, reason: str) -> None:
        """Record a message that bypassed the ledger as failed, and dead-letter it."""
        with transaction() as session:
            job_id = _record_stray_message(
                session, message, error=f"malformed message: {reason}"
            )
        logger.error(
            "malformed message dead-lettered: %s",
            reason,
            extra={"message_id": message.message_id, "actor": message.actor_name},
        )
        _local.run = RunContext(
            job_id=job_id, attempt=0, message_id=message.message_id, skip=True
        )
        message.fail()

    def after_nack(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy
    ) -> None:
        """Record dead letters that never reached the ledger as failed jobs.

        Dramatiq dead-letters a message for an actor this worker does not
        declare before any "before" hook runs. Running jobs are left alone,
        because a newer attempt may own one while an older copy fails.
        """
        error = (
            "dead-lettered without running: no worker declares actor "
            f"{message.actor_name!r}, or the message could not be processed"
        )
        job_id = _parse_uuid(message.message_id)
        with transaction() as session:
            if job_id is not None and session.get(Job, job_id) is not None:
                recorded = mark_pending_failed(session, job_id=job_id, error=error)
            else:
                recorded = (
                    _record_stray_message(session, message, error=error) is not None
                )
        if recorded:
            logger.error(
                "dead letter recorded as a failed job",
                extra={"message_id": message.message_id, "actor": message.actor_name},
            )

    def before_enqueue(
        self, broker: dramatiq.Broker, message: dramatiq.Message, delay: int | None
    ) -> None:
        # Retries re-enqueues the failed message with a delay; its eta is the
        # job's next attempt time.
        run = current_run()
        if (
            run is not None
            and delay is not None
            and message.message_id == run.message_id
        ):
            run.retry_eta_ms = message.options.get("eta")

    def after_process_message(
        self,
        broker: dramatiq.Broker,
        message: dramatiq.MessageProxy,
        *,
        result: Any = None,
        exception: BaseException | None = None,
    ) -> None:
        run = current_run()
        _local.run = None
        if run is None:
            return
        try:
            if not run.skip:
                self._record_outcome(run, message, exception=exception)
        except Exception:
            logger.error(
                "recording the job's outcome failed; the job stays running until"
                " its lease expires, then the sweeper sends it again",
                extra={"job_id": str(run.job_id), "actor": message.actor_name},
                exc_info=True,
            )
        finally:
            if run.log_token is not None:
                log_context.unbind(run.log_token)

    def before_worker_thread_shutdown(
        self, broker: dramatiq.Broker, thread: threading.Thread
    ) -> None:
        close_ledger_connection()

    def after_skip_message(
        self, broker: dramatiq.Broker, message: dramatiq.MessageProxy
    ) -> None:
        run = current_run()
        _local.run = None
        if run is not None and run.log_token is not None:
            log_context.unbind(run.log_token)

    def _record_outcome(
        self,
        run: RunContext,
        message: dramatiq.MessageProxy,
        *,
        exception: BaseException | None,
    ) -> None:
        if run.success_recorded:
            if exception is not None:
                logger.error(
                    "job raised after its success was recorded: %s: %s",
                    type(exception).__name__,
                    exception,
                )
            return
        if exception is None:
            self._record(run, JobStatus.SUCCEEDED, result=run.result)
            logger.debug("job succeeded")
            return

        error = f"{type(exception).__name__}: {exception}"
        if message.failed:
            self._record(run, JobStatus.FAILED, error=error)
            logger.warning("job failed: %s", error)
            return

        next_attempt_at = None
        if run.retry_eta_ms is not None:
            next_attempt_at = dt.datetime.fromtimestamp(run.retry_eta_ms / 1000, dt.UTC)
        self._record(
            run, JobStatus.RETRYING, error=error, next_attempt_at=next_attempt_at
        )
        logger.info("job will retry at %s after: %s", next_attempt_at, error)

    def _record(self, run: RunContext, status: JobStatus, **fields: Any) -> None:
        assert run.job_id is not None
        # A failed job runs again only when an operator retries it, so its
        # outcome must survive a PostgreSQL crash. Failures are rare, so the
        # durable commit adds little to the ledger's cost.
        lend = driver_autocommit if status == JobStatus.FAILED else ledger_cursor
        recorded = retry_once_if_disconnected(
            lend,
            lambda target: finish(
                target, job_id=run.job_id, attempt=run.attempt, status=status, **fields
            ),
        )
        if not recorded:
            logger.warning(
                "outcome %s not recorded: a newer attempt took the job over",
                status.value,
            )


def _parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None


def _record_stray_message(
    session: Session, message: dramatiq.MessageProxy, *, error: str
) -> uuid.UUID | None:
    """Insert a failed job for a message with no ledger row, once per message id."""
    job_id = uuid.uuid4()
    inserted = session.scalar(
        insert(Job)
        .values(
            id=job_id,
            type=message.actor_name[:64],
            params=message.kwargs if isinstance(message.kwargs, dict) else {},
            dedup_key=f"message:{message.message_id}",
            queue=message.queue_name,
            status=JobStatus.FAILED,
            attempts=1,
            last_error=error,
            finished_at=dt.datetime.now(dt.UTC),
        )
        .on_conflict_do_nothing(index_elements=["dedup_key"])
        .returning(Job.id)
    )
    return inserted
