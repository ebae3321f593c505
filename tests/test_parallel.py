"""nn/parallel.py: a batch split over worker processes gives the whole batch's numbers
(outputs, input and parameter gradients, BatchNorm's statistics and running statistics), small
batches, Dropout and layers a worker cannot rebuild stay whole, a failing slice raises instead of
leaving the others waiting, a worker that dies is replaced, and collected models are dropped."""
import gc
import os
import signal
import socket
import sys
import threading
import types

import numpy as np
import pytest

from attacks.adversarial_training import adversarial_step, standard_step
from attacks.gradient import loss_and_gradients
from nn import (
    SGD,
    BatchNorm2d,
    Dropout,
    Flatten,
    Sequential,
    no_grad,
    parallel,
    reference_cnn,
    workers,
)
from nn.gradcheck import as_float64
from nn.layers import Layer


@pytest.fixture
def two_threads():
    parallel.use_threads(2)
    yield
    parallel.use_threads(1)


SPLIT = 2 * parallel.MIN_ROWS  # the smallest batch that two threads split


def batch(n, seed=0):
    rng = np.random.default_rng(seed)
    return rng.random((n, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, n)


def close(a, b):
    scale = max(float(np.abs(a).max()), 1e-6)
    np.testing.assert_allclose(a / scale, b / scale, rtol=0, atol=1e-10)


def one_pass(bn, train, n, split, **flags):
    """loss_and_gradients of a fresh reference_cnn on n images, in float64 (in float32, sums
    added in another order can flip a near-tie of max pooling); its state after the pass."""
    model = as_float64(reference_cnn(batch_norm=bn))
    model.train() if train else model.eval()
    x, t = batch(n)
    x = x.astype(np.float64)
    parallel.use_threads(2 if split else 1)
    try:
        assert parallel.worth_splitting(model, x) == split
        p = loss_and_gradients(model, x, t, **flags)
        return p, model.state_dict(), model
    finally:
        parallel.use_threads(1)


@pytest.mark.parametrize("bn, train", [(False, True), (True, True), (True, False)])
@pytest.mark.parametrize("n", [SPLIT, SPLIT + 1])
def test_a_split_pass_gives_the_whole_batch_numbers(bn, train, n):
    whole, whole_state, _ = one_pass(bn, train, n, split=False)
    split, split_state, model = one_pass(bn, train, n, split=True)
    assert model._split is None  # the backward used it up
    close(whole.logits, split.logits)
    close(whole.dx, split.dx)
    assert whole.grads.keys() == split.grads.keys()
    for name in whole.grads:
        if name not in ("0.b", "4.b"):  # a bias before BatchNorm has no gradient: all rounding
            close(whole.grads[name], split.grads[name])
    for name in whole_state:  # BatchNorm's running statistics moved by the whole batch's
        close(whole_state[name], split_state[name])


def test_split_batch_norm_combines_slices_far_from_zero_and_from_each_other(two_threads):
    """Float32 channels around 1,000 whose two slices differ in mean by 3: the split statistics
    still match the whole batch's float64 ones (a variance from sums of squares about zero
    would lose every digit: 1,000**2 * float32's 1e-7 is the size of the variance itself)."""
    model = Sequential(BatchNorm2d(3)).train()
    rng = np.random.default_rng(0)
    x = 1000 + rng.standard_normal((SPLIT, 3, 4, 4))
    x[SPLIT // 2:] += 3
    assert parallel.worth_splitting(model, x)
    out = model.forward(x.astype(np.float32))
    mean, var = x.mean(axis=(0, 2, 3), keepdims=True), x.var(axis=(0, 2, 3), keepdims=True)
    np.testing.assert_allclose(out, (x - mean) / np.sqrt(var + 1e-5), rtol=0, atol=2e-3)


def test_flags_reach_every_slice(two_threads):
    model = reference_cnn(batch_norm=True)
    x, t = batch(SPLIT)
    p = loss_and_gradients(model, x, t, input_grad=False)
    assert p.dx is None and set(p.grads) == set(model.params)
    p = loss_and_gradients(model, x, t, param_grads=False)
    assert p.dx.shape == x.shape and p.grads == {}


def test_modes_set_after_the_first_split_pass_reach_the_workers(two_threads):
    model = reference_cnn(batch_norm=True).train()
    x, t = batch(SPLIT)
    standard_step(model, SGD(lr=0.1), x, t)  # the workers now hold the model, in train mode
    model.eval()
    split = model.forward(x)
    parallel.use_threads(1)
    np.testing.assert_allclose(split, model.forward(x), rtol=1e-5, atol=1e-5)


def test_a_split_forward_allows_one_backward(two_threads):
    model = reference_cnn()
    x, t = batch(SPLIT)
    logits = model.forward(x)
    model.backward(np.ones_like(logits))
    with pytest.raises(RuntimeError, match="without a forward"):
        model.backward(np.ones_like(logits))


def test_a_split_forward_under_no_grad_keeps_nothing_anywhere(two_threads):
    """The same outputs as a forward that keeps its caches; nothing kept here or in the
    workers, so a backward raises, and the next forward keeps its caches again."""
    model = reference_cnn().eval()
    x, _ = batch(SPLIT)
    logits = model.forward(x)
    with no_grad():
        np.testing.assert_array_equal(model.forward(x), logits)
    assert model._split is None and all(layer._cache is None for layer in model.layers)
    with pytest.raises(RuntimeError, match="without a forward"):
        model.backward(np.ones_like(logits))
    model.forward(x)
    assert model.backward(np.ones_like(logits))[0].shape == x.shape


@pytest.mark.parametrize("step", ["standard", "adversarial"])
def test_training_steps_split_follow_the_same_path(step):
    """Three steps in float64 (float32's rounding flips near-ties of max pooling by the second)."""
    x, t = batch(SPLIT, seed=1)
    x = x.astype(np.float64)
    states = []
    for split in (False, True):
        model, opt = as_float64(reference_cnn(batch_norm=True)), SGD(lr=0.05, momentum=0.9)
        parallel.use_threads(2 if split else 1)
        try:
            for _ in range(3):
                if step == "standard":
                    standard_step(model, opt, x, t)
                else:
                    adversarial_step(model, opt, x, t, 0.3)
        finally:
            parallel.use_threads(1)
        states.append(model.state_dict())
    for name in states[0]:
        np.testing.assert_allclose(states[0][name], states[1][name], rtol=1e-9, atol=1e-12)


def test_small_batches_dropout_and_other_arrays_stay_whole(two_threads):
    x, _ = batch(SPLIT)
    assert parallel.worth_splitting(reference_cnn(), x)
    assert not parallel.worth_splitting(reference_cnn(), x[:-1])
    assert not parallel.worth_splitting(Sequential(Dropout(0.5), Flatten()), x)
    xs = pytest.importorskip("array_api_strict")
    assert not parallel.worth_splitting(reference_cnn(), xs.asarray(x))


class FailsOnBrightImages(Layer):
    def forward(self, x):
        if float(x.max()) > 5:
            raise ValueError("too bright")
        return x


def test_a_failing_slice_raises_and_no_process_waits(two_threads):
    """The second slice fails before BatchNorm's exchange; the first, waiting there, is freed,
    and the worker's error is the one raised."""
    model = reference_cnn(batch_norm=True)
    model.layers.insert(1, FailsOnBrightImages())
    x, _ = batch(SPLIT)
    x[-1] = 10.0
    outcome = {}

    def run():
        try:
            model.forward(x)
        except Exception as exc:
            outcome["error"] = exc
    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    caller.join(timeout=60)
    assert not caller.is_alive(), "a split pass hung after one slice failed"
    assert isinstance(outcome.get("error"), ValueError)
    x[-1] = 0.5
    assert model.forward(x).shape == (SPLIT, 10)  # the workers still work
    x[0] = 10.0  # now this process's slice fails while the worker waits for the table
    with pytest.raises(ValueError, match="too bright"):
        model.forward(x)
    x[0] = 0.5
    assert model.forward(x).shape == (SPLIT, 10)


class InterruptedOnBrightImages(Layer):
    def forward(self, x):
        if float(x.max()) > 5:
            raise KeyboardInterrupt
        return x


def test_an_interrupt_stops_the_workers_and_the_next_pass_starts_new_ones(two_threads):
    """Ctrl-C reaches this process only (workers ignore it) and may cut a message in half, so
    the workers are stopped rather than trusted; the next pass works on new ones."""
    model = reference_cnn(batch_norm=True)
    model.layers.insert(1, InterruptedOnBrightImages())
    x, _ = batch(SPLIT)
    model.forward(x)
    (worker,) = workers.pool(2, [])
    x[0] = 10.0
    with pytest.raises(KeyboardInterrupt):
        model.forward(x)
    assert worker.process.wait(timeout=30) is not None and workers._workers == []
    x[0] = 0.5
    assert model.forward(x).shape == (SPLIT, 10)


def test_a_worker_that_dies_is_named_and_replaced(two_threads):
    model = reference_cnn(batch_norm=True)
    x, t = batch(SPLIT)
    loss_and_gradients(model, x, t)
    (worker,) = workers.pool(2, [])
    os.kill(worker.process.pid, signal.SIGKILL)
    worker.process.wait(timeout=30)
    with pytest.raises(RuntimeError, match="worker process .* ended"):
        loss_and_gradients(model, x, t)
    p = loss_and_gradients(model, x, t)  # a new worker, which gets the model again
    assert p.dx.shape == x.shape and workers.pool(2, [])[0] is not worker


def test_where_no_worker_can_start_batches_run_whole(two_threads, monkeypatch):
    workers.stop_all()

    def fails():
        raise OSError("no processes here")
    monkeypatch.setattr(workers, "Worker", fails)
    model = reference_cnn()
    x, _ = batch(SPLIT)
    with pytest.warns(UserWarning, match="no processes here"):
        assert not parallel.worth_splitting(model, x)
    assert parallel.threads() == 1 and model.forward(x).shape == (SPLIT, 10)


def test_layers_a_worker_cannot_rebuild_run_whole(two_threads):
    class Local(Layer):  # a class defined in a function does not pickle
        def forward(self, x):
            return x

        def backward(self, dout, input_grad=True, param_grads=True):
            return dout, {}
    model = Sequential(Local(), *reference_cnn().layers)
    x, _ = batch(SPLIT)
    assert not parallel.worth_splitting(model, x)
    assert model.forward(x).shape == (SPLIT, 10) and model._split is None


def test_layers_only_this_process_can_import_run_whole(two_threads, monkeypatch):
    """A class from a module the worker cannot import pickles here and fails there."""
    module = types.ModuleType("made_here_only")
    monkeypatch.setitem(sys.modules, module.__name__, module)
    module.Same = type("Same", (Layer,), {"forward": lambda self, x: x,
                                          "__module__": module.__name__})
    model = Sequential(module.Same(), *reference_cnn().layers)
    x, _ = batch(SPLIT)
    assert not parallel.worth_splitting(model, x)
    assert model.forward(x).shape == (SPLIT, 10) and model._split is None


def test_workers_drop_the_models_this_process_collects(two_threads):
    x, _ = batch(SPLIT)
    model = reference_cnn()
    model.forward(x)
    (worker,) = workers.pool(2, [])
    key = parallel._models[model][0]
    assert key in worker.known
    del model
    gc.collect()
    reference_cnn().forward(x)  # the next pass tells the worker first
    assert key not in worker.known
    worker.send("forward", key, ([], np.geterr(), x))
    kind, error = worker.recv()
    assert kind == "failed" and isinstance(error, LookupError)


def test_messages_grow_the_shared_memory_and_copy_their_arrays_out():
    a, b = socket.socketpair()
    files = [workers.memory_file(), workers.memory_file()]
    ours, theirs = workers.Channel(a.detach(), *files), workers.Channel(b.detach(), *files[::-1])
    big = np.arange(2**19, dtype=np.float64)  # 4 MiB: more than the first 1 MiB
    ours.send("one", {"x": big, "y": big[::2]}, 3)
    kind, arrays, n = theirs.recv()
    ours.send("two", big[:2**12] + 1.0)  # 32 KiB: over the start of the file
    theirs.recv()
    assert kind == "one" and n == 3
    np.testing.assert_array_equal(arrays["x"], big)
    np.testing.assert_array_equal(arrays["y"], big[::2])
    arrays["x"][0] = 1.0  # writable
    ours.send("three", np.full(4, 7.0))  # BatchNorm's parts: small, in the pickle itself
    np.testing.assert_array_equal(theirs.recv()[1], np.full(4, 7.0))
    assert bytes(ours.out.map[:32]) == (big[:4] + 1.0).tobytes()


def test_host_threads_follow_the_blas_setting():
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1, user_api="blas"):
        with parallel.host_threads() as n:
            assert n == 1 and parallel.threads() == 1
    with threadpool_limits(2, user_api="blas"):
        with parallel.host_threads() as n:
            assert n == 2 and parallel.threads() == 2
        assert parallel.threads() == 1


class MarksErrstate(Layer):
    def forward(self, x):
        return x * 0 + (np.geterr()["over"] == "ignore")


def test_every_slice_runs_under_the_callers_errstate(two_threads):
    """The training loop silences overflow with np.errstate: each slice must run under the
    caller's, or a diverging run warns from the worker."""
    model = Sequential(MarksErrstate(), Flatten())
    x, _ = batch(SPLIT)
    assert parallel.worth_splitting(model, x)
    with np.errstate(over="ignore"):
        assert model.forward(x).min() == 1
    with np.errstate(over="warn"):
        assert model.forward(x).max() == 0
