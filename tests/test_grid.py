"""Tests for grid.py: the grid's plan, running and resuming real (tiny) train.py runs, bad
grids, and the report rebuilt from the committed fixture tests/fixtures/grid (10 tiny runs made
by `grid.py run --modes standard adversarial --seeds 0 1 --epochs 3 --pgd-images 20
--reference-epochs 2 -- --train-limit 300 --test-limit 100`), checked against its CSVs."""
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

import grid
from nn.checkpoint import load_checkpoint
from training.grid import plan
from training.readme import BLOCK, readme_block
from training.report import findings

FIXTURE = Path(__file__).parent / "fixtures" / "grid"
PNG = b"\x89PNG\r\n\x1a\n"
TINY = ["--", "--train-limit", "96", "--test-limit", "40"]


def run_grid(capsys, *argv):
    code = grid.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def csv_column(run, column):
    with open(FIXTURE / run / "metrics.csv", newline="") as f:
        return [float(row[column]) for row in csv.DictReader(f)]


def table_rows(readme):
    """{(training, epoch): [cells after the seeds column]} of the report's Markdown table."""
    rows = {}
    for line in readme.splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 10 and cells[1].isdigit():
            rows[cells[0], int(cells[1])] = (int(cells[2]), cells[3:])
    return rows


def test_report_numbers_are_the_csvs_mean_and_std(tmp_path, capsys):
    code, out, err = run_grid(capsys, "report", "--runs", FIXTURE, "--out", tmp_path)
    assert code == 0, err
    readme = (tmp_path / "README.md").read_text()
    for name in ("accuracy.png", "robust.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG)
    rows = table_rows(readme)
    columns = ["clean_acc", "fgs_acc", "fgv_acc", "pgd_acc", "fgs_robust_acc", "fgv_robust_acc",
               "pgd_robust_acc"]
    for training, runs, last in (("adversarial, BN", ["adversarial-bn-seed0-t300-e100",
                                                      "adversarial-bn-seed1-t300-e100"], 3),
                                 ("standard", ["standard-seed0-t300-e100",
                                               "standard-seed1-t300-e100"], 3),
                                 ("pgd", ["pgd-seed0-t300-e100"], 2)):
        for epoch in (1, last):
            seeds, cells = rows[training, epoch]
            assert seeds == len(runs)
            for column, cell in zip(columns, cells):
                v = 100 * np.array([csv_column(r, column)[epoch - 1] for r in runs])
                expected = f"{v.mean():.2f}" + (f" ± {v.std(ddof=1):.2f}" if len(v) > 1 else "")
                if np.ptp(v) >= 10:  # seeds far apart are listed too
                    expected += f" (seeds: {', '.join(f'{x:.1f}' for x in v)})"
                assert cell == expected, (training, epoch, column)
    assert ("standard", 2) not in rows  # epochs 1, 5, 10, 25, 50 and the last one only
    clean = np.mean([csv_column(f"standard-bn-seed{s}-t300-e100", "clean_acc") for s in (0, 1)],
                    axis=0)
    best = int(np.argmax(clean)) + 1
    assert (f"**standard, BN** (2 seeds, 3 epochs): best clean accuracy "
            f"{100 * clean.max():.2f}% at epoch {best}") in readme
    assert "PGD eps 0.3 with 20 steps on the first 20 test images" in readme
    assert "Madry et al. 2018" in readme and "Goodfellow et al. 2015" in readme


def test_seeds_far_apart_are_listed_one_by_one():
    """A mean and a standard deviation hide a bimodal spread (adversarial training with BN at
    epoch 50: PGD 1.3%, 0.1% and 45.8%): seeds 10 points or more apart are listed."""
    from training.report import fmt
    assert fmt(0.1573, 0.2602, np.array([0.013, 0.001, 0.459])) == \
        "15.73 ± 26.02 (seeds: 1.3, 0.1, 45.9)"
    assert fmt(0.5, 0.04, np.array([0.46, 0.5, 0.54])) == "50.00 ± 4.00"
    assert fmt(0.5, np.nan, np.array([0.5])) == "50.00"
    assert "15.72 ± 26.02 (seeds: 1.3, 0.1, 45.8)" in (Path(grid.__file__).parent /
                                                      "README.md").read_text()


def test_report_of_a_folder_without_runs_is_one_sentence(tmp_path, capsys):
    code, out, err = run_grid(capsys, "report", "--runs", tmp_path, "--out", tmp_path / "r")
    assert code == 1
    assert err.strip() == f"grid.py: error: {tmp_path} holds no run folders (settings.json and " \
                          "metrics.csv)"


def test_report_names_the_unfinished_runs_and_whether_they_resume(tmp_path, capsys):
    for name, epochs, checkpoint in (("standard-seed0-t300-e100", 50, True),
                                     ("standard-seed1-t300-e100", 50, False),
                                     ("pgd-seed0-t300-e100", 2, True)):
        run = tmp_path / "runs" / name
        shutil.copytree(FIXTURE / name, run)
        settings = json.loads((run / "settings.json").read_text())
        (run / "settings.json").write_text(json.dumps({**settings, "epochs": epochs}))
        if checkpoint:
            (run / "checkpoint.npz").write_bytes(b"")
    code, out, err = run_grid(capsys, "report", "--runs", tmp_path / "runs", "--out", tmp_path)
    assert code == 0, err
    assert ("**In progress**: runs still short of their epochs: standard seed 0 (3 of 50, "
            "resumes from its checkpoint), standard seed 1 (3 of 50, starts again).\n"
            in (tmp_path / "README.md").read_text())


def test_findings_say_when_a_mean_curve_runs_on_fewer_seeds(tmp_path, capsys):
    for seed in (0, 1):
        shutil.copytree(FIXTURE / f"standard-seed{seed}-t300-e100",
                        tmp_path / "runs" / f"standard-seed{seed}-t300-e100")
    metrics = tmp_path / "runs" / "standard-seed1-t300-e100" / "metrics.csv"
    metrics.write_text("".join(metrics.read_text().splitlines(keepends=True)[:3]))  # 2 epochs
    code, out, err = run_grid(capsys, "report", "--runs", tmp_path / "runs", "--out", tmp_path)
    assert code == 0, err
    assert ("**standard** (2 seeds, 3 epochs; after epoch 2 the mean is over fewer seeds): "
            in (tmp_path / "README.md").read_text())


def test_catastrophic_overfitting_is_counted_seed_by_seed():
    """Two seeds whose PGD accuracy collapses while FGS accuracy holds, and one that keeps it:
    the mean collapses too, and the finding says in how many seeds."""
    fgs = np.array([0.90, 0.95, 0.96, 0.97])
    curves = [[0.2, 0.4, 0.1, 0.0], [0.2, 0.3, 0.1, 0.0], [0.2, 0.3, 0.4, 0.45]]
    seeds = {s: {"epoch": np.arange(1, 5), "clean_acc": np.full(4, 0.99), "fgs_acc": fgs,
                 "pgd_acc": np.array(pgd)} for s, pgd in enumerate(curves)}
    assert findings(("adversarial", True), seeds).endswith(
        "while FGS accuracy holds: catastrophic overfitting in 2 of 3 seeds.")
    seeds[0]["pgd_acc"] = seeds[2]["pgd_acc"]  # one seed left: the mean no longer falls
    assert findings(("adversarial", True), seeds).endswith(
        "; catastrophic overfitting in 1 of 3 seeds (not in their mean).")
    assert "overfitting" not in findings(("adversarial", True), {2: seeds[2]})


def test_report_writes_the_last_epoch_rows_into_the_readme_block(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\nbefore\n\n{BLOCK[0]}\nstale\n{BLOCK[1]}\n\nafter\n")
    for _ in range(2):  # a second report rewrites the block, it does not add another
        code, out, err = run_grid(capsys, "report", "--runs", FIXTURE, "--out",
                                  tmp_path / "results", "--readme", readme)
        assert code == 0, err
    text = readme.read_text()
    assert text.startswith(f"# Project\n\nbefore\n\n{BLOCK[0]}\n")
    assert text.endswith(f"{BLOCK[1]}\n\nafter\n") and "stale" not in text
    assert "](results/accuracy.png)" in text and "](results/README.md)" in text
    rows, report = table_rows(text), table_rows((tmp_path / "results" / "README.md").read_text())
    assert sorted(rows) == [("adversarial", 3), ("adversarial, BN", 3), ("pgd", 2),
                            ("pgd, BN", 2), ("standard", 3), ("standard, BN", 3)]
    assert all(rows[k] == report[k] for k in rows)


def test_a_readme_without_the_block_is_refused(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(f"{BLOCK[1]}\n{BLOCK[0]}\n")
    code, out, err = run_grid(capsys, "report", "--runs", FIXTURE, "--out", tmp_path,
                              "--readme", readme)
    assert code == 1
    assert err.strip() == f"grid.py: error: {readme} has no block to write: it needs the line " \
                          f"{BLOCK[0]} and, below it, {BLOCK[1]}"


def block_lines(text, markers):
    """The lines of `text` between its two `markers` lines."""
    return text[text.index(markers[0]) + len(markers[0]):text.index(markers[1])].strip(
        "\n").splitlines()


@pytest.mark.parametrize("page", ["README.md", "docs/exercise.md"])
def test_the_readme_and_the_docs_show_the_committed_grid_results(page):
    root = Path(__file__).resolve().parent.parent
    text = (root / page).read_text()
    expected = readme_block(root / "results" / "grid", root / "results", (root / page).parent)
    assert block_lines(text, BLOCK) == expected, \
        f"{page} is behind results/grid: run python grid.py report --readme README.md " \
        "docs/exercise.md"


def test_plan_puts_the_first_seed_and_the_reference_first(tmp_path):
    runs = plan(["standard", "adversarial"], [False, True], [0, 1], 50, [], tmp_path,
                reference=[("pgd", False, 0, 20)])
    assert [r.name for r in runs] == [
        "standard-seed0", "standard-bn-seed0", "adversarial-seed0", "adversarial-bn-seed0",
        "pgd-seed0", "standard-seed1", "standard-bn-seed1", "adversarial-seed1",
        "adversarial-bn-seed1"]
    assert runs[4].epochs == 20 and runs[4].out == tmp_path / "pgd-seed0"


@pytest.mark.parametrize("argv, fragment", [
    (["run", "--modes", "bogus"], "invalid choice: 'bogus'"),
    (["run", "--jobs", "0"], "expected a positive whole number, got 0"),
    (["run", "--", "--lr", "-1"], "grid.py: error: the grid asks for a bad train.py run: "
                                  "--mode standard --seed 0 --epochs 50 --lr -1"),
    (["report", "--", "--bn"], "report takes no train.py flags"),
])
def test_bad_grids_are_refused_before_any_training(tmp_path, capsys, argv, fragment):
    try:
        code, out, err = run_grid(capsys, *argv[:1], "--runs", tmp_path, *argv[1:])
    except SystemExit as exc:
        code, err = exc.code, capsys.readouterr().err
    assert code != 0 and fragment in err and "Traceback" not in err
    assert not any(tmp_path.iterdir())


def test_same_name_twice_is_refused(tmp_path):
    with pytest.raises(Exception, match="same run twice: pgd-seed0"):
        plan(["pgd"], [False], [0], 3, [], tmp_path, reference=[("pgd", False, 0, 2)])


@pytest.mark.slow
def test_grid_runs_skips_and_resumes_real_runs(tmp_path, capsys):
    argv = ["run", "--modes", "standard", "--bn", "no", "--seeds", "0", "1", "--epochs", 1,
            "--pgd-images", 10, "--reference-epochs", 0, "--jobs", 2, "--runs", tmp_path, *TINY]
    code, out, err = run_grid(capsys, *argv)
    assert code == 0, err
    assert out.startswith(f"grid of 2 runs in {tmp_path}/, 2 at a time\n")
    assert "[standard-seed0-t96-e40] epoch 1/1" in out and "\n2 runs complete" in out
    settings = json.loads((tmp_path / "standard-seed1-t96-e40" / "settings.json").read_text())
    assert settings["seed"] == 1 and settings["pgd_images"] == 10
    argv[argv.index("--epochs") + 1] = 2
    code, out, err = run_grid(capsys, *argv)
    assert code == 0, err
    assert "[standard-seed1-t96-e40] resuming after epoch 1 on " in out
    assert len(csv_rows(tmp_path / "standard-seed0-t96-e40")) == 2
    code, out, err = run_grid(capsys, *argv)
    assert code == 0 and out.count("already has 2 epochs: skipped") == 2
    # a committed run (metrics.csv, no checkpoint) cannot resume: the grid refuses to start it
    # again over its epochs (before anything trains) unless --retrain
    (tmp_path / "standard-seed1-t96-e40" / "checkpoint.npz").unlink()
    argv[argv.index("--epochs") + 1] = 3
    before = (tmp_path / "standard-seed0-t96-e40" / "metrics.csv").read_bytes()
    code, out, err = run_grid(capsys, *argv)
    assert code == 1 and out == ""
    assert err == (f"grid.py: error: {tmp_path / 'standard-seed1-t96-e40'} has 2 epochs but no "
                   "checkpoint to continue from: asking for 3 would train it again from epoch 1 "
                   "and replace those metrics; add --retrain to do so\n")
    assert (tmp_path / "standard-seed0-t96-e40" / "metrics.csv").read_bytes() == before
    code, out, err = run_grid(
        capsys, *argv[:argv.index("--")], "--retrain", *argv[argv.index("--"):])
    assert code == 0, err
    assert "[standard-seed1-t96-e40] starting again (its 2 epochs have no checkpoint)" in out
    epochs = [row["epoch"] for row in csv_rows(tmp_path / "standard-seed1-t96-e40")]
    assert epochs == ["1", "2", "3"]


@pytest.mark.slow
def test_a_failed_run_is_named_and_the_others_go_on(tmp_path, capsys):
    """A run folder made with another learning rate cannot resume: that run fails, the other
    runs, and the grid exits 1 naming it."""
    base = ["run", "--modes", "standard", "--bn", "no", "--epochs", 1, "--pgd-images", 0,
            "--reference-epochs", 0, "--jobs", 1, "--runs", tmp_path]
    code, out, err = run_grid(capsys, *base, "--seeds", 0, *TINY, "--lr", "0.05")
    assert code == 0 and out.startswith(f"grid of 1 run in {tmp_path}/, 1 at a time\n")
    assert "\n1 run complete" in out
    code, out, err = run_grid(capsys, *base, "--seeds", 0, 1, "--epochs", 2, *TINY)
    assert code == 1
    assert "[standard-seed0-t96-e40] failed (exit 1)" in out
    assert "[standard-seed1-t96-e40] finished: 2 epochs" in out
    assert err.strip() == "grid.py: error: 1 run(s) did not finish: standard-seed0-t96-e40"


def test_a_checkpoint_ahead_of_its_metrics_is_finished_by_the_grid(tmp_path, capsys):
    """A kill between checkpoint.npz and metrics.csv on the last epoch: the checkpoint has 2
    epochs, the CSV 1. The grid sees the run as unfinished (the checkpoint is the source of
    truth), train.py --resume rewrites the CSV from the checkpoint's history, and the grid then
    counts 2 epochs (before: relaunched forever, 'finished: 1 epochs', the CSV never fixed)."""
    argv = ["run", "--modes", "standard", "--bn", "no", "--seeds", "0", "--epochs", 2,
            "--pgd-images", 0, "--reference-epochs", 0, "--runs", tmp_path, *TINY]
    assert run_grid(capsys, *argv)[0] == 0
    run = tmp_path / "standard-seed0-t96-e40"
    full = (run / "metrics.csv").read_text()
    (run / "metrics.csv").write_text("".join(full.splitlines(keepends=True)[:2]))
    code, out, err = run_grid(capsys, *argv)
    assert code == 0, err
    assert "[standard-seed0-t96-e40] finished: 2 epochs" in out and "\n1 run complete" in out
    assert (run / "metrics.csv").read_text() == full
    code, out, err = run_grid(capsys, *argv)
    assert code == 0 and "already has 2 epochs: skipped" in out


@pytest.mark.slow
def test_a_locked_run_folder_is_not_written_and_the_others_go_on(tmp_path, capsys):
    """Another process holds the lock of one run folder (as a training process orphaned by a
    lost worker would): that run fails with train.py's sentence and its folder is untouched;
    the other run of the grid finishes."""
    locked = tmp_path / "standard-seed0-t96-e40"
    locked.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, time; "
         f"fd = os.open({str(locked / '.lock')!r}, os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('locked', flush=True); time.sleep(120)"],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "locked\n"
        code, out, err = run_grid(capsys, "run", "--modes", "standard", "--bn", "no", "--seeds",
                                  0, 1, "--epochs", 1, "--pgd-images", 0, "--reference-epochs",
                                  0, "--runs", tmp_path, *TINY)
    finally:
        holder.kill()
        holder.wait()
    assert code == 1 and "[standard-seed0-t96-e40] failed (exit 1)" in out
    assert "is being written by process" in (locked / "train.log").read_text()
    assert sorted(p.name for p in locked.iterdir()) == [".lock", "train.log"]
    assert "[standard-seed1-t96-e40] finished: 1 epochs" in out


def _start(args, **kwargs):
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            **kwargs)


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc (Linux)")
def test_a_worker_killed_mid_run_is_replaced_and_the_metrics_are_unchanged(tmp_path):
    """A scheduler and two workers as separate processes on loopback; the worker running the
    grid's run is killed with SIGKILL after epoch 2. Dask runs the task again on the other
    worker, which resumes from the checkpoint: the grid completes, with metrics identical (to
    the last digit, times aside) to an uninterrupted run's."""
    repo = Path(grid.__file__).parent
    dask = str(Path(sys.executable).parent / "dask")
    address_file = tmp_path / "scheduler.json"
    scheduler = _start([dask, "scheduler", "--host", "127.0.0.1", "--port", "0",
                        "--no-dashboard", "--scheduler-file", str(address_file)])
    procs = [scheduler]
    try:
        for _ in range(200):
            if address_file.exists() and address_file.stat().st_size:
                break
            time.sleep(0.1)
        address = json.loads(address_file.read_text())["address"]
        procs += [_start([dask, "worker", address, "--nthreads", "1", "--no-nanny",
                          "--host", "127.0.0.1", "--no-dashboard"], cwd=repo)
                  for _ in range(2)]
        flags = ["--modes", "standard", "--bn", "no", "--seeds", "0", "--epochs", "12",
                 "--pgd-images", "0", "--reference-epochs", "0"]
        driver = _start([sys.executable, "grid.py", "run", *flags, "--runs",
                         str(tmp_path / "lost"), "--scheduler", address, *TINY], cwd=repo)
        procs.append(driver)
        lines, killed = [], None
        for line in driver.stdout:
            lines.append(line)
            if killed is None and " 2/12 " in line:
                child = next(pid for pid in os.listdir("/proc") if pid.isdigit() and
                             str(tmp_path / "lost").encode() in _cmdline(pid) and
                             b"train.py" in _cmdline(pid))
                status = Path(f"/proc/{child}/status").read_text()
                killed = int(next(l.split()[1] for l in status.splitlines()
                                  if l.startswith("PPid:")))
                os.kill(killed, signal.SIGKILL)  # the worker, not its train.py
        assert driver.wait(120) == 0, "".join(lines)
        assert killed is not None and sum("resuming after epoch" in l for l in lines) == 1
    finally:
        for p in procs:
            p.kill()
            p.wait()
    straight = tmp_path / "straight"
    assert subprocess.run([sys.executable, "train.py", "--mode", "standard", "--seed", "0",
                           "--epochs", "12", *TINY[1:], "--out", str(straight)], cwd=repo,
                          capture_output=True).returncode == 0
    lost = csv_rows(tmp_path / "lost" / "standard-seed0-t96-e40")
    assert len(lost) == 12
    for a, b in zip(lost, csv_rows(straight)):
        assert {k: v for k, v in a.items() if not k.endswith("seconds")} == \
               {k: v for k, v in b.items() if not k.endswith("seconds")}


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads /proc (Linux)")
def test_kill_stops_a_background_grid_and_its_runs(tmp_path):
    """SIGTERM to grid.py (how a background grid is stopped) stops its train.py children too:
    none is left training, and the run folder keeps whole epochs to resume from."""
    argv = ["run", "--modes", "standard", "--bn", "no", "--seeds", "0", "--epochs", "50",
            "--pgd-images", "0", "--reference-epochs", "0", "--runs", str(tmp_path), *TINY]
    proc = subprocess.Popen([sys.executable, "grid.py", *argv], cwd=Path(grid.__file__).parent,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    for line in proc.stdout:
        if " 2/50 " in line:  # train.py's "epoch  2/50 ..."
            break
    else:
        pytest.fail("the grid ended before its second epoch")
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "interrupted: every run keeps" in err
    left = [pid for pid in os.listdir("/proc") if pid.isdigit()
            and str(tmp_path).encode() in _cmdline(pid)]
    for pid in left:
        os.kill(int(pid), signal.SIGKILL)
    assert not left, "a train.py child outlived its grid"
    run = tmp_path / "standard-seed0-t96-e40"
    epochs = load_checkpoint(run / "checkpoint.npz")[1]["epoch"]
    assert 2 <= epochs < 50 and len(csv_rows(run)) == epochs
    # the same command (here asking for one epoch more) continues where the grid stopped
    argv[argv.index("--epochs") + 1] = str(epochs + 1)
    again = subprocess.run([sys.executable, "grid.py", *argv], cwd=Path(grid.__file__).parent,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0, again.stderr
    assert f"resuming after epoch {epochs} on " in again.stdout
    assert len(csv_rows(run)) == epochs + 1


def _cmdline(pid):
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:  # the process ended meanwhile
        return b""


def csv_rows(run):
    with open(run / "metrics.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_without_dask_the_grid_says_how_to_install_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # `import distributed` now fails
    code, out, err = run_grid(capsys, "run", "--modes", "standard", "--bn", "no", "--seeds", 0,
                              "--epochs", 1, "--reference-epochs", 0, "--runs", tmp_path, *TINY)
    assert code == 1 and err == "grid.py: error: grid.py run needs Dask: pip install -e '.[grid]'\n"


def test_a_report_never_mixes_datasets(tmp_path, capsys):
    for name, dataset in (("standard-seed0", "mnist"), ("fashion-standard-seed0-eps0.1",
                                                        "fashion-mnist")):
        shutil.copytree(FIXTURE / "standard-seed0-t300-e100", tmp_path / name)
        settings = json.loads((tmp_path / name / "settings.json").read_text())
        (tmp_path / name / "settings.json").write_text(json.dumps({**settings,
                                                                    "dataset": dataset}))
    code, out, err = run_grid(capsys, "report", "--runs", tmp_path, "--out", tmp_path / "r")
    assert code == 1 and "mixes datasets (fashion-mnist, mnist): a report covers one" in err


def test_the_fashion_grid_names_its_dataset_and_eps(tmp_path):
    args = grid.parse_args(["run", "--dataset", "fashion-mnist", "--seeds", "0", "--modes",
                            "adversarial", "--bn", "no", "--reference-epochs", "0"])
    assert args.runs is None and args.eps is None
    from training.classifier import parse_args
    from training.grid import plan
    (run,) = plan(["adversarial"], [False], [0], 20, ["--dataset", "fashion-mnist", "--alpha",
                                                        "0.1", "--fgv-alpha", "0.2",
                                                        "--noise-alpha", "0.1"], tmp_path)
    assert run.name == "fashion-adversarial-seed0-eps0.1"
    flags = parse_args(run.flags)
    assert (flags.dataset, flags.alpha, flags.fgv_alpha, flags.noise_alpha) == \
        ("fashion-mnist", 0.1, 0.2, 0.1)


def test_the_grid_trains_ibp_without_batchnorm_only(tmp_path):
    from training.grid import plan
    grid = plan(["standard", "ibp"], [False, True], [0, 1], 3, [], tmp_path,
                reference=[("pgd", False, 0, 2)])
    assert [r.name for r in grid] == ["standard-seed0", "standard-bn-seed0", "ibp-seed0",
                                      "pgd-seed0", "standard-seed1", "standard-bn-seed1",
                                      "ibp-seed1"]


def test_the_grid_passes_its_data_and_device_flags_to_every_run():
    from training.classifier import parse_args
    args = grid.parse_args(["run", "--dataset", "fashion-mnist", "--device", "gpu",
                            "--pgd-images", "10", "--", "--batch-size", "32"])
    flags = parse_args(grid.run_flags(args))
    assert (flags.dataset, flags.device, flags.pgd_images, flags.batch_size, flags.alpha) == \
        ("fashion-mnist", "gpu", 10, 32, 0.1)
    assert parse_args(grid.run_flags(grid.parse_args(["run"]))).device == "cpu"


def two_datasets(tmp_path):
    """The fixture's standard runs as an MNIST grid and, relabelled, as a Fashion-MNIST grid at
    eps 0.1 with one FGS-trained run at 0.3; returns the two folders."""
    folders = tmp_path / "mnist", tmp_path / "fashion"
    for folder, dataset, eps in zip(folders, ("mnist", "fashion-mnist"), (0.3, 0.1)):
        for name in ("standard-seed0-t300-e100", "standard-seed1-t300-e100",
                     "adversarial-seed0-t300-e100"):
            shutil.copytree(FIXTURE / name, folder / name)
            settings = json.loads((folder / name / "settings.json").read_text())
            alpha = 0.3 if name.startswith("adversarial") else eps
            (folder / name / "settings.json").write_text(json.dumps(
                {**settings, "dataset": dataset, "alpha": alpha}))
    return folders


def robust_results(path, checkpoint, eps, acc, attacks=("pgd", "apgd-ce", "apgd-t", "square")):
    path.mkdir(parents=True)
    (path / "results.json").write_text(json.dumps({
        "settings": {"attacks": list(attacks)},
        "models": [{"checkpoint": str(checkpoint), "eps": eps, "robust_acc": acc}]}))


def test_compare_puts_each_training_of_each_dataset_side_by_side(tmp_path, capsys):
    mnist, fashion = two_datasets(tmp_path)
    robust = tmp_path / "robust"
    robust_results(robust / "a", mnist / "standard-seed0-t300-e100" / "checkpoint.npz", 0.3, 0.25)
    robust_results(robust / "b", fashion / "standard-seed1-t300-e100" / "checkpoint.npz", 0.1,
                   0.125)
    robust_results(robust / "c", fashion / "standard-seed0-t300-e100" / "checkpoint.npz", 0.1,
                   0.5, attacks=("pgd",))  # PGD alone is no worst case
    longer = tmp_path / "longer" / "standard-seed0-t300-e100"  # the same run, outside the grid
    shutil.copytree(mnist / "standard-seed0-t300-e100", longer)
    robust_results(robust / "d", longer / "checkpoint.npz", 0.3, 0.75)
    code, out, err = run_grid(capsys, "compare", "--runs", mnist, fashion, "--robust", robust,
                              "--out", tmp_path / "out")
    assert code == 0, err
    assert (tmp_path / "out" / "datasets.png").read_bytes().startswith(PNG)
    rows = {}
    for line in (tmp_path / "out" / "README.md").read_text().splitlines():
        cells = [c.strip() for c in line.strip("|").split("|")]
        if len(cells) == 9 and cells[2].isdigit():
            rows[cells[0], cells[1]] = cells[2:]
    clean = 100 * np.array([csv_column(f"standard-seed{s}-t300-e100", "clean_acc")[-1]
                            for s in (0, 1)])
    pgd = 100 * np.array([csv_column(f"standard-seed{s}-t300-e100", "pgd_robust_acc")[-1]
                          for s in (0, 1)])
    for dataset, worst in (("MNIST, 0.3", "25.00 (seed 0)"), ("Fashion-MNIST, 0.1",
                                                             "12.50 (seed 1)")):
        seeds, epochs, c, fgs, fgv, p, w = rows["standard", dataset]
        assert (seeds, epochs, w) == ("2", "3", worst)
        assert c == f"{clean.mean():.2f} ± {clean.std(ddof=1):.2f}"
        assert p.startswith(f"{pgd.mean():.2f}")
    assert set(rows) == {("standard", "MNIST, 0.3"), ("standard", "Fashion-MNIST, 0.1"),
                         ("adversarial", "MNIST, 0.3"), ("adversarial", "Fashion-MNIST, 0.3")}
    assert rows["adversarial", "Fashion-MNIST, 0.3"][-1] == ""


def test_compare_refuses_two_grids_of_one_dataset(tmp_path, capsys):
    mnist, _ = two_datasets(tmp_path)
    code, out, err = run_grid(capsys, "compare", "--runs", mnist, mnist, "--robust",
                              "--out", tmp_path / "out")
    assert code == 1
    assert err.strip() == ("grid.py: error: two of the folders hold the same dataset (MNIST, "
                           "MNIST): compare one grid per dataset")


def test_compare_writes_its_table_into_the_readme_block(tmp_path, capsys):
    from training.compare import BLOCK as COMPARE_BLOCK
    mnist, fashion = two_datasets(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"# P\n\n{BLOCK[0]}\nkept\n{BLOCK[1]}\n{COMPARE_BLOCK[0]}\nstale\n"
                      f"{COMPARE_BLOCK[1]}\nafter\n")
    for _ in range(2):  # a second comparison rewrites the block, it does not add another
        code, out, err = run_grid(capsys, "compare", "--runs", mnist, fashion, "--robust",
                                  "--out", tmp_path / "out", "--readme", readme)
        assert code == 0, err
    text = readme.read_text()
    rows = [line for line in (tmp_path / "out" / "README.md").read_text().splitlines()
            if line.startswith("|")]
    assert text == (f"# P\n\n{BLOCK[0]}\nkept\n{BLOCK[1]}\n{COMPARE_BLOCK[0]}\n"
                    + "\n".join(rows) + f"\n{COMPARE_BLOCK[1]}\nafter\n")
    readme.write_text("no markers\n")
    code, out, err = run_grid(capsys, "compare", "--runs", mnist, fashion, "--robust",
                              "--out", tmp_path / "out", "--readme", readme)
    assert code == 1 and err.strip() == (
        f"grid.py: error: {readme} has no block to write: it needs the line "
        f"{COMPARE_BLOCK[0]} and, below it, {COMPARE_BLOCK[1]}")


def test_a_fashion_report_cites_fashion_references_and_names_eps_of_unfinished_runs(
        tmp_path, capsys):
    _, fashion = two_datasets(tmp_path)
    settings = json.loads((fashion / "standard-seed0-t300-e100" / "settings.json").read_text())
    (fashion / "standard-seed0-t300-e100" / "settings.json").write_text(
        json.dumps({**settings, "epochs": 25}))
    code, out, err = run_grid(capsys, "report", "--runs", fashion, "--out", tmp_path / "r")
    assert code == 0, err
    readme = (tmp_path / "r" / "README.md").read_text()
    assert "Wong and Kolter 2018" in readme and "Goodfellow et al. 2015" not in readme
    assert "standard, eps 0.1 seed 0 (3 of 25, starts again)" in readme


def test_the_readme_shows_the_committed_comparison_of_the_datasets(tmp_path, monkeypatch):
    """results/datasets regenerates from the committed runs and robust results, and the README's
    block is its table."""
    root = Path(__file__).resolve().parent.parent
    monkeypatch.chdir(root)  # the robust results name their checkpoints relative to the root
    from training.compare import BLOCK as COMPARE_BLOCK
    from training.compare import write_comparison
    made = write_comparison([Path("results/grid"), Path("results/grid-fashion-mnist")],
                            [Path("results/robust"), Path("results/robust-fashion-mnist")],
                            tmp_path).read_text()
    assert made == (root / "results" / "datasets" / "README.md").read_text(), \
        "results/datasets is behind the runs: run python grid.py compare"
    rows = [line for line in made.splitlines() if line.startswith("|")]
    text = (root / "docs" / "fashion-mnist.md").read_text()
    assert len(rows) > 10 and block_lines(text, COMPARE_BLOCK) == rows, \
        "docs/fashion-mnist.md is behind results/datasets: run python grid.py compare " \
        "--readme docs/fashion-mnist.md"
