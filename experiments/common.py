"""What every experiment of attack.py shares: a trained model, test images, a run folder, progress.

An experiment is a module with `add_arguments(parser)` (its own flags) and `run(args)`; the flags
below (--checkpoint or --model, --out, --images, --seed, --data-dir, --device) come with every
one. Without --checkpoint an experiment attacks a shipped model (models/, --model).
"""
import json
import os
from pathlib import Path

import numpy as np
from safetensors import SafetensorError, safe_open

import models
from attacks import LabelOracle
from data.mnist import load_mnist
from nn import EVAL_BATCH, batch_slices, eval_mode, on_model, predict, reference_cnn, softmax
from nn.backend import namespace_for, to_numpy
from nn.checkpoint import CheckpointError, atomic_file, load_checkpoint, section
from nn.export import load_exported
from training import classifier
from training.cli import TrainingError, add_data_flags, int_at_least, positive_int
from training.loop import progress_bar as progress
from training.plots import run_label
from training.run_folder import write_csv  # noqa: F401  (the experiments' own)


class ExperimentError(Exception):
    """The experiment cannot run (one sentence for the user)."""


def add_common_arguments(parser, name, images=1000, checkpoint_help=None):
    parser.add_argument("--checkpoint", type=Path, help=checkpoint_help or (
        "a train.py checkpoint.npz, or an exported .safetensors, to attack (default: the "
        "shipped model of --model)"))
    parser.add_argument("--model", choices=list(models.MODELS), default="standard",
                        help="the shipped model (models/) to attack when no --checkpoint is given")
    parser.add_argument("--out", type=Path, default=Path("runs") / f"attack-{name}",
                        help="folder for the experiment's numbers and figures")
    parser.add_argument("--images", type=positive_int, default=images,
                        help="how many test images (the first N) to attack")
    parser.add_argument("--seed", type=int_at_least(0), default=0)
    add_data_flags(parser, dataset="the test images' dataset (fashion-mnist needs --checkpoint: "
                                   "the shipped models are MNIST's)",
                   data_dir="folder with the IDX files (default: the embedded MNIST, or "
                            "Debian's Fashion-MNIST)")


def load_model(path, xp):
    """(model in eval mode on namespace xp, its train.py settings) from train.py checkpoint
    `path`, or from a .safetensors export (a shipped model's checked against its SHA-256)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            if path.resolve() == models.path_of(path.stem).resolve():
                return models.load(path.stem, xp)[:2]
            model, settings = load_exported(path)
        except (models.ModelError, CheckpointError) as exc:
            raise ExperimentError(str(exc)) from None
        return model.to(xp), settings
    try:
        arrays, meta = load_checkpoint(path)
    except CheckpointError as exc:
        raise ExperimentError(str(exc)) from None
    settings = meta.get("settings", {})
    model = reference_cnn(batch_norm=bool(settings.get("bn", False))).to(xp)
    try:
        model.load_state_dict(section(arrays, "model"))
    except ValueError as exc:
        raise ExperimentError(f"{path} does not hold a reference CNN of train.py: {exc}") from None
    return model.eval(), settings


def train_model(train_flags, xp):
    """Train (or finish training) with train.py's flags; returns (model, settings, checkpoint).

    A run folder that already holds the requested epochs is reused as it is.
    """
    args = classifier.parse_args(list(train_flags))
    ckpt = args.out / "checkpoint.npz"
    args.resume = ckpt.exists()
    print(f"training: python train.py {' '.join(train_flags)}{' --resume' if args.resume else ''}",
          flush=True)
    try:
        classifier.run(args)
    except TrainingError as exc:
        raise ExperimentError(f"training the model failed: {exc}") from None
    model, settings = load_model(ckpt, xp)
    return model, settings, ckpt


def model_for(args):
    """The model of --checkpoint, else the shipped model of --model: (model, its path)."""
    if args.checkpoint is None and getattr(args, "dataset", "mnist") != "mnist":
        raise ExperimentError(f"the shipped models are trained on MNIST: give --checkpoint of a "
                              f"model trained on {args.dataset}")
    path = args.checkpoint if args.checkpoint is not None else models.path_of(args.model)
    return load_model(path, namespace_for(args.device))[0], path


def model_paths(args):
    """The models an experiment of several (--models) attacks: [--checkpoint], or the shipped
    --models' files."""
    return [args.checkpoint] if args.checkpoint else [models.path_of(m) for m in args.models]


def run_name(path):
    """'adversarial, BN' style label of a checkpoint (from its run folder's settings.json) or of
    an exported model (from the settings in its file), else the folder's name."""
    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            with safe_open(str(path), framework="numpy") as f:
                s = json.loads((f.metadata() or {})["settings"])
            return f"{s['mode']}{', BN' if s['bn'] else ''}"
        except (OSError, SafetensorError, ValueError, KeyError):
            return path.stem
    return run_label(path.parent)


def add_api_arguments(parser):
    """--api and --api-key: attack the model behind serve.py's prediction API."""
    parser.add_argument("--api", help="serve.py's URL (e.g. http://127.0.0.1:8000): ask the "
                                      "model of --model there, through its prediction API, "
                                      "instead of in-process")
    parser.add_argument("--api-key", help="the API key the attack spends (default: the "
                                          "API_KEY environment variable)")


def label_oracle(args, model, budget=None):
    """(the attacker's label oracle: `model` in-process, or the API's --model with --api; a
    function giving the queries to report: the oracle's count, or the server's for the key)."""
    if args.api is None:
        oracle = LabelOracle(model, budget=budget)
        return oracle, lambda: oracle.queries
    from web.client import ApiError, ApiOracle
    key = args.api_key or os.environ.get("API_KEY")
    if not key:
        raise ExperimentError("--api needs the API key the attack spends: set API_KEY, or "
                              "give --api-key")
    oracle = ApiOracle(args.api, key, model=args.model, budget=budget)
    try:
        start = oracle.usage()
    except ApiError as exc:
        raise ExperimentError(str(exc)) from None
    return oracle, lambda: oracle.usage() - start


def test_set(args, limit=None):
    """The first --images (or `limit`) test images and labels of --dataset, on the host."""
    return load_mnist("test", args.data_dir, limit or args.images,
                      getattr(args, "dataset", "mnist"))


def out_dir(path):
    try:
        Path(path).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExperimentError(f"cannot create the folder {path}: {exc.strerror}") from None
    return Path(path)


def write_json(path, data):
    """Write `data` as indented JSON atomically (temporary file, then rename)."""
    with atomic_file(path) as f:
        f.write(json.dumps(data, indent=2, default=_plain) + "\n")


def _plain(value):
    if isinstance(value, (np.integer, np.floating, np.bool_)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} as JSON")


def predictions(model, x):
    """(labels (N,), probabilities (N, K)) of the model in eval mode, on the host."""
    with eval_mode(model):
        probs = to_numpy(softmax(model.forward(x)))
    return probs.argmax(axis=1), probs


def host(x):
    """A model-side array as a NumPy array."""
    return np.asarray(to_numpy(x))


def train_flags(args, mode, half):
    """train.py's flags for the network of `mode` on half `half`, its run folder under --runs."""
    flags = ["--mode", mode, "--train-half", str(half), "--epochs", str(args.epochs),
             "--seed", str(args.seed + half - 1), "--device", args.device]
    for flag, value in (("--train-limit", args.train_limit), ("--test-limit", args.test_limit),
                        ("--data-dir", args.data_dir)):
        if value is not None:
            flags += [flag, str(value)]
    runs = args.out.parent if args.runs is None else args.runs
    return flags + ["--out", str(runs / classifier.default_name(classifier.parse_args(flags)))]


def craft(model, images, labels, attack, desc):
    """attack(model, x, t) -> x_adv over host images (N, 1, 28, 28) in batches; host x_adv."""
    out = np.empty_like(images)
    with progress(len(images), desc) as bar:
        for s in batch_slices(len(images), EVAL_BATCH):
            out[s] = host(attack(model, on_model(model, images[s]), on_model(model, labels[s])))
            bar.update(s.stop - s.start)
    return out


def pairs(labels, classes=10):
    """Every (image index, wrong class) pair: (index (M,), target (M,)), M = 9 N for 10 classes."""
    index = np.repeat(np.arange(len(labels)), classes)
    target = np.tile(np.arange(classes), len(labels))
    keep = target != labels[index]
    return index[keep], target[keep]


# --- through a camera (physical, survival) --------------------------------------------------------

SHIFTED = 1.5  # the strength of the "shifted" transformation families: wider than EOT's 1


def destruction_rate(clean_ok, adv_ok, transformed_ok):
    """(d, destroyed, successful): successful = sum C(x) !C(x_adv) over the images (and draws:
    transformed_ok may have a leading axis of draws), destroyed = those that T turns back to
    correct; d = destroyed / successful (nan without successful images)."""
    success = clean_ok & ~adv_ok
    transformed_ok = np.asarray(transformed_ok).reshape(-1, len(success))
    destroyed = int(np.sum(success & transformed_ok))
    total = int(success.sum()) * len(transformed_ok)
    return (destroyed / total if total else float("nan")), destroyed, total


def transformed_correct(model, x, t, family, draws, rng):
    """(draws, N) host bool: classified correctly after each of `draws` fresh transformations."""
    ok = np.zeros((draws, len(x)), dtype=bool)
    for d in range(draws):
        for s in batch_slices(len(x), EVAL_BATCH):
            xb = on_model(model, x[s])
            tx, _ = family.forward(xb, family.sample(rng, xb.shape))
            ok[d, s] = predict(model, host(tx)) == t[s]
    return ok
