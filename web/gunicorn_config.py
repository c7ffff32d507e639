"""gunicorn settings of the web process: ``gunicorn -c python:web.gunicorn_config``.

gunicorn loads the app in each worker, and a worker that fails to start is
started again, forever. Checking the settings in the master first makes an
invalid variable stop the web process with one line instead.
"""

from __future__ import annotations

import sys
from typing import Any

from infra.settings import SettingsError, load_settings


def on_starting(server: Any) -> None:
    """Exit before any worker starts if a setting is invalid."""
    try:
        load_settings()
    except SettingsError as error:
        sys.exit(f"web app not started: {error}")
