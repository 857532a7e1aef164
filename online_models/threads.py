"""One BLAS thread for the models' batch refits.

The refits (logistic Newton steps, EM, lookalike distances) are small matrix products: spread
over BLAS threads on a busy machine they run 10-30x *slower* than on one thread (measured on a
shared 2-core host), and they would compete with the stream's own work anyway.
"""

from __future__ import annotations

from threadpoolctl import threadpool_limits


def one_blas_thread() -> threadpool_limits:
    """Context manager: BLAS limited to one thread inside, restored on exit."""
    return threadpool_limits(limits=1, user_api="blas")
