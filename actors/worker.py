"""Worker entry module: ``dramatiq actors.worker``.

Dramatiq's command line imports this module and consumes with the global
broker, so the module sets the broker up when it is imported.
"""

import sys

from actors.broker import setup_broker
from infra.db import disable_pool_pre_ping
from infra.logging import configure_logging
from infra.settings import SettingsError, get_settings

try:
    settings = get_settings()
except SettingsError as error:
    sys.exit(f"worker not started: {error}")

configure_logging(settings.log_level)
disable_pool_pre_ping()
broker = setup_broker(settings)
