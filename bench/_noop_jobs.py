"""No-op jobs for the pipeline benchmark: a vetqueue job type and a bare actor.

``bench_noop`` is registered in the job registry, so ``setup_broker`` declares
it with the ledger middleware like every product job type. The bare actor
runs on a broker of its own with Dramatiq's default middleware only, because
the ledger middleware dead-letters every message that has no ledger row.
"""

from __future__ import annotations

import dramatiq
from dramatiq.brokers.redis import RedisBroker

from actors.registry import JobParams, job_type
from infra.settings import Settings

LEDGER_QUEUE = "billing"
BARE_QUEUE = "bench_bare"
BARE_ACTOR = "bench_bare_noop"


class NoopParams(JobParams):
    run: str
    index: int


@job_type(
    queue=LEDGER_QUEUE,
    params=NoopParams,
    time_limit_ms=60_000,
    max_retries=0,
    natural_key=lambda params: f"bench-noop:{params.run}:{params.index}",
)
def bench_noop(params: NoopParams) -> None:
    """Do nothing, so that only the ledger's and the broker's work is measured."""


def bare_broker(settings: Settings) -> RedisBroker:
    """Create a Redis broker with Dramatiq's default middleware and no ledger."""
    return RedisBroker(url=settings.redis_url, namespace=settings.dramatiq_namespace)


def declare_bare_noop(broker: dramatiq.Broker) -> dramatiq.Actor:
    """Declare the plain Dramatiq no-op actor, with the options of ``bench_noop``."""

    @dramatiq.actor(
        broker=broker,
        actor_name=BARE_ACTOR,
        queue_name=BARE_QUEUE,
        time_limit=60_000,
        max_retries=0,
    )
    def bench_bare_noop(run: str, index: int) -> None:
        """Do nothing."""

    return bench_bare_noop
