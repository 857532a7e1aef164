"""Loads bench/worker_trace.py into a worker started by bench_streaming.py --trace."""

import os

if os.environ.get("JOURNEYMAP_BENCH_TRACE"):
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import worker_trace

    worker_trace.install(os.environ["JOURNEYMAP_BENCH_TRACE"])
