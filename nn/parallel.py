"""Data parallelism on the host's cores: one forward and backward pass split over threads.

NumPy runs its element-wise work (im2col, pooling, ReLU, BatchNorm) on one core, and only the
matrix products use more through OpenBLAS's threads. With `use_threads(n)` a Sequential's
forward pass on a batch of at least n * MIN_ROWS images on the host instead cuts the batch into
n slices and runs each, from start to end, in its own thread (NumPy releases the interpreter's
lock inside its loops and matrix products), with one BLAS thread each: every kind of work runs
on every core. Its backward pass runs the same split in reverse.

Each thread has a replica of the model: copies of its layers that share their parameters (one
optimizer step updates them all) but keep their own caches. The replicas' outputs and input
gradients are concatenated and their parameter gradients summed, so the caller sees the whole
batch's numbers, up to float rounding. BatchNorm's statistics must be the whole batch's too:
its replicas meet at a barrier to hand each other their slices' statistics (`_Exchange`), like
PyTorch's SyncBatchNorm. A model with Dropout is never split (its masks would come in thread order).
"""
import contextvars
import copy
import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import reduce
from operator import add

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from .layers import Dropout, _BatchNorm

# images per thread below which a split costs more than it saves: the interpreter's lock
# serialises the Python between NumPy's calls, which small slices make the larger part (on 2 cores:
# 4-24 images per thread 1.1-2.4 times slower than the whole batch, 32 faster, 50 1.15-1.3 times)
MIN_ROWS = 32

_threads = 1
_pool = None
_blas_limit = None
_lock = threading.Lock()  # one split pass at a time: the threads' barriers must pair up


def use_threads(n):
    """Split large host batches over n threads from now on (1: never), each with one BLAS thread
    (n > 1 sets OpenBLAS to one thread for the process; 1 gives it back its threads)."""
    global _threads, _pool, _blas_limit
    if _blas_limit is not None:
        _blas_limit.restore_original_limits()
        _blas_limit = None
    if _pool is not None:
        _pool.shutdown()
        _pool = None
    _threads = max(1, int(n))
    if _threads > 1:
        _blas_limit = threadpool_limits(1, user_api="blas")
        _pool = ThreadPoolExecutor(_threads - 1, thread_name_prefix="nn-parallel")


def use_host_threads():
    """use_threads(the BLAS thread count this process was given, e.g. by OPENBLAS_NUM_THREADS):
    what the entry points call, so that a process told to use one thread stays on one."""
    blas = [p["num_threads"] for p in threadpool_info() if p["user_api"] == "blas"]
    use_threads(max(blas, default=1))
    return _threads


@contextmanager
def host_threads():
    """use_host_threads() for a block (an entry point's whole run), then one thread again."""
    try:
        yield use_host_threads()
    finally:
        use_threads(1)


def threads():
    return _threads


def worth_splitting(model, x):
    """Whether model.forward(x) runs split: threads on, a NumPy batch large enough, no Dropout."""
    return (_threads > 1 and isinstance(x, np.ndarray) and len(x) >= _threads * MIN_ROWS
            and not getattr(model, "is_replica", False)
            and not any(isinstance(layer, Dropout) for layer in model.layers))


class _Exchange:
    """BatchNorm's `exchange` for n replicas: each thread hands in its parts, waits for the
    others, and every thread gets every replica's parts in replica order (so all of them combine
    them bit for bit the same).

    Calls alternate between two tables of parts, so one barrier per call is enough: a thread
    can write a table again only two calls later, after the next call's barrier, which every
    thread reaches only once it has read this call's parts. The count of calls is the replica's,
    over all its BatchNorm layers (one count per layer would send BN 2's and then BN 1's
    backward to the same table)."""

    def __init__(self, n):
        self.tables = [[None] * n, [None] * n]
        self.calls = [0] * n
        self.barrier = threading.Barrier(n)

    def of(self, k):
        def exchange(*parts):
            table = self.tables[self.calls[k] % 2]
            self.calls[k] += 1
            table[k] = parts
            self.barrier.wait()
            return list(table)
        return exchange


def _replica(model, k, exchanges):
    """model's layers, copied: shared parameters, own caches; replica k > 0 updates its own copy
    of BatchNorm's running statistics (the same numbers as replica 0's, which are the model's)."""
    layers = []
    for layer in model.layers:
        r = copy.copy(layer)
        r._cache = None
        if isinstance(layer, _BatchNorm):
            r.exchange = exchanges.of(k)
            if k > 0:
                r.buffers = dict(layer.buffers)
        layers.append(r)
    replica = type(model).__new__(type(model))
    replica.__dict__.update(model.__dict__, layers=layers, is_replica=True, _split=None)
    return replica


def _run(fn, n, exchanges):
    """fn(0) here and fn(1..n-1) on the pool, each in a copy of this thread's context (NumPy's
    errstate lives there); their results in order. If one fails, the barrier breaks (no thread
    waits forever) and the first real error is raised."""
    def guarded(k):
        try:
            return fn(k)
        except BaseException:
            exchanges.barrier.abort()
            raise
    with _lock:
        futures = [_pool.submit(contextvars.copy_context().run, guarded, k)
                   for k in range(1, n)]
        results, errors = [], []
        for k in range(n):
            try:
                results.append(guarded(0) if k == 0 else futures[k - 1].result())
            except BaseException as exc:
                errors.append(exc)
    if errors:
        raise next((e for e in errors if not isinstance(e, threading.BrokenBarrierError)),
                   errors[0])
    return results


def forward(model, x):
    """model.forward(x), split: x (N, ...) -> the concatenated outputs (N, ...)."""
    n = _threads
    bounds = np.linspace(0, len(x), n + 1).astype(int)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    exchanges = _Exchange(n)
    replicas = [_replica(model, k, exchanges) for k in range(n)]
    outs = _run(lambda k: replicas[k].forward(x[slices[k]]), n, exchanges)
    model.clear_caches()
    model._split = (replicas, slices, exchanges)
    return np.concatenate(outs, axis=0)


def backward(model, dout, input_grad, param_grads):
    """model.backward after a split forward: each replica on its slice of dout; the input
    gradients concatenated (None when not input_grad), the parameter gradients summed."""
    replicas, slices, exchanges = model._split
    model._split = None
    parts = _run(lambda k: replicas[k].backward(dout[slices[k]], input_grad, param_grads),
                 len(replicas), exchanges)
    dx = np.concatenate([p[0] for p in parts], axis=0) if input_grad else None
    grads = {name: reduce(add, (p[1][name] for p in parts)) for name in parts[0][1]}
    return dx, grads
