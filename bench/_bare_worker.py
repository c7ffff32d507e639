"""Worker entry module of bare Dramatiq for the pipeline benchmark.

Run as ``dramatiq bench._bare_worker``: a Redis broker with Dramatiq's default
middleware on the same Redis database and namespace as vetqueue's broker, and
the no-op actor as its only actor.
"""

import dramatiq

from bench._noop_jobs import bare_broker, declare_bare_noop
from infra.settings import get_settings

broker = bare_broker(get_settings())
dramatiq.set_broker(broker)
bench_bare_noop = declare_bare_noop(broker)
