"""Worker entry module that profiles its threads: ``dramatiq bench._profiled_worker``.

Runs the same job types as ``bench._worker`` (the product's and the bench's
no-op) and writes per-thread CPU profiles to the folder named by
VETQUEUE_BENCH_PROFILE_DIR.
"""

import os
from pathlib import Path

from bench._profiling import PROFILE_DIR_VARIABLE, ThreadProfiler
from bench._worker import broker

broker.add_middleware(ThreadProfiler(Path(os.environ[PROFILE_DIR_VARIABLE])))
