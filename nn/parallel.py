"""Data parallelism on the host's cores: one forward and backward pass split over processes.

NumPy runs its element-wise work (im2col, pooling, ReLU, BatchNorm) on one core, and only the
matrix products use more through OpenBLAS's threads. With `use_threads(n)` a Sequential's
forward pass on a batch of at least n * MIN_ROWS images on the host instead cuts the batch into
n slices: this process runs the first, and n - 1 worker processes (started once, with one BLAS
thread each) run the others at the same time, from start to end: every kind of work runs on
every core. Its backward pass runs the same split in reverse.

Processes, not threads: NumPy releases the interpreter's lock inside its loops, but a thread
must take it back after each of the few hundred NumPy calls of a step, and on a 2-core virtual
machine each hand-over can wait for the other thread's Python or for a sleeping core to wake:
two threads in one process ran the exercise's step 15-30% slower each than one alone, two
processes did not slow each other down (docs/speed.md). A worker (nn/workers.py) gets the
model's layers once, then with every pass only what changes, the parameters, running
statistics and modes, and its slice; it sends back its outputs and gradients.

Each slice has a replica of the model: its layers copied, with their own caches; this process's
shares the model's arrays. The replicas' outputs and input gradients are concatenated and their
parameter gradients summed, so the caller sees the whole batch's numbers, up to float rounding.
BatchNorm's statistics must be the whole batch's too: at each BatchNorm layer every worker sends
its slice's parts here and gets back the table of all slices' parts, in slice order, so that
every process combines the same numbers (like PyTorch's SyncBatchNorm). A model with Dropout is
never split (its masks would depend on the split), nor one whose layers a worker cannot import.
"""
import copy
import itertools
import pickle
import threading
import warnings
import weakref
from contextlib import contextmanager
from functools import reduce
from operator import add

import numpy as np
from threadpoolctl import threadpool_info, threadpool_limits

from . import workers
from .layers import Dropout, _BatchNorm, keeps_caches

# images per slice below which a split costs more than it saves (on 2 cores with threads: 4-24
# images per slice 1.1-2.4 times slower than the whole batch, 32 faster, 50 1.15-1.3 times)
MIN_ROWS = 32

_threads = 1
_blas_limit = None
_lock = threading.Lock()  # one split pass at a time: each channel carries one conversation
_models = weakref.WeakKeyDictionary()  # model -> (key, its layers' ids) the workers hold, or None
_keys = itertools.count()
_forgotten = []  # keys of collected models, for the workers to drop


def use_threads(n):
    """Split large host batches over n cores from now on (1: never), one BLAS thread each
    (n > 1 sets OpenBLAS to one thread for this process; 1 gives it back its threads)."""
    global _threads, _blas_limit
    if _blas_limit is not None:
        _blas_limit.restore_original_limits()
        _blas_limit = None
    _threads = max(1, int(n))
    if _threads > 1:
        _blas_limit = threadpool_limits(1, user_api="blas")


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
    """Whether model.forward(x) runs split: threads on, a NumPy batch large enough, no Dropout,
    and workers that hold the model's layers (sent to them here the first time)."""
    return (_threads > 1 and isinstance(x, np.ndarray) and len(x) >= _threads * MIN_ROWS
            and not getattr(model, "is_replica", False)
            and not any(isinstance(layer, Dropout) for layer in model.layers)
            and _ready(model) is not None)


def _ready(model):
    """model's key, once every worker of this pass holds its layers (sent the first time, and
    again when they changed); None when its layers do not pickle or a worker cannot rebuild
    them (a class it cannot import): that model always runs whole."""
    ids = tuple(map(id, model.layers))
    key, known_ids = _models.get(model, (None, None))
    if known_ids != ids:
        if key is not None:
            _forgotten.append(key)
        key = next(_keys)
        _models[model] = (key, ids)
        weakref.finalize(model, _forgotten.append, key)
    with _lock:
        try:
            pool = workers.pool(_threads, _forgotten) if key is not None else []
        except (OSError, ValueError, AssertionError) as exc:  # none can start here (not POSIX)
            warnings.warn(f"nn.parallel: no worker process ({exc}); batches now run whole",
                          stacklevel=4)
            use_threads(1)
            return None
        missing = [worker for worker in pool if key not in worker.known]
        if missing and not _send(model, key, missing):
            _models[model], key = (None, ids), None
    return key


def _send(model, key, pool):
    """Whether every worker of pool now holds model's layers under key (each one's reply says it
    rebuilt them); the layers are pickled once for all of them."""
    try:
        layers = pickle.dumps(replica(model, None))  # each worker sets its own exchange
    except Exception:
        return False
    try:
        for worker in pool:
            worker.send("model", key, layers)
        kinds = [worker.recv()[0] for worker in pool]
    except BaseException:  # an interrupt may cut a message in half
        workers.stop_all()
        raise
    for worker, kind in zip(pool, kinds):
        if kind == "done":
            worker.known.add(key)
    return all(kind == "done" for kind in kinds)


def replica(model, exchange):
    """model's layers, copied: the same parameter and buffer dicts, own caches, BatchNorm's
    `exchange`; the replica of slice 0 thus updates the model's own running statistics."""
    layers = []
    for layer in model.layers:
        r = copy.copy(layer)
        r._cache = None
        if isinstance(layer, _BatchNorm):
            r.exchange = exchange
        layers.append(r)
    twin = type(model).__new__(type(model))
    twin.__dict__.update(model.__dict__, layers=layers, is_replica=True, _split=None)
    return twin


class _Pass:
    """One split pass (a forward, then its backward): this process runs slice 0 while the
    workers run theirs, and hands BatchNorm's parts around."""

    def __init__(self, pool):
        self.workers, self.ended = pool, {}

    def exchange(self, *parts):
        """Slice 0's parts and every worker's, in slice order, sent back to every worker."""
        table = [parts]
        for k, worker in enumerate(self.workers):
            kind, value = worker.recv()
            if kind != "parts":  # it failed before this layer
                self.ended[k] = (kind, value)
                raise workers.Abort
            table.append(value)
        for worker in self.workers:
            worker.send("table", table)
        return table

    def run(self, commands, own):
        """Send each worker its command, run own() here; every slice's result in order. If
        one fails, the workers still waiting for a table are told to stop, and the first real
        error is raised. An interrupt may cut a message in half: the workers are then stopped
        (the next pass starts new ones)."""
        self.ended = {}
        with _lock:
            try:
                for worker, command in zip(self.workers, commands):
                    worker.send(*command)
                results, error = [None], None
                try:
                    results[0] = own()
                except Exception as exc:
                    error = exc
                for k, worker in enumerate(self.workers):
                    kind, value = self.ended.pop(k, None) or worker.recv()
                    while kind == "parts":  # waiting for a table this process will not send
                        worker.send("abort", None)
                        kind, value = worker.recv()
                    if kind == "failed" and (error is None or isinstance(error, workers.Abort)):
                        error = value
                    results.append(value)
            except BaseException:
                workers.stop_all()
                raise
        if error is not None:
            raise error
        return results


def forward(model, x):
    """model.forward(x), split: x (N, ...) -> the concatenated outputs (N, ...)."""
    key = _models[model][0]
    bounds = np.linspace(0, len(x), _threads + 1).astype(int)
    slices = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    split = _Pass(workers.pool(_threads, _forgotten))
    mine = replica(model, split.exchange)
    state = [(layer.training, layer.params, layer.buffers) for layer in model.layers]
    keep = keeps_caches()  # False under no_grad: no backward follows, in any process
    commands = [("forward", key, (state, np.geterr(), keep, x[s])) for s in slices[1:]]
    outs = split.run(commands, lambda: mine.forward(x[slices[0]]))
    model.clear_caches()
    model._split = (split, mine, key, slices) if keep else None
    return np.concatenate(outs, axis=0)


def backward(model, dout, input_grad, param_grads):
    """model.backward after a split forward: each replica on its slice of dout; the input
    gradients concatenated (None when not input_grad), the parameter gradients summed."""
    split, mine, key, slices = model._split
    model._split = None
    commands = [("backward", key, (np.geterr(), dout[s], input_grad, param_grads))
                for s in slices[1:]]
    parts = split.run(commands, lambda: mine.backward(dout[slices[0]], input_grad, param_grads))
    dx = np.concatenate([p[0] for p in parts], axis=0) if input_grad else None
    grads = {name: reduce(add, (p[1][name] for p in parts)) for name in parts[0][1]}
    return dx, grads
