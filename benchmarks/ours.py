"""Our side of bench_train.py: the workload (one fixed batch, the training settings), the `Ours`
bench over nn/ and attacks/, timed blocks, tracemalloc peaks and the per-layer profile of our
standard step with a breakdown of each convolution."""
import gc
import statistics
import time
import tracemalloc

import numpy as np

from attacks.adversarial_training import adversarial_step, standard_step
from attacks.evaluation import evaluate
from attacks.gradient import loss_and_gradients
from nn import EVAL_BATCH, SGD, conv, losses, reference_cnn
from nn.layers import Conv2d

BATCH = 64
ALPHA = 0.3          # FGS step of adversarial training (and of the FGS attack in evaluation)
FGV_ALPHA = 0.6      # evaluate()'s default FGV step
LR, MOMENTUM = 0.01, 0.9
MEASUREMENTS = ("train_step", "adv_step", "fwd_bwd", "eval")


def make_data(n_eval, seed=0):
    """The fixed batch (x, t) and the fixed evaluation set, all on the host."""
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, 1, 28, 28), dtype=np.float32)
    t = rng.integers(0, 10, BATCH).astype(np.int64)
    images = rng.random((n_eval, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, n_eval).astype(np.int64)
    return x, t, images, labels


class Ours:
    name = "ours"

    def __init__(self, bn, x, t, images, labels):
        self.model = reference_cnn(batch_norm=bn, rng=np.random.default_rng(0))
        self.init_state = self.model.state_dict()
        self.x, self.t, self.images, self.labels = x, t, images, labels
        self.reset()

    def reset(self):
        """Initial weights and running statistics, fresh optimizer, train mode."""
        # copies: a load_state_dict that kept the given arrays would let training change them
        self.model.load_state_dict({k: v.copy() for k, v in self.init_state.items()})
        self.model.train()
        self.opt = SGD(lr=LR, momentum=MOMENTUM)

    def train_step(self):
        return standard_step(self.model, self.opt, self.x, self.t)

    def adv_step(self):
        return adversarial_step(self.model, self.opt, self.x, self.t, ALPHA)

    def fwd_bwd(self):
        return loss_and_gradients(self.model, self.x, self.t)

    def eval(self, n=None):
        n = len(self.images) if n is None else n
        return evaluate(self.model, self.images[:n], self.labels[:n], batch_size=EVAL_BATCH)


def time_block(bench, meas, k, warm):
    """Reset bench, optionally one untimed call, then k timed calls; seconds per call."""
    fn = getattr(bench, meas)
    bench.reset()
    if warm:
        fn()
    return [seconds(fn) for _ in range(k)]


def seconds(fn):
    """Wall-clock seconds of one call of fn()."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


# --- memory ----------------------------------------------------------------------------------

def traced_peak_mb(fn):
    """Peak of memory newly allocated during fn() (tracemalloc; NumPy buffers included), MB."""
    gc.collect()
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base, _ = tracemalloc.get_traced_memory()
        fn()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return (peak - base) / 2 ** 20, (current - base) / 2 ** 20


def tracemalloc_peaks(ours, n_eval):
    """tracemalloc peaks (MB) of one steady-state train_step and adv_step (velocities exist) and
    of one evaluation batch."""
    mem = {}
    for meas in ("train_step", "adv_step"):
        ours.reset()
        getattr(ours, meas)()  # steady state: velocities exist
        peak, _ = traced_peak_mb(getattr(ours, meas))
        mem[f"ours_{meas}_tracemalloc_peak_mb"] = peak
    ours.reset()
    peak, _ = traced_peak_mb(lambda: ours.eval(min(n_eval, EVAL_BATCH)))
    mem["ours_eval_batch_tracemalloc_peak_mb"] = peak
    return mem


# --- per-layer profile -----------------------------------------------------------------------

def profile_layers(bn, x, t, reps):
    """Median forward and backward time of every layer of one train-mode step, the loss and the
    optimizer step; plus a breakdown of each convolution on its real input and gradient."""
    model = reference_cnn(batch_norm=bn, rng=np.random.default_rng(0))
    opt = SGD(lr=LR, momentum=MOMENTUM)
    L = len(model.layers)
    fwd = [[] for _ in range(L)]
    bwd = [[] for _ in range(L)]
    loss_t, opt_t = [], []
    conv_io = {}
    for rep in range(reps + 1):  # the first repetition is a warm-up
        h = x
        tf = []
        for i, layer in enumerate(model.layers):
            if isinstance(layer, Conv2d):
                conv_io[i] = {"x": h}
            s = time.perf_counter()
            h = layer.forward(h)
            tf.append(time.perf_counter() - s)
        s = time.perf_counter()
        _, d = losses.softmax_cross_entropy(h, t)
        tl = time.perf_counter() - s
        grads = {}
        tb = [0.0] * L
        for i in reversed(range(L)):
            if i in conv_io:
                conv_io[i]["dout"] = d
            s = time.perf_counter()
            d, g = model.layers[i].backward(d)
            tb[i] = time.perf_counter() - s
            grads.update({f"{i}.{k}": v for k, v in g.items()})
        s = time.perf_counter()
        opt.step(model.params, grads)
        to = time.perf_counter() - s
        if rep:
            for i in range(L):
                fwd[i].append(tf[i])
                bwd[i].append(tb[i])
            loss_t.append(tl)
            opt_t.append(to)
    med = statistics.median
    layers = [{"layer": i, "name": repr(model.layers[i]), "fwd_ms": med(fwd[i]) * 1e3,
               "bwd_ms": med(bwd[i]) * 1e3, "fwd_min_ms": min(fwd[i]) * 1e3,
               "bwd_min_ms": min(bwd[i]) * 1e3} for i in range(L)]
    total = sum(r["fwd_ms"] + r["bwd_ms"] for r in layers) + (med(loss_t) + med(opt_t)) * 1e3
    total_min = (sum(r["fwd_min_ms"] + r["bwd_min_ms"] for r in layers)
                 + (min(loss_t) + min(opt_t)) * 1e3)
    for r in layers:
        r["share"] = (r["fwd_ms"] + r["bwd_ms"]) / total
        r["share_min"] = (r["fwd_min_ms"] + r["bwd_min_ms"]) / total_min
    breakdown = {i: conv_breakdown(model.layers[i], io["x"], io["dout"], reps)
                 for i, io in conv_io.items()}
    return {"images": len(x), "layers": layers, "loss_ms": med(loss_t) * 1e3,
            "optimizer_ms": med(opt_t) * 1e3,
            "loss_min_ms": min(loss_t) * 1e3, "optimizer_min_ms": min(opt_t) * 1e3,
            "total_ms": total, "total_min_ms": total_min, "conv_breakdown": breakdown}


def conv_breakdown(layer, x, dout, reps):
    """The pieces of conv2d_forward / conv2d_backward (nn/conv.py, as they were written when this
    benchmark was written), timed on the layer's real input and output gradient, in ms."""
    W, b = layer.params["W"], layer.params["b"]
    Fo, C, KH, KW = W.shape
    s_, p_ = layer.stride, layer.padding
    W2 = conv._rows(W)  # (F, KH*KW*C), the columns' row order (i, j, c)
    wb = np.concatenate([W2, b.reshape(Fo, 1)], axis=1)
    cols = conv.im2col(x, KH, KW, s_, p_, ones=True)
    d2 = np.transpose(dout, (1, 2, 3, 0)).reshape(Fo, -1)
    dcols = W2.T @ d2
    pieces = {
        "im2col (+ row of ones)": lambda: conv.im2col(x, KH, KW, s_, p_, ones=True),
        "fwd matmul [W b]@cols": lambda: wb @ cols,
        "dout -> (F, OH*OW*N)": lambda: np.transpose(dout, (1, 2, 3, 0)).reshape(Fo, -1),
        "dW, db matmul (cols@d2.T).T": lambda: (cols @ d2.T).T,
        "dX matmul W.T@d2": lambda: W2.T @ d2,
        "col2im": lambda: conv.col2im(dcols, x.shape, KH, KW, s_, p_),
    }
    out = {"shapes": {"cols": list(cols.shape), "d2": list(d2.shape),
                      "d2_is_copy": not np.shares_memory(d2, dout)}}
    for name, fn in pieces.items():
        fn()
        times = [seconds(fn) for _ in range(max(reps, 3))]
        out[name] = (statistics.median(times) * 1e3, min(times) * 1e3)
    return out
