"""nn/parallel.py: a batch split over threads gives the whole batch's numbers (outputs, input
and parameter gradients, BatchNorm's statistics and running statistics), small batches and
Dropout stay whole, and a failing slice raises instead of leaving the others at the barrier."""
import threading

import numpy as np
import pytest

from attacks.adversarial_training import adversarial_step, standard_step
from attacks.gradient import loss_and_gradients
from nn import SGD, BatchNorm2d, Dropout, Flatten, Sequential, parallel, reference_cnn
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


def test_a_split_forward_allows_one_backward(two_threads):
    model = reference_cnn()
    x, t = batch(SPLIT)
    logits = model.forward(x)
    model.backward(np.ones_like(logits))
    with pytest.raises(RuntimeError, match="without a forward"):
        model.backward(np.ones_like(logits))


@pytest.mark.parametrize("step", ["standard", "adversarial"])
def test_training_steps_split_follow_the_same_path(step):
    x, t = batch(SPLIT, seed=1)
    states = []
    for split in (False, True):
        model, opt = reference_cnn(batch_norm=True), SGD(lr=0.05, momentum=0.9)
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
        np.testing.assert_allclose(states[0][name], states[1][name], rtol=1e-4, atol=1e-5)


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


def test_a_failing_slice_raises_and_no_thread_waits(two_threads):
    """The second slice fails before BatchNorm's barrier; the first, waiting there, is freed."""
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
    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=30)
    assert not worker.is_alive(), "a split pass hung after one slice failed"
    assert isinstance(outcome.get("error"), ValueError)
    x[-1] = 0.5
    assert model.forward(x).shape == (SPLIT, 10)  # the pool still works


def test_host_threads_follow_the_blas_setting():
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1, user_api="blas"):
        with parallel.host_threads() as n:
            assert n == 1 and parallel.threads() == 1
    with threadpool_limits(2, user_api="blas"):
        with parallel.host_threads() as n:
            assert n == 2 and parallel.threads() == 2
        assert parallel.threads() == 1


class RecordsErrstate(Layer):
    seen = []

    def forward(self, x):
        self.seen.append(np.geterr()["over"])
        return x


def test_every_slice_runs_under_the_callers_errstate(two_threads):
    """The training loop silences overflow with np.errstate, which is per thread: each slice
    must run in the caller's context, or a diverging run warns from the pool's thread."""
    model = Sequential(RecordsErrstate(), *reference_cnn().layers)
    x, _ = batch(SPLIT)
    RecordsErrstate.seen.clear()
    with np.errstate(over="ignore"):
        model.forward(x)
    assert RecordsErrstate.seen == ["ignore", "ignore"]


def test_exchanges_called_back_to_back_give_every_call_its_own_parts():
    """BatchNorm's exchange at one barrier per call: threads that call it again at once (as no
    layer does, here in a tight loop) still never read a part handed in for the next call, also
    when two layers take turns as in a backward pass (BN 1, BN 2, BN 2, BN 1, ...)."""
    n, calls = 3, 3000
    exchanges = parallel._Exchange(n)
    wrong = []

    def replica(k):
        layers = [exchanges.of(k), exchanges.of(k)]  # what _replica gives each BatchNorm layer
        for i in range(calls):
            s = sum(p for (p,) in layers[(i + 1) // 2 % 2](np.array(i * 10 + k)))
            if s != n * i * 10 + n * (n - 1) // 2:
                wrong.append((k, i, int(s)))

    threads = [threading.Thread(target=replica, args=(k,)) for k in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads) and not wrong, wrong[:5]
