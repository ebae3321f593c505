"""Speed of our NumPy framework against PyTorch (CPU) on the exercise's CNN, in one run.

    .venv/bin/python benchmarks/bench_train.py                  # full run, ~2-3 min on 2 cores
                                                                # (~4 min on a heavily loaded one)
    .venv/bin/python benchmarks/bench_train.py --quick          # smoke run (1 round, 1 repeat)
    .venv/bin/python benchmarks/bench_train.py --profile        # + per-layer profile of our step
    .venv/bin/python benchmarks/bench_train.py --no-torch --json results.json --rounds 6

What is measured, for reference_cnn(batch_norm=False) and reference_cnn(batch_norm=True),
float32, on a fixed random batch of 64 images (uniform in [0, 1]) with random labels:

  train_step   one standard training step: attacks.adversarial_training.standard_step with
               nn.SGD(lr=0.01, momentum=0.9); PyTorch: zero_grad, cross-entropy, backward, SGD step
               (its input does not require grad: PyTorch skips conv1's input gradient, and so
               does ours, through backward(input_grad=False)).
  adv_step     the exercise's adversarial step: attacks.adversarial_training.adversarial_step,
               alpha 0.3;
               PyTorch: forward/backward of the clean batch with x.requires_grad (input gradient
               and parameter gradients in one pass), x_fgs = clamp(x + 0.3 sign(grad), 0, 1)
               detached, forward/backward of x_fgs accumulating into the same .grad, one SGD step.
  fwd_bwd      one forward and backward, train mode: attacks.gradient.loss_and_gradients;
               PyTorch: the same with x.requires_grad (ours always returns dL/dx).
  eval         attacks.evaluation.evaluate(model, images, labels) (clean + FGS 0.3 + FGV 0.6,
               batches of nn.model.EVAL_BATCH, eval mode) on --eval-images random
               images, reported as seconds per 10,000 images; PyTorch: per batch a forward with
               input grad, torch.autograd.grad of the mean cross-entropy with respect to the
               images only (ours skips the parameter gradients too, backward(param_grads=False)),
               the FGS and FGV images, two more forwards, the same counts and perturbation sizes.

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

Ours runs as train.py does: nn.backend.reuse_host_memory(), and batches split into as many
slices as BLAS has threads, run by this process and worker processes (nn/parallel.py; then each
with one BLAS thread, and --profile times one process's slice of the batch on one, 32 images
when the batch of 64 is split in two). --no-split leaves the split
off: one process of ours, OpenBLAS's own threads.
"""
import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks import report  # noqa: E402
from benchmarks.machine import gflops, matmul_gflops, rss_in_subprocess, rss_probe  # noqa: E402
from benchmarks.ours import (  # noqa: E402
    BATCH,
    MEASUREMENTS,
    Ours,
    make_data,
    profile_layers,
    time_block,
    tracemalloc_peaks,
)
from benchmarks.report import EVAL_KEYS, log, to_unit  # noqa: E402
from benchmarks.torch_reference import Torch, check_same_network, torch_or_none  # noqa: E402
from nn import EVAL_BATCH, parallel  # noqa: E402
from nn.backend import reuse_host_memory  # noqa: E402

MIN_ROUNDS, MAX_ROUNDS = 2, 12


def machine_matmul(reps, torch):
    """matmul_gflops on OpenBLAS's own threads, whether or not our batches are split."""
    split = parallel.threads()
    parallel.use_threads(1)
    try:
        return matmul_gflops(2048, reps, torch)
    finally:
        parallel.use_threads(split)


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
    ap.add_argument("--no-split", action="store_true",
                    help="skip nn.parallel.use_host_threads() (train.py's batches split over the "
                         "cores), to see its effect: one process of ours, OpenBLAS's own threads")
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
    env = report.environment(torch)
    env["threads_flag"] = args.threads
    env["split_threads"] = 1 if args.no_split else parallel.use_host_threads()
    print(f"batches split over {env['split_threads']} core(s) (nn/parallel.py)")
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
    mm = [machine_matmul(mm_reps, torch)]
    warm_up(benches, checks, n_eval)
    samples, paired, rounds = run_rounds(benches, frameworks, reps, rounds, args.budget, n_eval,
                                         t_start)
    env["loadavg_after_rounds"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    log("matmul reference (end) ...")
    mm.append(machine_matmul(mm_reps, torch))
    results = report.summarize(samples, paired)
    flops = gflops(x, mm, results)

    log("memory ...")
    memory = {}
    for bn in (False, True):
        mem = tracemalloc_peaks(benches[("ours", bn)], n_eval)
        if not args.no_rss:
            for fw in frameworks:
                for meas in ("train_step", "adv_step"):
                    mem[f"{fw}_{meas}_rss_growth"] = rss_in_subprocess(fw, meas, bn)
        memory["bn" if bn else "no_bn"] = mem

    profile = None
    if args.profile:
        log("profile ...")
        part = slice(0, -(-BATCH // env["split_threads"]))  # what each process of a step runs
        profile = {("bn" if bn else "no_bn"): profile_layers(bn, x[part], t[part],
                                                             3 if args.quick else 10)
                   for bn in (False, True)}

    elapsed = time.perf_counter() - t_start
    config = {"batch": BATCH, "rounds": rounds, "reps": reps, "eval_images": n_eval,
              "quick": args.quick}
    report.print_environment(env, config, elapsed, checks)
    report.print_timings(results, MEASUREMENTS)
    report.print_flops(flops)
    report.print_memory(memory, frameworks)
    if profile:
        report.print_profile(profile)
    if args.json:
        report.write_json(args.json, env, config, checks, results, flops, memory, profile,
                          elapsed)


def warm_up(benches, checks, n_eval):
    """One call of every measurement; the evaluation from the initial weights goes into checks,
    where both evaluations must agree."""
    log("warm-up ...")
    for (fw, bn), bench in benches.items():
        for meas in MEASUREMENTS:
            bench.reset()
            if meas == "eval":
                res = bench.eval(min(n_eval, EVAL_BATCH))
                if bn in checks:
                    checks[bn][f"eval_{fw}"] = {k: res[k] for k in EVAL_KEYS}
            else:
                getattr(bench, meas)()


def run_rounds(benches, frameworks, reps, rounds, budget, n_eval, t_start):
    """Interleaved rounds of timed blocks (rounds None: while the next one is predicted to end
    within budget seconds). Returns the samples per (measurement, bn, framework) in the units of
    the report, the per-round ratios ours/PyTorch per (measurement, bn), and the rounds run."""
    samples = {(m, bn, fw): [] for m in MEASUREMENTS for bn in (False, True) for fw in frameworks}
    paired = {(m, bn): [] for m in MEASUREMENTS for bn in (False, True)}
    t_rounds, r = time.perf_counter(), 0
    while True:
        spent = time.perf_counter() - t_rounds
        if rounds is not None and r >= rounds:
            break
        if rounds is None and r >= MIN_ROUNDS and (r >= MAX_ROUNDS
                                                   or spent * (r + 1) / r > budget):
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
    return samples, paired, r


if __name__ == "__main__":
    main()
