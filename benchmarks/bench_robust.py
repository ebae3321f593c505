"""Our worst-case evaluation (`attack.py robust`) against the authors' AutoAttack, one thread each.

    .venv/bin/python benchmarks/bench_robust.py --model pgd --images 1000 --together  # ~1 hour
    .venv/bin/python benchmarks/bench_robust.py --model standard --images 100 --sides ours

Both sides attack the first --images MNIST test images of a shipped model (models/) at its eps,
with AutoAttack's standard version: APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square
(5,000 queries), each on the images the attacks before it left correct. Ours is `attack.py
robust --model M`; theirs is Croce and Hein's code as packaged on PyPI (`pyautoattack`, the
oracle extra: pip install -e '.[oracle]'), `AutoAttack(version="standard", seed=seed)` on the same
weights loaded into torch, in its default batches of 250. Each side runs in its own subprocess
whose BLAS and OpenMP pools hold one thread (the variables are set before NumPy or torch loads).
--together runs the two at once (two single-thread jobs on two cores: half the wall time, and
each shares the memory bus with the other) instead of one after the other.

Printed per attack: the robust accuracy over all images after it and its seconds, for both;
then the worst-case evaluation's seconds (ours: the four attacks; theirs: its total) and each
process's wall time (ours also runs PGD-20 alone on every correct image, which AutoAttack does
not, and draws its figure).
"""
import argparse
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from nn.backend import blas_kernel_note  # noqa: E402
from training.grid_task import THREADS as ONE_THREAD  # noqa: E402 (one BLAS/OpenMP thread)

ORDER = ("apgd-ce", "apgd-t", "fab-t", "square")


def ours(model, images, out, seed):
    """Run attack.py robust in a one-thread subprocess: {attack: (robust_acc, seconds)}, the
    worst case, the attacks' seconds and the wall time."""
    start = time.perf_counter()
    subprocess.run([sys.executable, str(ROOT / "attack.py"), "robust", "--model", model,
                    "--images", str(images), "--out", str(out), "--seed", str(seed)], check=True,
                   env=os.environ | ONE_THREAD, cwd=ROOT)
    wall = time.perf_counter() - start
    (report,) = json.loads((Path(out) / "results.json").read_text())["models"]
    after = {s["attack"]: (s["robust_acc"], s["seconds"]) for s in report["attacks"]}
    return {"after": after, "robust_acc": report["robust_acc"], "clean_acc": report["clean_acc"],
            "attack_seconds": sum(s for _, s in after.values()), "wall_seconds": wall}


def theirs_in_process(model, images, seed):
    """The authors' AutoAttack on the shipped model in this process (one thread)."""
    import numpy as np
    import torch
    from pyautoattack import AutoAttack
    from safetensors.torch import load_file

    import models
    from benchmarks.torch_reference import torch_cnn
    from data.mnist import load_mnist

    torch.set_num_threads(1)
    entry = models.manifest()[model]
    state = load_file(models.path_of(model))
    net = torch_cnn(torch, bn=any(k.endswith("running_mean") for k in state))
    net.load_state_dict(state)
    net.eval()
    x, t = load_mnist("test", limit=images)
    x, t = torch.from_numpy(x), torch.from_numpy(t.astype(np.int64))
    lines = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger("auto-attack")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    start = time.perf_counter()
    adversary = AutoAttack(net, eps=entry["eps"], version="standard", seed=seed)
    x_adv = adversary.run_standard_evaluation(x, t, batch_size=250)[0]
    seconds = time.perf_counter() - start
    with torch.no_grad():
        robust = float((net(x_adv).argmax(1) == t).float().mean())
        clean = float((net(x).argmax(1) == t).float().mean())
    after, last = {}, 0.0
    for m in re.finditer(r"robust accuracy after ([A-Z-]+): ([\d.]+)% \(total time ([\d.]+) s",
                         "\n".join(lines)):
        total = float(m.group(3))
        after[m.group(1).lower()] = (float(m.group(2)) / 100, total - last)
        last = total
    return {"after": after, "robust_acc": robust, "clean_acc": clean,
            "attack_seconds": seconds}


def theirs(model, images, seed):
    """theirs_in_process in a one-thread subprocess (this script with --_theirs)."""
    start = time.perf_counter()
    done = subprocess.run([sys.executable, __file__, "--model", model, "--images", str(images),
                           "--seed", str(seed), "--_theirs"], check=True, capture_output=True, text=True,
                          env=os.environ | ONE_THREAD, cwd=ROOT)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result | {"wall_seconds": time.perf_counter() - start}


def table(results):
    """Markdown lines: robust accuracy after each attack and seconds, side by side."""
    sides = list(results)
    lines = ["| attack | " + " | ".join(f"{s}: robust after | {s}: seconds" for s in sides) + " |",
             "|---|" + "---:|---:|" * len(sides)]
    for name in ORDER:
        cells = []
        for s in sides:
            acc, sec = results[s]["after"].get(name, (None, None))
            cells += ["-" if acc is None else f"{100 * acc:.1f}%",
                      "-" if sec is None else f"{sec:.0f}"]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("| worst case, evaluation | " + " | ".join(
        f"{100 * results[s]['robust_acc']:.1f}% | {results[s]['attack_seconds']:.0f}"
        for s in sides) + " |")
    lines.append("| whole process | " + " | ".join(
        f"- | {results[s]['wall_seconds']:.0f}" for s in sides) + " |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pgd", help="a shipped model (models/manifest.json)")
    ap.add_argument("--images", type=int, default=1000, help="the first N test images")
    ap.add_argument("--sides", nargs="+", choices=["ours", "theirs"], default=["ours", "theirs"])
    ap.add_argument("--together", action="store_true", help="run both sides at once")
    ap.add_argument("--seed", type=int, default=0,
                    help="both sides' random starts (ours: attack.py --seed; theirs: AutoAttack's)")
    ap.add_argument("--json", metavar="PATH", help="write the results here")
    ap.add_argument("--_theirs", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._theirs:
        print(json.dumps(theirs_in_process(args.model, args.images, args.seed)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        jobs = {"ours": lambda: ours(args.model, args.images, Path(tmp) / "ours", args.seed),
                "theirs": lambda: theirs(args.model, args.images, args.seed)}
        if args.together:
            from concurrent.futures import ThreadPoolExecutor
            with ThreadPoolExecutor(len(args.sides)) as pool:
                futures = {s: pool.submit(jobs[s]) for s in args.sides}
                results = {s: f.result() for s, f in futures.items()}
        else:
            results = {s: jobs[s]() for s in args.sides}
    print(f"\n{args.model}, first {args.images} test images, seed {args.seed}, one thread each "
          f"({'together' if args.together else 'one after the other'}), "
          f"{time.strftime('%Y-%m-%d')}:")
    print("\n".join(table(results)))
    note = blas_kernel_note()
    if note:
        print(f"note: {note}")
    if args.json:
        Path(args.json).write_text(json.dumps({"model": args.model, "images": args.images,
                                               "together": args.together,
                                               "seed": args.seed, "blas_kernel_note": note,
                                               **results}, indent=1))


if __name__ == "__main__":
    main()
