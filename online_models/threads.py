"""One BLAS thread for the models' batch refits.

The refits (logistic Newton steps, EM, lookalike distances) are small matrix products: spread
over BLAS threads on a busy machine they run 10-30x *slower* than on one thread (measured on a
shared 2-core host), and they would compete with the stream's own work anyway.

`threadpool_limits(...)` builds a `ThreadpoolController` on every call, which walks every loaded
shared library to find the BLAS ones (~2 ms, a few % of the models' time with a refit every
session batch): the controller is built once, on the first call (by then numpy and scipy, the
libraries the models use, are loaded), and each call only reads and sets the thread counts.
"""

from __future__ import annotations

from typing import Any

from threadpoolctl import ThreadpoolController

_controller: ThreadpoolController | None = None


def one_blas_thread() -> Any:
    """Context manager: BLAS limited to one thread inside, restored on exit."""
    global _controller
    if _controller is None:
        _controller = ThreadpoolController()
    return _controller.limit(limits=1, user_api="blas")
