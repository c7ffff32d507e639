"""Worker entry module of the pipeline benchmark: ``dramatiq bench._worker``.

Registers the bench's no-op job type, then sets the broker up as
``actors.worker`` does, so the worker runs every product job type as well.
"""

from actors.broker import setup_broker
from bench import _noop_jobs  # noqa: F401 - registers the bench_noop job type
from infra.db import disable_pool_pre_ping
from infra.logging import configure_logging
from infra.settings import get_settings

configure_logging(get_settings().log_level)
disable_pool_pre_ping()
broker = setup_broker()
