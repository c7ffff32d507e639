"""Worker entry module: ``dramatiq actors.worker``.

Dramatiq's command line imports this module and consumes with the global
broker, so the module sets the broker up when it is imported.
"""

from actors.broker import setup_broker
from infra.logging import configure_logging
from infra.settings import get_settings

configure_logging(get_settings().log_level)
broker = setup_broker()
