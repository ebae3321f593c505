"""Tests for the command line: train.py (smoke runs, resume, every bad input), plot.py and the
checkpoint files.

train.main and plot.main run in-process for speed; one test runs `python train.py` for real to
prove the entry point. Runs are tiny: 200 training and 100 test images for the smoke runs, 96
and 50 (three batches of 32) elsewhere, one or two epochs.
"""
import csv
import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import plot
import train
from attacks import default_attacks, evaluate, standard_step
from data.mnist import EMBEDDED_DIR, load_mnist
from nn import reference_cnn
from nn.checkpoint import CheckpointError, load_checkpoint, section
from training import classifier
from training.loop import interrupts_deferred, run_epochs
from training.plots import run_label, run_labels

REPO = Path(__file__).resolve().parents[1]
FAST = ["--train-limit", "200", "--test-limit", "100"]
SMALL = ["--train-limit", "96", "--test-limit", "50", "--batch-size", "32"]  # 3 batches an epoch
COLUMNS = ["epoch", "train_loss", "n", "n_correct", "clean_acc", "clean_loss",
           "fgs_acc", "fgs_robust_acc", "fgs_linf", "fgs_l2",
           "fgv_acc", "fgv_robust_acc", "fgv_linf", "fgv_l2", "train_seconds", "eval_seconds"]
TIMES = {"train_seconds", "eval_seconds"}
PNG = b"\x89PNG\r\n\x1a\n"


def call(main, argv):
    """Exit code of main(argv), counting argparse's SystemExit (None counts as 0)."""
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:
        code = exc.code
    return 0 if code is None else code


@pytest.fixture
def cli(monkeypatch, capsys):
    """run(*argv) -> (exit code, stdout, stderr) of train.main, with prog name train.py."""
    monkeypatch.setattr(sys, "argv", ["train.py"])

    def run(*argv):
        code = call(train.main, argv)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def read_rows(run_dir):
    with open(Path(run_dir) / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def assert_one_sentence(err, *fragments):
    """A single line "train.py: error: ..." holding every fragment, and no traceback."""
    assert "Traceback" not in err
    assert err.startswith("train.py: error: ") and err.endswith("\n") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def snapshot(run_dir):
    """Bytes of every file of a run folder."""
    return {p.name: p.read_bytes() for p in sorted(Path(run_dir).iterdir())}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Finished runs shared by the tests that only read them (copy them before changing them):
    'base' is 1 epoch of standard training, 'bn' 2 epochs of standard training with BatchNorm."""
    root = tmp_path_factory.mktemp("runs")
    argv = {"base": [*SMALL, "--epochs", 1], "bn": [*SMALL, "--epochs", 2, "--bn"]}
    for name, args in argv.items():
        assert call(train.main, [*args, "--out", root / name]) == 0
    return {name: root / name for name in argv}


@pytest.fixture
def base_copy(runs, tmp_path):
    """A private copy of the 1-epoch standard run."""
    return Path(shutil.copytree(runs["base"], tmp_path / "run"))


# --- smoke runs ------------------------------------------------------------------------------

@pytest.mark.parametrize("bn", [False, True])
@pytest.mark.parametrize("mode", ["standard", "noise", "adversarial", "pgd"])
def test_smoke_run(cli, tmp_path, mode, bn):
    out_dir = tmp_path / "run"
    code, out, err = cli("--mode", mode, *(["--bn"] if bn else []), *FAST, "--epochs", 1,
                         "--out", out_dir)
    assert code == 0, err
    assert err == ""
    rows = read_rows(out_dir)
    assert len(rows) == 1 and list(rows[0]) == COLUMNS
    row = {k: float(v) for k, v in rows[0].items()}
    assert row["epoch"] == 1 and row["n"] == 100
    assert row["clean_acc"] == row["n_correct"] / 100
    for k in ("clean_acc", "fgs_acc", "fgv_acc", "fgs_robust_acc", "fgv_robust_acc"):
        assert 0 <= row[k] <= 1, k
    assert row["fgs_robust_acc"] <= row["clean_acc"] and np.isfinite(row["train_loss"])
    assert row["fgs_linf"] == pytest.approx(0.3, abs=1e-6)  # FGS moves some pixel by alpha
    assert 0 < row["fgv_linf"] <= 0.6 + 1e-6
    settings = json.loads((out_dir / "settings.json").read_text())
    assert settings["mode"] == mode and settings["bn"] == bn and settings["epochs"] == 1
    assert (out_dir / "accuracy.png").read_bytes().startswith(PNG)
    _, meta = load_checkpoint(out_dir / "checkpoint.npz")
    assert meta["epoch"] == 1 and meta["settings"]["mode"] == mode
    line = out.strip().splitlines()[-1]
    assert line.startswith("epoch 1/1")
    for word in ("clean", "FGS", "FGV"):
        assert word in line


def test_entry_point_runs_as_a_script(tmp_path):
    out_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "train.py", "--mode", "adversarial", "--bn", *FAST,
                           "--epochs", "1", "--out", str(out_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "Traceback" not in proc.stderr and "Warning" not in proc.stderr
    assert "epoch 1/1" in proc.stdout and "FGS" in proc.stdout
    assert len(read_rows(out_dir)) == 1
    for name in ("settings.json", "accuracy.png", "checkpoint.npz"):
        assert (out_dir / name).is_file()


# --- resume ----------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", [["--mode", "standard"], ["--mode", "noise"],
                                   ["--mode", "adversarial", "--bn"],
                                   ["--mode", "pgd", "--pgd-train-steps", "2",
                                    "--pgd-warmup", "2"]],
                         ids=["standard", "noise", "adversarial-bn", "pgd-warmup"])
def test_resume_equals_an_uninterrupted_run(cli, tmp_path, flags):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert cli(*flags, *SMALL, "--epochs", 2, "--out", straight)[0] == 0
    assert cli(*flags, *SMALL, "--epochs", 1, "--out", resumed)[0] == 0
    code, out, err = cli(*flags, *SMALL, "--epochs", 2, "--out", resumed, "--resume")
    assert code == 0, err
    assert "epochs 2..2" in out and "epoch 2/2" in out and "epoch 1/2" not in out
    rows_a, rows_b = read_rows(straight), read_rows(resumed)
    assert len(rows_a) == len(rows_b) == 2
    for a, b in zip(rows_a, rows_b):
        assert a.keys() == b.keys()
        assert {k: v for k, v in a.items() if k not in TIMES} == \
               {k: v for k, v in b.items() if k not in TIMES}  # the CSV text, to the last digit
    arrays_a, meta_a = load_checkpoint(straight / "checkpoint.npz")
    arrays_b, meta_b = load_checkpoint(resumed / "checkpoint.npz")
    assert arrays_a.keys() == arrays_b.keys()
    for k in arrays_a:
        np.testing.assert_array_equal(arrays_a[k], arrays_b[k], err_msg=k)
    assert meta_a["rng"] == meta_b["rng"] and meta_a["epoch"] == meta_b["epoch"] == 2


@pytest.mark.parametrize("note", [None, "OpenBLAS runs its Haswell kernels (AVX2) ..."])
def test_a_run_says_when_openblas_runs_narrower_kernels_than_the_cpu_has(cli, tmp_path,
                                                                         monkeypatch, note):
    monkeypatch.setattr(classifier, "blas_kernel_note", lambda: note)
    code, out, err = cli(*SMALL, "--epochs", 1, "--out", tmp_path / "run")
    assert code == 0 and err == ""
    assert ("note: OpenBLAS runs its Haswell" in out) == (note is not None)


def test_resume_when_all_epochs_are_done(cli, base_copy):
    before = snapshot(base_copy)
    code, out, err = cli(*SMALL, "--epochs", 1, "--out", base_copy, "--resume")
    assert code == 0 and err == ""
    assert "already has 1 epochs" in out
    after = snapshot(base_copy)
    assert after["checkpoint.npz"] == before["checkpoint.npz"]
    assert after["metrics.csv"] == before["metrics.csv"]


def test_resume_rewrites_metrics_left_behind_by_a_kill(cli, base_copy):
    """A kill between checkpoint.npz and metrics.csv on the last epoch leaves the CSV one
    epoch behind: --resume, with nothing left to train, rewrites it from the checkpoint."""
    assert cli(*SMALL, "--epochs", 2, "--out", base_copy, "--resume")[0] == 0
    full = (base_copy / "metrics.csv").read_text()
    (base_copy / "metrics.csv").write_text("".join(full.splitlines(keepends=True)[:2]))
    code, out, err = cli(*SMALL, "--epochs", 2, "--out", base_copy, "--resume")
    assert code == 0 and "already has 2 epochs" in out, err
    assert (base_copy / "metrics.csv").read_text() == full


def test_a_kill_while_an_epoch_is_saved_waits_for_both_files(tmp_path):
    """SIGINT between the checkpoint and metrics.csv (how grid.py's stop reached a run once):
    both are written, then the KeyboardInterrupt comes; SIGTERM likewise, to its handler."""
    def finish(history):
        (tmp_path / "checkpoint").write_text(str(len(history)))
        os.kill(os.getpid(), signal.SIGINT)
        (tmp_path / "metrics.csv").write_text(str(len(history)))

    def row(epoch):
        return {}

    caught = []
    # Python's own handlers, whatever the test runner's worker had set
    previous = {signal.SIGINT: signal.signal(signal.SIGINT, signal.default_int_handler),
                signal.SIGTERM: signal.signal(signal.SIGTERM, lambda n, frame: caught.append(n))}
    try:
        with pytest.raises(KeyboardInterrupt):
            run_epochs([], 3, row, row, finish)
        assert [(tmp_path / f).read_text() for f in ("checkpoint", "metrics.csv")] == ["1", "1"]
        with interrupts_deferred():
            os.kill(os.getpid(), signal.SIGTERM)
            assert not caught
        assert caught == [signal.SIGTERM]
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def test_settings_are_replaced_not_rewritten_in_place(cli, base_copy):
    """settings.json is written to a temporary file and renamed over the old one, so a reader
    (grid.py report) sees the old file or the new one, never a truncated one."""
    old = base_copy / "settings.json"
    inode = old.stat().st_ino
    assert cli(*SMALL, "--epochs", 1, "--out", base_copy, "--resume")[0] == 0
    assert old.stat().st_ino != inode and json.loads(old.read_text())["resume"] is True
    umask = os.umask(0o022)  # read (the call sets it), then restored
    os.umask(umask)
    assert not list(base_copy.glob("*.tmp")) and old.stat().st_mode & 0o777 == 0o666 & ~umask


def test_a_folder_being_written_is_refused(cli, base_copy):
    """A second writer of a run folder (here a process holding its lock, as a training process
    orphaned by a lost worker would) gets one sentence and exit 1, and writes nothing; once
    that process is killed (kill -9), the lock is gone and the run resumes."""
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; "
         f"fd = os.open({str(base_copy / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.pwrite(fd, str(os.getpid()).encode(), 0); "
         "print('locked', flush=True); time.sleep(60)"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        before = {k: v for k, v in snapshot(base_copy).items() if k != ".lock"}
        code, out, err = cli(*SMALL, "--epochs", 2, "--out", base_copy, "--resume")
        assert code == 1
        assert_one_sentence(err, f"{base_copy} is being written by process {holder.pid}")
        assert {k: v for k, v in snapshot(base_copy).items() if k != ".lock"} == before
    finally:
        holder.kill()
        holder.wait()
    assert cli(*SMALL, "--epochs", 2, "--out", base_copy, "--resume")[0] == 0
    assert len(read_rows(base_copy)) == 2


def test_two_writers_of_one_file_never_share_a_temporary_file(tmp_path):
    """atomic_file (checkpoints, CSV, JSON): each writer its own temporary name, the last
    rename wins whole; an exception inside the block leaves the old file and no temporary."""
    from nn.checkpoint import atomic_file
    path = tmp_path / "checkpoint.npz"
    path.write_text("old")
    with atomic_file(path) as a, atomic_file(path) as b:
        assert len(list(tmp_path.glob("checkpoint.npz.*.tmp"))) == 2
        a.write("first writer")
        b.write("second writer")
    assert path.read_text() == "first writer"  # b renamed first, a (the outer block) last
    with pytest.raises(KeyboardInterrupt):
        with atomic_file(path) as f:
            f.write("half")
            raise KeyboardInterrupt
    assert path.read_text() == "first writer" and sorted(tmp_path.iterdir()) == [path]


# --- bad input: argparse ---------------------------------------------------------------------

BAD_FLAGS = [
    (["--alpha", "1.5"], "argument --eps/--alpha: expected a number in [0, 1], got 1.5"),
    (["--alpha", "-0.1"], "argument --eps/--alpha: expected a number in [0, 1], got -0.1"),
    (["--alpha", "nan"], "argument --eps/--alpha: expected a number in [0, 1], got nan"),
    (["--fgv-alpha", "2"], "argument --fgv-alpha: expected a number in [0, 1], got 2.0"),
    (["--noise-alpha", "-1"], "argument --noise-alpha: expected a number in [0, 1], got -1.0"),
    (["--epochs", "0"], "argument --epochs: expected a positive whole number, got 0"),
    (["--epochs", "-2"], "argument --epochs: expected a positive whole number, got -2"),
    (["--batch-size", "0"], "argument --batch-size: expected a positive whole number, got 0"),
    (["--train-limit", "0"], "argument --train-limit: expected a positive whole number, got 0"),
    (["--test-limit", "-5"], "argument --test-limit: expected a positive whole number, got -5"),
    (["--epochs", "two"], "argument --epochs: expected a positive whole number, got 'two'"),
    (["--batch-size", "6.4"],
     "argument --batch-size: expected a positive whole number, got '6.4'"),
    (["--alpha", "abc"], "argument --eps/--alpha: expected a number, got 'abc'"),
    (["--lr", "fast"], "argument --lr: expected a number, got 'fast'"),
    (["--lr", "0"], "argument --lr: expected a number in (0, inf), got 0.0"),
    (["--momentum", "1"], "argument --momentum: expected a number in [0, 1), got 1.0"),
    (["--seed", "x"], "argument --seed: expected a whole number >= 0, got 'x'"),
    (["--seed", "-1"], "argument --seed: expected a whole number >= 0, got -1"),
    (["--mode", "turbo"], "argument --mode: invalid choice: 'turbo'"),
    (["--device", "tpu"], "argument --device: invalid choice: 'tpu'"),
    (["--epochs"], "argument --epochs: expected one argument"),
]


@pytest.mark.parametrize("argv, message", BAD_FLAGS, ids=[" ".join(a) for a, _ in BAD_FLAGS])
def test_bad_flag_is_one_argparse_error(cli, tmp_path, argv, message):
    # tiny limits first, so that a parser that wrongly accepts the flag only runs briefly
    code, out, err = cli(*SMALL, "--epochs", 1, "--out", tmp_path / "run", *argv)
    assert code == 2
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"train.py: error: {message}"), last
    assert err.strip().splitlines()[0].startswith("usage: train.py")
    assert not (tmp_path / "run").exists()


# --- bad input: found while running ----------------------------------------------------------

def test_missing_data_dir(cli, tmp_path):
    code, _, err = cli(*SMALL, "--data-dir", tmp_path / "nowhere", "--out", tmp_path / "run")
    assert code == 1
    assert_one_sentence(err, "nowhere", "does not exist")
    assert not (tmp_path / "run").exists()


@pytest.fixture
def data_copy(tmp_path):
    """A copy of the four embedded .gz files."""
    folder = tmp_path / "data"
    folder.mkdir()
    for path in EMBEDDED_DIR.glob("*.gz"):
        shutil.copy(path, folder)
    return folder


def flip_middle_byte(path):
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    path.write_bytes(bytes(raw))


def test_corrupt_gzipped_label_file(cli, tmp_path, data_copy):
    flip_middle_byte(data_copy / "train-labels-idx1-ubyte.gz")
    code, _, err = cli(*SMALL, "--data-dir", data_copy, "--out", tmp_path / "run")
    assert code == 1
    assert_one_sentence(err, "train-labels-idx1-ubyte.gz")


def test_corrupt_plain_label_file_fails_its_checksum(cli, tmp_path, data_copy):
    gz = data_copy / "t10k-labels-idx1-ubyte.gz"
    plain = data_copy / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress(gz.read_bytes()))
    gz.unlink()
    flip_middle_byte(plain)
    code, _, err = cli(*SMALL, "--data-dir", data_copy, "--out", tmp_path / "run")
    assert code == 1
    assert_one_sentence(err, "t10k-labels-idx1-ubyte", "checksum")


def test_gpu_without_cupy(cli, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "cupy", None)  # `import cupy` now raises ImportError
    code, _, err = cli(*SMALL, "--device", "gpu", "--out", tmp_path / "run")
    assert code == 1
    assert_one_sentence(err, "--device gpu needs CuPy")
    assert not (tmp_path / "run").exists()


def test_resume_without_a_checkpoint(cli, tmp_path):
    code, _, err = cli(*SMALL, "--resume", "--out", tmp_path / "run")
    assert code == 1
    assert_one_sentence(err, "--resume", "no checkpoint", str(tmp_path / "run"))


def test_resume_with_other_settings_names_them(cli, base_copy):
    before = snapshot(base_copy)
    code, _, err = cli(*SMALL, "--epochs", 2, "--lr", 0.02, "--out", base_copy, "--resume")
    assert code == 1
    assert_one_sentence(err, "other settings", "--lr 0.01 (now 0.02)")
    assert "--alpha" not in err  # only what changed
    assert snapshot(base_copy) == before
    code, _, err = cli(*SMALL, "--epochs", 2, "--bn", "--out", base_copy, "--resume")
    assert code == 1
    assert_one_sentence(err, "--bn False (now True)")


def test_resume_from_a_truncated_checkpoint(cli, base_copy):
    ckpt = base_copy / "checkpoint.npz"
    ckpt.write_bytes(ckpt.read_bytes()[:1000])
    code, _, err = cli(*SMALL, "--epochs", 2, "--out", base_copy, "--resume")
    assert code == 1
    assert_one_sentence(err, "--resume", str(ckpt), "not a readable checkpoint")


def test_folder_holding_a_run_needs_resume(cli, base_copy):
    before = snapshot(base_copy)
    code, _, err = cli(*SMALL, "--epochs", 2, "--out", base_copy)
    assert code == 1
    assert_one_sentence(err, str(base_copy), "already holds a run", "--resume")
    assert snapshot(base_copy) == before


def test_out_that_is_a_file(cli, tmp_path):
    path = tmp_path / "file"
    path.write_text("not a folder")
    code, _, err = cli(*SMALL, "--out", path)
    assert code == 1
    assert_one_sentence(err, "cannot create the run folder", str(path))


def test_nan_loss_stops_and_keeps_the_last_checkpoint(cli, base_copy, monkeypatch):
    before = snapshot(base_copy)
    calls = []

    def nan_on_second_batch(model, optimizer, x, t):
        loss = standard_step(model, optimizer, x, t)  # the real update happens first
        calls.append(1)
        return float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(classifier, "standard_step", nan_on_second_batch)
    code, _, err = cli(*SMALL, "--epochs", 2, "--out", base_copy, "--resume")
    assert code == 1
    assert_one_sentence(err, "the training loss became nan in epoch 2/2, batch 2")
    after = snapshot(base_copy)
    for name in ("checkpoint.npz", "metrics.csv", "accuracy.png"):
        assert after[name] == before[name], name  # byte for byte


def test_weights_broken_by_the_last_step_are_not_saved(cli, base_copy, monkeypatch):
    """The loss is checked before each update: the epoch's last update is checked too."""
    before = snapshot(base_copy)
    calls = []

    def poison_last_step(model, optimizer, x, t):
        loss = standard_step(model, optimizer, x, t)
        calls.append(1)
        if len(calls) == 3:  # the third and last batch of the epoch
            for p in model.params.values():
                p[...] = np.nan
        return loss

    monkeypatch.setattr(classifier, "standard_step", poison_last_step)
    code, _, err = cli(*SMALL, "--epochs", 2, "--out", base_copy, "--resume")
    assert code == 1
    assert_one_sentence(err, "the weights became infinite or NaN in epoch 2/2")
    after = snapshot(base_copy)
    for name in ("checkpoint.npz", "metrics.csv"):
        assert after[name] == before[name], name


def test_diverging_learning_rate_gives_one_sentence(cli, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's overflow warnings would raise here
        code, _, err = cli(*SMALL, "--lr", "1e30", "--out", tmp_path / "run")
    assert code == 1
    assert_one_sentence(err, "the training loss became", "try a smaller --lr")
    assert not (tmp_path / "run" / "checkpoint.npz").exists()


def test_interrupt_keeps_the_last_checkpoint(cli, base_copy, monkeypatch):
    before = snapshot(base_copy)

    def interrupted(model, optimizer, x, t):
        raise KeyboardInterrupt

    monkeypatch.setattr(classifier, "standard_step", interrupted)
    code, _, err = cli(*SMALL, "--epochs", 2, "--out", base_copy, "--resume")
    assert code == 130
    assert "Traceback" not in err and "continue with --resume" in err
    assert snapshot(base_copy)["checkpoint.npz"] == before["checkpoint.npz"]


# --- plot.py ---------------------------------------------------------------------------------

@pytest.fixture
def plot_cli(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["plot.py"])

    def run(*argv):
        code = call(plot.main, argv)
        out, err = capsys.readouterr()
        return code, out, err
    return run


def test_plot_overlays_runs(plot_cli, runs, tmp_path):
    out_png = tmp_path / "out.png"
    code, out, err = plot_cli(runs["base"], runs["bn"], "-o", out_png)
    assert code == 0 and err == ""
    assert out_png.read_bytes().startswith(PNG)
    assert str(out_png) in out
    assert run_label(runs["bn"]) == "standard, BN"
    assert run_labels([runs["base"], runs["bn"], runs["base"]]) == \
        ["standard, seed 0", "standard, BN", "standard, seed 0"]


def test_plot_out_is_a_folder(plot_cli, runs, tmp_path):
    code, out, err = plot_cli(runs["base"], "--out", tmp_path / "figs", "--name", "a.png")
    assert code == 0 and err == "" and f"wrote {tmp_path / 'figs' / 'a.png'}" in out
    assert (tmp_path / "figs" / "a.png").read_bytes().startswith(PNG)


@pytest.mark.parametrize("content", [None, ",".join(COLUMNS) + "\n"], ids=["missing", "empty"])
def test_plot_folder_without_metrics(plot_cli, runs, tmp_path, content):
    bad = tmp_path / "not-a-run"
    bad.mkdir()
    if content is not None:
        (bad / "metrics.csv").write_text(content)
    code, _, err = plot_cli(runs["base"], bad, "-o", tmp_path / "out.png")
    assert code == 1
    assert "Traceback" not in err and err.count("\n") == 1
    assert err.startswith("plot.py: error: ") and "not-a-run" in err
    assert ("holds no metrics.csv" if content is None else "has no epochs") in err
    assert not (tmp_path / "out.png").exists()


# --- checkpoint files ------------------------------------------------------------------------

def test_checkpoint_holds_the_whole_state(runs):
    path = runs["bn"] / "checkpoint.npz"
    with np.load(path, allow_pickle=False) as z:  # plain arrays only: no pickle needed
        assert all(z[k].dtype != object for k in z.files)
    arrays, meta = load_checkpoint(path)
    model = reference_cnn(batch_norm=True)
    params, buffers = model.params, model.buffers
    assert {k for k in arrays if k.startswith("model.")} == \
           {f"model.{k}" for k in [*params, *buffers]}
    assert {k for k in arrays if k.startswith("optim.")} == {f"optim.velocity.{k}" for k in params}
    assert len(arrays) == 2 * len(params) + len(buffers)
    for k in params:
        assert arrays[f"optim.velocity.{k}"].shape == params[k].shape
        assert np.any(arrays[f"optim.velocity.{k}"] != 0), k
    assert any(k.endswith("running_mean") for k in buffers)
    for k in buffers:  # the statistics moved away from their initial 0 and 1
        init = 0.0 if k.endswith("running_mean") else 1.0
        assert not np.allclose(arrays[f"model.{k}"], init), k
    assert meta["epoch"] == 2 and meta["settings"]["bn"] is True
    assert len(meta["history"]) == 2
    rng = np.random.default_rng()
    rng.bit_generator.state = meta["rng"]  # a valid generator state

    # the stored model is the one evaluated in the last row of metrics.csv
    model.load_state_dict(section(arrays, "model"))
    test_x, test_t = load_mnist("test", limit=50)
    result = evaluate(model, test_x, test_t, default_attacks(0.3, 0.6))
    last = read_rows(runs["bn"])[-1]
    for k in ("n_correct", "clean_acc", "fgs_acc", "fgv_acc", "clean_loss", "fgs_l2"):
        assert repr(result[k]) == last[k], k


@pytest.mark.parametrize("damage", ["empty", "header", "half", "last-byte", "flipped-byte"])
def test_damaged_checkpoint_raises_checkpoint_error(runs, tmp_path, damage):
    raw = (runs["base"] / "checkpoint.npz").read_bytes()
    cut = {"empty": 0, "header": 20, "half": len(raw) // 2, "last-byte": len(raw) - 1}
    if damage == "flipped-byte":
        raw = bytearray(raw)
        raw[len(raw) // 2] ^= 0xFF
        data = bytes(raw)
    else:
        data = raw[:cut[damage]]
    path = tmp_path / "checkpoint.npz"
    path.write_bytes(data)
    with pytest.raises(CheckpointError, match="checkpoint") as info:
        load_checkpoint(path)
    assert str(path) in str(info.value)


def test_missing_checkpoint_raises_checkpoint_error(tmp_path):
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "none.npz")
    assert str(tmp_path / "none.npz") in str(info.value)



def test_plot_rejects_a_damaged_metrics_file(plot_cli, runs, tmp_path):
    bad = tmp_path / "damaged"
    bad.mkdir()
    (bad / "metrics.csv").write_text("epoch,clean_acc\n1,0.9\n2,oops\n")
    code, _, err = plot_cli(runs["base"], bad, "-o", tmp_path / "out.png")
    assert code == 1 and "Traceback" not in err and err.count("\n") == 1
    assert "damaged" in err and "is damaged" in err
    assert not (tmp_path / "out.png").exists()


@pytest.mark.skipif(not __import__("data.mnist").mnist.FASHION_DIR.is_dir(),
                    reason="no Fashion-MNIST: apt-get install dataset-fashion-mnist")
def test_train_on_fashion_mnist_names_the_dataset(cli, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, out, err = cli(*SMALL, "--epochs", 1, "--dataset", "fashion-mnist", "--alpha", 0.1)
    assert code == 0, err
    run = tmp_path / "runs" / "fashion-standard-seed0-eps0.1-t96-e50"
    assert "(Fashion-MNIST)" in out
    assert json.loads((run / "settings.json").read_text())["dataset"] == "fashion-mnist"
    code, out, err = cli(*SMALL, "--epochs", 2, "--alpha", 0.1, "--out", run, "--resume")
    assert code == 1 and "--dataset fashion-mnist (now mnist)" in err


def test_eps_names_the_radius_and_alpha_stays_its_alias():
    """One vocabulary across the commands: --eps; the exercise's --alpha still works."""
    assert classifier.parse_args(["--eps", "0.1"]).alpha == 0.1
    assert classifier.parse_args(["--alpha", "0.2"]).alpha == 0.2
    import attack
    assert attack.parse_args(["fooling", "--eps", "0.2"]).alpha == 0.2
    assert attack.parse_args(["gallery", "--alpha", "0.1"]).alpha == 0.1
