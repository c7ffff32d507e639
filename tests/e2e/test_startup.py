"""Every entry point stops with one line naming an invalid setting."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("argv", "prefix"),
    [
        (["-m", "alembic", "upgrade", "head"], "migration not started"),
        (["-m", "flask", "--app", "web", "keys", "list"], "web app not started"),
        (["-m", "scheduler"], "scheduler not started"),
    ],
)
def test_invalid_setting_stops_with_one_line(argv, prefix):
    environment = {**os.environ, "DB_POOL_SIZE": "abc"}

    finished = subprocess.run(
        [sys.executable, *argv],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )

    lines = finished.stderr.strip().splitlines()
    assert finished.returncode == 1
    assert len(lines) == 1, finished.stderr
    assert lines[0].startswith(f"{prefix}: invalid configuration: DB_POOL_SIZE:")
