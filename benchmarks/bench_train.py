"""Speed of our NumPy framework against PyTorch (CPU) on the exercise's CNN, in one run.

    .venv/bin/python benchmarks/bench_train.py                  # full run, ~2-3 min on 2 cores
                                                                # (~4 min on a heavily loaded one)
    .venv/bin/python benchmarks/bench_train.py --quick          # smoke run (1 round, 1 repeat)
    .venv/bin/python benchmarks/bench_train.py --profile        # + per-layer profile of our step
    .venv/bin/python benchmarks/bench_train.py --no-torch --json results.json --rounds 6

What is measured, for reference_cnn(batch_norm=False) and reference_cnn(batch_norm=True),
float32, on a fixed random batch of 64 images (uniform in [0, 1]) with random labels:

  train_step   one standard training step: attacks.training.standard_step with
               nn.SGD(lr=0.01, momentum=0.9); PyTorch: zero_grad, cross-entropy, backward, SGD step
               (its input does not require grad: PyTorch skips conv1's input gradient, and so
               does ours, through backward(input_grad=False)).
  adv_step     the exercise's adversarial step: attacks.training.adversarial_step, alpha 0.3;
               PyTorch: forward/backward of the clean batch with x.requires_grad (input gradient
               and parameter gradients in one pass), x_fgs = clamp(x + 0.3 sign(grad), 0, 1)
               detached, forward/backward of x_fgs accumulating into the same .grad, one SGD step.
  fwd_bwd      one forward and backward, train mode: attacks.gradient.loss_and_gradients;
               PyTorch: the same with x.requires_grad (ours always returns dL/dx).
  eval         attacks.evaluate.evaluate(model, images, labels) (clean + FGS 0.3 + FGV 0.6,
               batches of attacks.evaluate.EVAL_BATCH, eval mode) on --eval-images random images, reported as seconds per
               10,000 images; PyTorch: per batch a forward with input grad, backward of the mean
               cross-entropy (parameter gradients too, as ours computes them), the FGS and FGV
               images, two more forwards, the same counts and perturbation sizes.

Both networks start from the same weights (ours, copied into PyTorch; the script checks that
loss, input gradient and a 500-image evaluation agree), and both are reset to them before every
timed block, so the timings never drift with training. PyTorch keeps its default thread count
(reported) unless --threads is given.

Interleaving: each round runs, for every measurement and model, a block of ours and then a
block of PyTorch's (the order alternates between rounds); every block starts with one untimed
call (not for eval), then K timed calls (train_step 3, adv_step 2, fwd_bwd 3, eval 1). Without
--rounds, rounds continue while the next one is predicted to end within --budget seconds (at
least 2, at most 12), so the whole run stays near 2-3 minutes whatever the machine's speed.
Medians are over all timed calls, so a burst of load from other processes hits both frameworks
alike; the table also gives quartiles and minima. The "paired" ratio is the median over rounds
of (ours' block median / PyTorch's block median in the same round).

On a machine that other processes keep busy, two BLAS / OpenMP threads per process on 2 cores
oversubscribe the CPU: a thread waiting at a barrier for a descheduled partner costs a whole
scheduler time slice (multiples of 4 ms show up), which hurts PyTorch's many parallel regions
even more than our few large matmuls. Compare with --threads 1 before reading much into ratios
measured under load.

Also reported: the achieved GFLOP/s of our standard step (matrix-product FLOPs counted
analytically from the layer shapes) next to np.matmul on 2048x2048 float32; peak memory of one
of our steps via tracemalloc (NumPy reports its buffers to it); for both frameworks the growth of
the peak RSS over one step in a fresh subprocess, after a batch-2 warm-up step (VmHWM of
/proc/self/status, reset through /proc/self/clear_refs: a child's ru_maxrss starts at its
parent's peak and says nothing here); it counts allocator slack too, so it is coarse. With
--profile: the time of every layer's forward and backward in our standard step, and a breakdown
of each convolution into im2col / matmul / col2im.

--threads N (off by default) limits OpenBLAS (threadpoolctl) and PyTorch to N threads, to see
how much of a result is thread oversubscription when other processes load the machine.
"""
import argparse
import gc
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from attacks.evaluate import EVAL_BATCH, evaluate  # noqa: E402
from attacks.gradient import loss_and_gradients  # noqa: E402
from attacks.training import adversarial_step, standard_step  # noqa: E402
from nn import SGD, reference_cnn  # noqa: E402
from nn.backend import reuse_host_memory  # noqa: E402
from nn import functional as F  # noqa: E402
from nn.layers import Conv2d, Dense  # noqa: E402

BATCH = 64
ALPHA = 0.3          # FGS step of adversarial training (and of the FGS attack in evaluation)
FGV_ALPHA = 0.6      # evaluate()'s default FGV step
LR, MOMENTUM = 0.01, 0.9
MIN_ROUNDS, MAX_ROUNDS = 2, 12
EVAL_KEYS = ("clean_acc", "fgs_acc", "fgv_acc")
MEASUREMENTS = ("train_step", "adv_step", "fwd_bwd", "eval")
UNITS = {"train_step": "ms/step", "adv_step": "ms/step", "fwd_bwd": "ms/pass",
         "eval": "s/10k img"}
BLAS_ENV_PREFIXES = ("OPENBLAS", "OMP_", "MKL_", "GOTO", "BLIS", "NVPL", "KMP_", "VECLIB",
                     "NUMEXPR", "TORCH")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def make_data(n_eval, seed=0):
    """The fixed batch (x, t) and the fixed evaluation set, all on the host."""
    rng = np.random.default_rng(seed)
    x = rng.random((BATCH, 1, 28, 28), dtype=np.float32)
    t = rng.integers(0, 10, BATCH).astype(np.int64)
    images = rng.random((n_eval, 1, 28, 28), dtype=np.float32)
    labels = rng.integers(0, 10, n_eval).astype(np.int64)
    return x, t, images, labels


# --- ours ------------------------------------------------------------------------------------

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


# --- PyTorch ---------------------------------------------------------------------------------

def torch_or_none():
    try:
        import torch
        return torch
    except Exception as exc:  # ImportError, or a broken install
        log(f"PyTorch not available ({exc}); measuring ours only.")
        return None


def torch_cnn(torch, bn):
    """The same layer sequence as reference_cnn, so that layer indices (and names) line up."""
    tnn = torch.nn

    def block(c_in, c_out):
        norm = [tnn.BatchNorm2d(c_out)] if bn else []
        return [tnn.Conv2d(c_in, c_out, 5), *norm, tnn.MaxPool2d(2), tnn.ReLU()]

    return tnn.Sequential(*block(1, 32), *block(32, 64), tnn.Flatten(), tnn.Linear(1024, 10))


def ours_state_to_torch(torch, model, state):
    """Copy our state dict into a torch_cnn: Dense W (D, M) becomes Linear weight (M, D)."""
    names = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias",
             "running_mean": "running_mean", "running_var": "running_var"}
    tstate = {}
    for key, value in state.items():
        i, name = key.split(".")
        if isinstance(model[int(i)], torch.nn.Linear) and name == "W":
            value = value.T
        tstate[f"{i}.{names[name]}"] = torch.tensor(np.array(value))  # an independent copy
    for key, value in model.state_dict().items():  # BatchNorm's num_batches_tracked
        tstate.setdefault(key, value.clone())
    return tstate


class Torch:
    name = "torch"

    def __init__(self, torch, bn, ours, x, t, images, labels):
        self.torch = torch
        self.F = torch.nn.functional
        self.model = torch_cnn(torch, bn)
        self.init_state = ours_state_to_torch(torch, self.model, ours.init_state)
        self.x, self.t = torch.from_numpy(x), torch.from_numpy(t)
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)
        self.reset()

    def reset(self):
        self.model.load_state_dict(self.init_state)  # copies into the parameters
        self.model.train()
        self.opt = self.torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def train_step(self):
        self.opt.zero_grad()
        loss = self.F.cross_entropy(self.model(self.x), self.t)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def adv_step(self):
        self.opt.zero_grad()
        x = self.x.detach().requires_grad_(True)
        clean = self.F.cross_entropy(self.model(x), self.t)
        clean.backward()                                   # parameter grads and x.grad, one pass
        x_fgs = (self.x + ALPHA * x.grad.sign()).clamp(0.0, 1.0).detach()
        adv = self.F.cross_entropy(self.model(x_fgs), self.t)
        adv.backward()                                     # accumulates: .grad = clean + adv
        self.opt.step()
        return clean.detach() + adv.detach()

    def fwd_bwd(self):
        self.model.zero_grad(set_to_none=True)
        x = self.x.detach().requires_grad_(True)
        loss = self.F.cross_entropy(self.model(x), self.t)
        loss.backward()
        return loss.detach(), x.grad

    def eval(self, n=None):
        torch, F_, model = self.torch, self.F, self.model
        n = len(self.images) if n is None else n
        was_training = model.training
        model.eval()
        n_correct, clean_loss = 0, 0.0
        still = {"fgs": 0, "fgv": 0}
        linf = {"fgs": 0.0, "fgv": 0.0}
        l2 = {"fgs": 0.0, "fgv": 0.0}
        try:
            for start in range(0, n, EVAL_BATCH):
                s = slice(start, min(start + EVAL_BATCH, n))
                x, t = self.images[s].detach().requires_grad_(True), self.labels[s]
                logits = model(x)
                loss = F_.cross_entropy(logits, t)
                model.zero_grad(set_to_none=True)
                loss.backward()
                g = x.grad
                with torch.no_grad():
                    x = x.detach()
                    correct = logits.argmax(1) == t
                    clean_loss += loss.item() * len(t)
                    n_correct += int(correct.sum())
                    peak = g.abs().amax(dim=(1, 2, 3), keepdim=True)
                    adv = {"fgs": (x + ALPHA * g.sign()).clamp(0.0, 1.0),
                           "fgv": (x + FGV_ALPHA * g / torch.where(peak > 0, peak, 1.0))
                           .clamp(0.0, 1.0)}
                    mask = correct.to(x.dtype)
                    for name, x_adv in adv.items():
                        still[name] += int((correct & (model(x_adv).argmax(1) == t)).sum())
                        delta = (x_adv - x).flatten(1)
                        linf[name] += float((delta.abs().amax(1) * mask).sum())
                        l2[name] += float((delta.norm(dim=1) * mask).sum())
        finally:
            model.train(was_training)
        k = max(n_correct, 1)
        return {"n": n, "clean_acc": n_correct / n, "clean_loss": clean_loss / n,
                **{f"{a}_acc": still[a] / k for a in still},
                **{f"{a}_linf": linf[a] / k for a in still}}


def check_same_network(ours, theirs):
    """Loss and dL/dx of one train-mode pass of both (from the initial weights)."""
    ours.reset()
    theirs.reset()
    p = ours.fwd_bwd()
    loss_t, dx_t = theirs.fwd_bwd()
    dx_o, dx_t = np.asarray(p.dx), dx_t.numpy()
    out = {"loss_ours": float(p.loss), "loss_torch": float(loss_t),
           "dx_max_abs_diff": float(np.max(np.abs(dx_o - dx_t))),
           "dx_max_abs": float(np.max(np.abs(dx_t)))}
    ours.reset()
    theirs.reset()
    return out


# --- timing ----------------------------------------------------------------------------------

def time_block(bench, meas, k, warm):
    """Reset bench, optionally one untimed call, then k timed calls; seconds per call."""
    fn = getattr(bench, meas)
    bench.reset()
    if warm:
        fn()
    times = []
    for _ in range(k):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def to_unit(meas, seconds, n_eval):
    """ms per call, or for eval seconds per 10,000 images."""
    return seconds / n_eval * 10_000 if meas == "eval" else seconds * 1e3


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def matmul_gflops(n, reps, torch=None):
    """Median and best GFLOP/s of np.matmul (and torch.mm) on float32 n x n."""
    rng = np.random.default_rng(1)
    a = rng.random((n, n), dtype=np.float32)
    b = rng.random((n, n), dtype=np.float32)
    flops = 2.0 * n ** 3
    out = {}
    libs = [("numpy", lambda: a @ b)]
    if torch is not None:
        ta, tb = torch.from_numpy(a), torch.from_numpy(b)
        libs.append(("torch", lambda: ta @ tb))
    for lib, fn in libs:
        fn()
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            fn()
            times.append(time.perf_counter() - start)
        out[lib] = [flops / s / 1e9 for s in times]
    return out


# --- FLOPs -----------------------------------------------------------------------------------

def matmul_flops(model, x):
    """Per Conv2d / Dense layer: matrix-product FLOPs of forward, dW and dX for input x."""
    rows = []
    h = x
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Conv2d):
            N, C = h.shape[:2]
            Fo, _, KH, KW = layer.params["W"].shape
            out = layer.forward(h)
            OH, OW = out.shape[2:]
            f = 2 * Fo * C * KH * KW * OH * OW * N
            rows.append({"layer": i, "kind": f"Conv2d {C}->{Fo} {KH}x{KW} out {OH}x{OW}",
                         "fwd": f, "dW": f, "dX": f})
            h = out
        elif isinstance(layer, Dense):
            N, D = h.shape
            M = layer.params["W"].shape[1]
            f = 2 * N * D * M
            rows.append({"layer": i, "kind": f"Dense {D}->{M}", "fwd": f, "dW": f, "dX": f})
            h = layer.forward(h)
        else:
            h = layer.forward(h)
    return rows


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


def _proc_status_mb(field):
    """A memory field of /proc/self/status (VmRSS, VmHWM) in MB, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def rss_probe(framework, meas, bn):
    """In this (fresh) process: growth of the peak RSS over one step of batch 64, after one step
    of batch 2 (which does the lazy initialisation: thread pools, kernels, BLAS buffers).

    Uses VmHWM, the high-water mark of this process's own address space (a child's ru_maxrss
    would start at its parent's), reset to the current RSS through /proc/self/clear_refs.
    """
    x, t, images, labels = make_data(EVAL_BATCH)
    ours = Ours(bn, x[:2], t[:2], images, labels)
    bench = ours
    if framework == "torch":
        bench = Torch(torch_or_none(), bn, ours, x[:2], t[:2], images, labels)
    getattr(bench, meas)()
    bench.reset()
    full = Ours(bn, x, t, images, labels) if framework == "ours" else \
        Torch(bench.torch, bn, ours, x, t, images, labels)
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current RSS
        reset = True
    except OSError:
        reset = False
    before = _proc_status_mb("VmHWM")
    if before is None:
        return {"error": "no /proc/self/status"}
    rss = _proc_status_mb("VmRSS")
    getattr(full, meas)()
    after = _proc_status_mb("VmHWM")
    return {"rss_before_mb": rss, "hwm_before_mb": before, "hwm_reset": reset,
            "maxrss_growth_mb": after - (rss if reset else before)}


def rss_in_subprocess(framework, meas, bn):
    cmd = [sys.executable, str(Path(__file__).resolve()), "--_rss-probe", framework, meas,
           "1" if bn else "0"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except Exception as exc:
        return {"error": str(exc)}


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
        _, d = F.softmax_cross_entropy(h, t)
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
    return {"layers": layers, "loss_ms": med(loss_t) * 1e3, "optimizer_ms": med(opt_t) * 1e3,
            "loss_min_ms": min(loss_t) * 1e3, "optimizer_min_ms": min(opt_t) * 1e3,
            "total_ms": total, "total_min_ms": total_min, "conv_breakdown": breakdown}


def conv_breakdown(layer, x, dout, reps):
    """The pieces of conv2d_forward / conv2d_backward (as written in nn/functional.py when this
    benchmark was written), timed on the layer's real input and output gradient, in ms."""
    W, b = layer.params["W"], layer.params["b"]
    Fo, C, KH, KW = W.shape
    s_, p_ = layer.stride, layer.padding
    w2 = W.reshape(Fo, -1)
    cols = F.im2col(x, KH, KW, s_, p_)
    d2 = np.transpose(dout, (1, 2, 3, 0)).reshape(Fo, -1)
    dcols = w2.T @ d2
    pieces = {
        "im2col": lambda: F.im2col(x, KH, KW, s_, p_),
        "fwd matmul W@cols": lambda: w2 @ cols,
        "dout -> (F, OH*OW*N)": lambda: np.transpose(dout, (1, 2, 3, 0)).reshape(Fo, -1),
        "dW matmul d2@cols.T": lambda: d2 @ cols.T,
        "db sum": lambda: d2.sum(axis=1),
        "dX matmul W.T@d2": lambda: w2.T @ d2,
        "col2im": lambda: F.col2im(dcols, x.shape, KH, KW, s_, p_),
    }
    out = {"shapes": {"cols": list(cols.shape), "d2": list(d2.shape),
                      "d2_is_copy": not np.shares_memory(d2, dout)}}
    for name, fn in pieces.items():
        fn()
        times = []
        for _ in range(max(reps, 3)):
            s = time.perf_counter()
            fn()
            times.append(time.perf_counter() - s)
        out[name] = (statistics.median(times) * 1e3, min(times) * 1e3)
    return out


# --- report ----------------------------------------------------------------------------------

def environment(torch):
    from threadpoolctl import threadpool_info
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "numpy": np.__version__,
            "blas_env": {k: v for k, v in os.environ.items() if k.startswith(BLAS_ENV_PREFIXES)},
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "threadpools": [{k: p.get(k) for k in ("user_api", "internal_api", "prefix",
                                                   "version", "num_threads", "threading_layer",
                                                   "architecture")} for p in threadpool_info()]}
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu_model"] = next((line.split(":", 1)[1].strip() for line in f
                                      if line.startswith("model name")), None)
    except OSError:
        info["cpu_model"] = None
    try:
        info["loadavg_start"] = os.getloadavg()
    except OSError:
        pass
    if torch is not None:
        info["torch"] = torch.__version__
        info["torch_num_threads"] = torch.get_num_threads()
        info["torch_num_interop_threads"] = torch.get_num_interop_threads()
        info["torch_mkldnn"] = torch.backends.mkldnn.is_available()
    return info


def print_environment(env):
    print(f"python {env['python']} on {env['machine']}, {env['cpu_count']} CPUs"
          f" ({env.get('cpu_model')}), load average at start {env.get('loadavg_start')}")
    print(f"numpy {env['numpy']}")
    for p in env["threadpools"]:
        print(f"  threadpool: {p['internal_api']} {p['version'] or ''} ({p['user_api']}), "
              f"threads {p['num_threads']}, architecture {p['architecture']}, "
              f"threading {p['threading_layer']}")
    if env["OPENBLAS_CORETYPE"] is not None:
        print(f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}")
    other = {k: v for k, v in env["blas_env"].items() if k != "OPENBLAS_CORETYPE"}
    if other:
        print("BLAS/threading environment: " + ", ".join(f"{k}={v}" for k, v in other.items()))
    if "torch" in env:
        set_by = f"set by --threads {env['threads_flag']}" if env["threads_flag"] else \
            "default, not set"
        print(f"torch {env['torch']}, threads {env['torch_num_threads']} ({set_by}), "
              f"interop threads {env['torch_num_interop_threads']}, "
              f"mkldnn {env['torch_mkldnn']}")
    else:
        print("torch: not measured")


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=None,
                    help="interleaved rounds (default: as many as fit in --budget, at least "
                         f"{MIN_ROUNDS} and at most {MAX_ROUNDS}; --quick: 1)")
    ap.add_argument("--budget", type=float, default=100.0,
                    help="seconds for the timed rounds when --rounds is not given (default 100)")
    ap.add_argument("--quick", action="store_true", help="a smoke run: few repeats, 500 images")
    ap.add_argument("--no-torch", action="store_true", help="measure ours only")
    ap.add_argument("--default-malloc", action="store_true",
                    help="skip nn.backend.reuse_host_memory() (train.py calls it), to see its effect")
    ap.add_argument("--json", metavar="PATH", help="write every result and raw timing here")
    ap.add_argument("--profile", action="store_true",
                    help="also time every layer's forward/backward of our standard step")
    ap.add_argument("--eval-images", type=int, default=None,
                    help="images per evaluation call (default 2000, --quick 500)")
    ap.add_argument("--no-rss", action="store_true",
                    help="skip the peak-RSS subprocess probes")
    ap.add_argument("--threads", type=int, default=None,
                    help="limit BLAS and PyTorch threads (default: leave both as they are)")
    ap.add_argument("--_rss-probe", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._rss_probe:
        framework, meas, bn = args._rss_probe
        print(json.dumps(rss_probe(framework, meas, bn == "1")))
        return

    if not args.default_malloc:
        print(f"reuse_host_memory(): {'on' if reuse_host_memory() else 'not available'}")
    t_start = time.perf_counter()
    rounds = args.rounds or (1 if args.quick else None)  # None: until the budget is spent
    n_eval = args.eval_images or (500 if args.quick else 2000)
    # timed calls per block and measurement
    reps = ({"train_step": 1, "adv_step": 1, "fwd_bwd": 1, "eval": 1} if args.quick else
            {"train_step": 3, "adv_step": 2, "fwd_bwd": 3, "eval": 1})
    torch = None if args.no_torch else torch_or_none()
    limiter = None
    if args.threads:
        from threadpoolctl import threadpool_limits
        limiter = threadpool_limits(args.threads)  # noqa: F841 (kept alive for the whole run)
        if torch is not None:
            torch.set_num_threads(args.threads)
    env = environment(torch)
    env["threads_flag"] = args.threads
    x, t, images, labels = make_data(n_eval)

    benches = {}
    checks = {}
    for bn in (False, True):
        ours = Ours(bn, x, t, images, labels)
        benches[("ours", bn)] = ours
        if torch is not None:
            benches[("torch", bn)] = Torch(torch, bn, ours, x, t, images, labels)
            checks[bn] = check_same_network(ours, benches[("torch", bn)])
    frameworks = ["ours"] + (["torch"] if torch is not None else [])

    log("matmul reference (start) ...")
    mm_reps = 2 if args.quick else 5
    mm = [matmul_gflops(2048, mm_reps, torch)]

    log("warm-up ...")
    for (fw, bn), bench in benches.items():
        for meas in MEASUREMENTS:
            bench.reset()
            if meas == "eval":  # from the initial weights: both evaluations must agree
                res = bench.eval(min(n_eval, EVAL_BATCH))
                if bn in checks:
                    checks[bn][f"eval_{fw}"] = {k: res[k] for k in EVAL_KEYS}
            else:
                getattr(bench, meas)()

    samples = {(m, bn, fw): [] for m in MEASUREMENTS for bn in (False, True) for fw in frameworks}
    paired = {(m, bn): [] for m in MEASUREMENTS for bn in (False, True)}
    t_rounds, r = time.perf_counter(), 0
    while True:
        spent = time.perf_counter() - t_rounds
        if rounds is not None and r >= rounds:
            break
        if rounds is None and r >= MIN_ROUNDS and (r >= MAX_ROUNDS
                                                   or spent * (r + 1) / r > args.budget):
            break
        log(f"round {r + 1}/{rounds or 'budget'} ({time.perf_counter() - t_start:.0f} s "
            "so far) ...")
        order = frameworks if r % 2 == 0 else frameworks[::-1]
        for meas in MEASUREMENTS:
            for bn in (False, True):
                block = {}
                for fw in order:
                    secs = time_block(benches[(fw, bn)], meas, reps[meas], warm=meas != "eval")
                    block[fw] = [to_unit(meas, s, n_eval) for s in secs]
                    samples[(meas, bn, fw)].extend(block[fw])
                if "torch" in block:
                    paired[(meas, bn)].append(statistics.median(block["ours"])
                                              / statistics.median(block["torch"]))
        r += 1
    rounds = r
    env["loadavg_after_rounds"] = os.getloadavg() if hasattr(os, "getloadavg") else None

    log("matmul reference (end) ...")
    mm.append(matmul_gflops(2048, mm_reps, torch))

    # summary of timings
    results = {}
    for (meas, bn, fw), vals in samples.items():
        q1, q2, q3 = quartiles(vals)
        results.setdefault(f"{meas}|{'bn' if bn else 'no_bn'}", {})[fw] = {
            "median": q2, "q1": q1, "q3": q3, "min": min(vals), "n": len(vals), "unit": UNITS[meas],
            "samples": vals}
    for (meas, bn), ratios in paired.items():
        row = results[f"{meas}|{'bn' if bn else 'no_bn'}"]
        if "torch" in row:
            row["ratio"] = row["ours"]["median"] / row["torch"]["median"]
            row["paired_ratio_median"] = statistics.median(ratios)
            row["paired_ratio_range"] = [min(ratios), max(ratios)]

    # FLOPs and GFLOP/s of the standard step
    flop_rows = matmul_flops(reference_cnn(batch_norm=False), x)
    conv1_dx = flop_rows[0]["dX"]
    # both frameworks skip conv1's dX in a training step (ours: backward(input_grad=False))
    executed = useful = sum(r["fwd"] + r["dW"] + r["dX"] for r in flop_rows) - conv1_dx
    mm_np = [g for m in mm for g in m["numpy"]]
    flops = {"per_layer": flop_rows, "executed_by_ours": executed, "conv1_dX": conv1_dx,
             "without_conv1_dX": useful,
             "numpy_matmul_2048_gflops": {"median": statistics.median(mm_np), "best": max(mm_np),
                                          "samples": mm_np}}
    if torch is not None:
        mm_t = [g for m in mm for g in m["torch"]]
        flops["torch_mm_2048_gflops"] = {"median": statistics.median(mm_t), "best": max(mm_t),
                                         "samples": mm_t}
    for bn in (False, True):
        row = results[f"train_step|{'bn' if bn else 'no_bn'}"]
        key = "bn" if bn else "no_bn"
        ms, ms_min = row["ours"]["median"], row["ours"]["min"]
        flops[f"ours_gflops_{key}"] = {"executed": executed / ms / 1e6, "useful": useful / ms / 1e6,
                                       "executed_at_min": executed / ms_min / 1e6}
        if "torch" in row:
            flops[f"torch_gflops_{key}"] = {"useful": useful / row["torch"]["median"] / 1e6,
                                            "useful_at_min": useful / row["torch"]["min"] / 1e6}

    # memory
    log("memory ...")
    memory = {}
    for bn in (False, True):
        key = "bn" if bn else "no_bn"
        ours = benches[("ours", bn)]
        mem = {}
        for meas in ("train_step", "adv_step"):
            ours.reset()
            getattr(ours, meas)()  # steady state: velocities exist
            peak, kept = traced_peak_mb(getattr(ours, meas))
            mem[f"ours_{meas}_tracemalloc_peak_mb"] = peak
        ours.reset()
        peak, _ = traced_peak_mb(lambda: ours.eval(min(n_eval, EVAL_BATCH)))
        mem["ours_eval_batch_tracemalloc_peak_mb"] = peak
        if not args.no_rss:
            for fw in frameworks:
                for meas in ("train_step", "adv_step"):
                    mem[f"{fw}_{meas}_rss_growth"] = rss_in_subprocess(fw, meas, bn)
        memory[key] = mem

    profile = None
    if args.profile:
        log("profile ...")
        profile = {("bn" if bn else "no_bn"): profile_layers(bn, x, t, 3 if args.quick else 10)
                   for bn in (False, True)}

    elapsed = time.perf_counter() - t_start

    # --- print ---
    print()
    print("## Environment")
    print_environment(env)
    print(f"batch {BATCH}, float32, {rounds} round(s), timed calls per block {reps}, "
          f"eval on {n_eval} images (batches of {EVAL_BATCH}); elapsed {elapsed:.0f} s; "
          f"load average after the rounds {env['loadavg_after_rounds']}")
    if checks:
        for bn, c in checks.items():
            print(f"same-network check ({'BN' if bn else 'no BN'}): loss ours {c['loss_ours']:.6f}"
                  f" torch {c['loss_torch']:.6f}, max |dx ours - dx torch| "
                  f"{c['dx_max_abs_diff']:.2e} (max |dx| {c['dx_max_abs']:.2e}); "
                  f"eval of {min(n_eval, EVAL_BATCH)} images ours "
                  + ", ".join(f"{k} {c['eval_ours'][k]:.4f}" for k in EVAL_KEYS) + "; torch "
                  + ", ".join(f"{k} {c['eval_torch'][k]:.4f}" for k in EVAL_KEYS))

    print()
    print("## Timings (medians over all timed calls; IQR and minima to judge the noise)")
    print()
    print("| measurement | BN | ours | PyTorch | ratio ours/PyTorch | paired ratio [range] "
          "| ours IQR | PyTorch IQR | ours min | PyTorch min | ratio of minima |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for meas in MEASUREMENTS:
        for bn in (False, True):
            row = results[f"{meas}|{'bn' if bn else 'no_bn'}"]
            o, th = row["ours"], row.get("torch")
            digits = 2 if meas == "eval" else 1
            iqr = lambda s: f"{fmt(s['q1'], digits)}-{fmt(s['q3'], digits)}"  # noqa: E731
            pr = (f"{row['paired_ratio_median']:.2f} [{row['paired_ratio_range'][0]:.2f}-"
                  f"{row['paired_ratio_range'][1]:.2f}]" if th else "-")
            print(f"| {meas} ({UNITS[meas]}) | {'yes' if bn else 'no'} | {fmt(o['median'], digits)}"
                  f" | {fmt(th and th['median'], digits)} | "
                  f"{fmt(row.get('ratio'), 2)} | {pr} | {iqr(o)} | {iqr(th) if th else '-'} | "
                  f"{fmt(o['min'], digits)} | {fmt(th and th['min'], digits)} | "
                  f"{fmt(th and o['min'] / th['min'], 2)} |")

    print()
    print("## Achieved GFLOP/s of the standard training step")
    for r in flop_rows:
        print(f"  layer {r['layer']} {r['kind']}: {r['fwd'] / 1e6:.1f} MFLOP each for forward, "
              f"dW and dX")
    print(f"  total {useful / 1e9:.3f} GFLOP per standard step in both frameworks (conv1's dX, "
          f"{conv1_dx / 1e6:.1f} MFLOP, is skipped by both)")
    for bn in (False, True):
        key = "bn" if bn else "no_bn"
        g = flops[f"ours_gflops_{key}"]
        line = (f"  {'BN   ' if bn else 'no BN'}: ours {g['executed']:.1f} GFLOP/s executed, "
                f"{g['useful']:.1f} useful ({g['executed_at_min']:.1f} executed at the fastest "
                "step)")
        if f"torch_gflops_{key}" in flops:
            tg = flops[f"torch_gflops_{key}"]
            line += (f"; PyTorch {tg['useful']:.1f} GFLOP/s useful ({tg['useful_at_min']:.1f} at "
                     "its fastest)")
        print(line + ("  (BatchNorm's element-wise work is not counted)" if bn else ""))
    m = flops["numpy_matmul_2048_gflops"]
    line = (f"  machine: np.matmul 2048x2048 float32 {m['median']:.1f} GFLOP/s median, "
            f"{m['best']:.1f} best ({len(m['samples'])} runs, half at start, half at end)")
    if "torch_mm_2048_gflops" in flops:
        tm = flops["torch_mm_2048_gflops"]
        line += f"; torch.mm {tm['median']:.1f} median, {tm['best']:.1f} best"
    print(line)

    print()
    print("## Memory (MB)")
    print("tracemalloc: peak of memory newly allocated during one call of ours (steady state)."
          "\nRSS growth: growth of the peak RSS (VmHWM) over one batch-64 call in a fresh "
          "subprocess after a batch-2 warm-up call (includes allocator slack; coarse).")
    for key, mem in memory.items():
        parts = [f"ours tracemalloc: train_step {mem['ours_train_step_tracemalloc_peak_mb']:.1f}, "
                 f"adv_step {mem['ours_adv_step_tracemalloc_peak_mb']:.1f}, "
                 f"eval batch of {EVAL_BATCH} {mem['ours_eval_batch_tracemalloc_peak_mb']:.1f}"]
        for fw in frameworks:
            for meas in ("train_step", "adv_step"):
                v = mem.get(f"{fw}_{meas}_rss_growth")
                if v is not None:
                    parts.append(f"{fw} {meas} RSS growth "
                                 + (f"{v['maxrss_growth_mb']:.1f}" if "error" not in v
                                    else f"error: {v['error']}"))
        if torch is not None:
            parts.append("PyTorch tracemalloc: None (its allocator does not report to it)")
        print(f"  {'BN   ' if key == 'bn' else 'no BN'}: " + "; ".join(parts))

    if profile:
        print()
        print("## Per-layer profile of our standard step (ms: median / min)")
        for key, prof in profile.items():
            print(f"\n### {'with' if key == 'bn' else 'without'} BatchNorm: layers + loss + "
                  f"optimizer = {prof['total_ms']:.1f} ms median, {prof['total_min_ms']:.1f} ms "
                  "summing the minima")
            print("| layer | forward | backward | share (median) | share (min) |")
            print("|---|---:|---:|---:|---:|")
            for r in prof["layers"]:
                print(f"| {r['layer']} {r['name']} | {r['fwd_ms']:.2f} / {r['fwd_min_ms']:.2f} | "
                      f"{r['bwd_ms']:.2f} / {r['bwd_min_ms']:.2f} | {100 * r['share']:.0f}% | "
                      f"{100 * r['share_min']:.0f}% |")
            print(f"| loss (softmax CE) | {prof['loss_ms']:.2f} / {prof['loss_min_ms']:.2f} "
                  "| | | |")
            print(f"| SGD step | {prof['optimizer_ms']:.2f} / {prof['optimizer_min_ms']:.2f} "
                  "| | | |")
            for i, br in prof["conv_breakdown"].items():
                sh = br["shapes"]
                parts = ", ".join(f"{k} {v[0]:.2f}/{v[1]:.2f}" for k, v in br.items()
                                  if k != "shapes")
                print(f"  conv layer {i} (cols {sh['cols']}, dout as {sh['d2']}"
                      f"{' copied' if sh['d2_is_copy'] else ' a view'}): {parts}")

    if args.json:
        out = {"environment": env, "config": {"batch": BATCH, "rounds": rounds, "reps": reps,
                                              "eval_images": n_eval, "quick": args.quick},
               "same_network_check": {("bn" if k else "no_bn"): v for k, v in checks.items()},
               "timings": results, "flops": flops, "memory": memory,
               "profile": profile, "elapsed_s": elapsed}
        Path(args.json).write_text(json.dumps(out, indent=1, default=str))
        print(f"\nwrote {args.json}")


if __name__ == "__main__":
    main()
