"""What bench_train.py measures of the machine rather than of a step: np.matmul (and torch.mm)
GFLOP/s, the matrix-product FLOPs of the network counted from its shapes and the GFLOP/s they
give, and the growth of the peak RSS over one step in a fresh subprocess."""
import gc
import json
import statistics
import subprocess
import sys
from pathlib import Path

import numpy as np

from benchmarks.ours import Ours, make_data, seconds
from benchmarks.torch_reference import Torch, torch_or_none
from nn import EVAL_BATCH, reference_cnn, winograd
from nn.layers import Conv2d, Dense

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = Path(__file__).resolve().with_name("bench_train.py")  # runs rss_probe: --_rss-probe


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
        out[lib] = [flops / seconds(fn) / 1e9 for _ in range(reps)]
    return out


# --- FLOPs -----------------------------------------------------------------------------------

def matmul_flops(model, x):
    """Per Conv2d / Dense layer: matrix-product FLOPs of forward, dW and dX for input x, each
    as a direct convolution counts them ("fwd", "dW", "dX") and as our products run them
    ("executed": Winograd's (r+1)^2 per 2x2 tile where nn/winograd.py takes the layer)."""
    rows = []
    h = x
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Conv2d):
            N, C = h.shape[:2]
            Fo, _, KH, KW = layer.params["W"].shape
            out = layer.forward(h)
            OH, OW = out.shape[2:]
            f = 2 * Fo * C * KH * KW * OH * OW * N
            tiles = -(-OH // 2) * -(-OW // 2) * N
            run = (2 * Fo * C * (KH + 1) ** 2 * tiles
                   if winograd.fits(h, layer.params["W"], layer.stride) else f)
            rows.append({"layer": i, "kind": f"Conv2d {C}->{Fo} {KH}x{KW} out {OH}x{OW}",
                         "fwd": f, "dW": f, "dX": f, "executed": run})
            h = out
        elif isinstance(layer, Dense):
            N, D = h.shape
            M = layer.params["W"].shape[1]
            f = 2 * N * D * M
            rows.append({"layer": i, "kind": f"Dense {D}->{M}", "fwd": f, "dW": f, "dX": f,
                         "executed": f})
            h = layer.forward(h)
        else:
            h = layer.forward(h)
    return rows


def gflops(x, mm, results):
    """FLOPs of the standard step on batch x, the GFLOP/s of both frameworks' train_step timings
    (results, in ms) and of the matmul references mm (a list of matmul_gflops results)."""
    flop_rows = matmul_flops(reference_cnn(batch_norm=False), x)
    conv1_dx = flop_rows[0]["dX"]
    # both frameworks skip conv1's dX in a training step (ours: backward(input_grad=False))
    useful = sum(r["fwd"] + r["dW"] + r["dX"] for r in flop_rows) - conv1_dx
    executed = sum(3 * r["executed"] for r in flop_rows) - flop_rows[0]["executed"]
    flops = {"per_layer": flop_rows, "executed_by_ours": executed, "conv1_dX": conv1_dx,
             "without_conv1_dX": useful}
    for lib, key in (("numpy", "numpy_matmul_2048_gflops"), ("torch", "torch_mm_2048_gflops")):
        if lib in mm[0]:
            runs = [g for m in mm for g in m[lib]]
            flops[key] = {"median": statistics.median(runs), "best": max(runs), "samples": runs}
    for bn in (False, True):
        key = "bn" if bn else "no_bn"
        row = results[f"train_step|{key}"]
        ms, ms_min = row["ours"]["median"], row["ours"]["min"]
        flops[f"ours_gflops_{key}"] = {"executed": executed / ms / 1e6, "useful": useful / ms / 1e6,
                                       "executed_at_min": executed / ms_min / 1e6}
        if "torch" in row:
            flops[f"torch_gflops_{key}"] = {"useful": useful / row["torch"]["median"] / 1e6,
                                            "useful_at_min": useful / row["torch"]["min"] / 1e6}
    return flops


# --- peak RSS --------------------------------------------------------------------------------

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
    """rss_probe in a fresh interpreter: bench_train.py --_rss-probe, which prints it as JSON."""
    cmd = [sys.executable, str(SCRIPT), "--_rss-probe", framework, meas, "1" if bn else "0"]
    try:
        res = subprocess.run(cmd, capture_output=True, text=True, timeout=120, cwd=ROOT)
        return json.loads(res.stdout.strip().splitlines()[-1])
    except Exception as exc:
        return {"error": str(exc)}
