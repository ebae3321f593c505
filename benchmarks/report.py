"""The report of bench_train.py: the environment (versions, thread pools, BLAS variables, load),
progress lines on stderr, medians and quartiles of the timings, the Markdown sections and tables
on stdout and the JSON file."""
import json
import os
import platform
import statistics
import sys
from pathlib import Path

import numpy as np

from nn import EVAL_BATCH
from nn.backend import blas_kernel_note

EVAL_KEYS = ("clean_acc", "fgs_acc", "fgv_acc")
UNITS = {"train_step": "ms/step", "adv_step": "ms/step", "fwd_bwd": "ms/pass",
         "eval": "s/10k img"}
BLAS_ENV_PREFIXES = ("OPENBLAS", "OMP_", "MKL_", "GOTO", "BLIS", "NVPL", "KMP_", "VECLIB",
                     "NUMEXPR", "TORCH")


def log(*args):
    print(*args, file=sys.stderr, flush=True)


def environment(torch):
    from threadpoolctl import threadpool_info
    info = {"python": platform.python_version(), "machine": platform.machine(),
            "cpu_count": os.cpu_count(), "numpy": np.__version__,
            "blas_env": {k: v for k, v in os.environ.items() if k.startswith(BLAS_ENV_PREFIXES)},
            "OPENBLAS_CORETYPE": os.environ.get("OPENBLAS_CORETYPE"),
            "threadpools": [{k: p.get(k) for k in ("user_api", "internal_api", "prefix",
                                                   "version", "num_threads", "threading_layer",
                                                   "architecture")} for p in threadpool_info()]}
    info["blas_kernel_note"] = blas_kernel_note()
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


def to_unit(meas, seconds, n_eval):
    """ms per call, or for eval seconds per 10,000 images."""
    return seconds / n_eval * 10_000 if meas == "eval" else seconds * 1e3


def quartiles(values):
    if len(values) < 2:
        return values[0], values[0], values[0]
    q = statistics.quantiles(values, n=4, method="inclusive")
    return q[0], statistics.median(values), q[2]


def summarize(samples, paired):
    """Per "measurement|bn" row: quartiles, minimum and samples of each framework, keyed by
    samples[(meas, bn, framework)]; with PyTorch, the ratio of medians and the median and range
    of the per-round ratios paired[(meas, bn)]."""
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
    return results


def fmt(v, digits=1):
    return "-" if v is None else f"{v:.{digits}f}"


def print_environment(env, config, elapsed, checks):
    print()
    print("## Environment")
    print(f"python {env['python']} on {env['machine']}, {env['cpu_count']} CPUs"
          f" ({env.get('cpu_model')}), load average at start {env.get('loadavg_start')}")
    print(f"numpy {env['numpy']}")
    for p in env["threadpools"]:
        print(f"  threadpool: {p['internal_api']} {p['version'] or ''} ({p['user_api']}), "
              f"threads {p['num_threads']}, architecture {p['architecture']}, "
              f"threading {p['threading_layer']}")
    if env["OPENBLAS_CORETYPE"] is not None:
        print(f"OPENBLAS_CORETYPE={env['OPENBLAS_CORETYPE']}")
    if env.get("blas_kernel_note"):
        print(f"note: {env['blas_kernel_note']}")
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
    n_eval = config["eval_images"]
    print(f"batch {config['batch']}, float32, {config['rounds']} round(s), timed calls per block "
          f"{config['reps']}, eval on {n_eval} images (batches of {EVAL_BATCH}); elapsed "
          f"{elapsed:.0f} s; load average after the rounds {env['loadavg_after_rounds']}")
    for bn, c in checks.items():
        print(f"same-network check ({'BN' if bn else 'no BN'}): loss ours {c['loss_ours']:.6f}"
              f" torch {c['loss_torch']:.6f}, max |dx ours - dx torch| "
              f"{c['dx_max_abs_diff']:.2e} (max |dx| {c['dx_max_abs']:.2e}); "
              f"eval of {min(n_eval, EVAL_BATCH)} images ours "
              + ", ".join(f"{k} {c['eval_ours'][k]:.4f}" for k in EVAL_KEYS) + "; torch "
              + ", ".join(f"{k} {c['eval_torch'][k]:.4f}" for k in EVAL_KEYS))


def print_timings(results, measurements):
    print()
    print("## Timings (medians over all timed calls; IQR and minima to judge the noise)")
    print()
    print("| measurement | BN | ours | PyTorch | ratio ours/PyTorch | paired ratio [range] "
          "| ours IQR | PyTorch IQR | ours min | PyTorch min | ratio of minima |")
    print("|---|---|---:|---:|---:|---|---:|---:|---:|---:|---:|")
    for meas in measurements:
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


def print_flops(flops):
    print()
    print("## Achieved GFLOP/s of the standard training step")
    for r in flops["per_layer"]:
        run = (f" (as run, Winograd's tiles: {r['executed'] / 1e6:.1f})"
               if r.get("executed", r["fwd"]) != r["fwd"] else "")
        print(f"  layer {r['layer']} {r['kind']}: {r['fwd'] / 1e6:.1f} MFLOP each for forward, "
              f"dW and dX{run}")
    print(f"  total {flops['without_conv1_dX'] / 1e9:.3f} GFLOP per standard step in both "
          f"frameworks (conv1's dX, {flops['conv1_dX'] / 1e6:.1f} MFLOP, is skipped by both); "
          f"ours runs {flops['executed_by_ours'] / 1e9:.3f} (useful: the direct count; executed: "
          f"the products as run)")
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


def print_memory(memory, frameworks):
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
        if "torch" in frameworks:
            parts.append("PyTorch tracemalloc: None (its allocator does not report to it)")
        print(f"  {'BN   ' if key == 'bn' else 'no BN'}: " + "; ".join(parts))


def print_profile(profile):
    print()
    print("## Per-layer profile of our standard step (ms: median / min)")
    for key, prof in profile.items():
        print(f"\n### {'with' if key == 'bn' else 'without'} BatchNorm, {prof['images']} images: "
              f"layers + loss + optimizer = {prof['total_ms']:.1f} ms median, "
              f"{prof['total_min_ms']:.1f} ms summing the minima")
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


def write_json(path, env, config, checks, results, flops, memory, profile, elapsed):
    out = {"environment": env, "config": config,
           "same_network_check": {("bn" if k else "no_bn"): v for k, v in checks.items()},
           "timings": results, "flops": flops, "memory": memory,
           "profile": profile, "elapsed_s": elapsed}
    Path(path).write_text(json.dumps(out, indent=1, default=str))
    print(f"\nwrote {path}")
