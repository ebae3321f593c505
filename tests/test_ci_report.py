"""What CI runs: tests/ci_report.py (under CI a skip fails the run unless the test is marked gpu,
and the oracle tests are named with their outcome; elsewhere skips are skips), .ci/run runs
the README's test command, the oracle extra included, and its workers (-n) get one BLAS thread
each (conftest.py)."""
import os
import subprocess
import sys
from pathlib import Path

from training.grid_task import THREADS

TESTS = """
import pytest

def test_needs_something_missing():
    pytest.skip("no such package")

@pytest.mark.gpu
def test_needs_a_gpu():
    pytest.skip("no CUDA device")

@pytest.mark.oracle
def test_against_an_outside_implementation():
    pass
"""


def run(folder, ci):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env.update({"PYTHONPATH": str(Path(__file__).parent), **({"CI": "true"} if ci else {})})
    return subprocess.run([sys.executable, "-m", "pytest", "-p", "ci_report", "-p",
                           "no:cacheprovider", "-W", "ignore::pytest.PytestUnknownMarkWarning",
                           str(folder)], cwd=folder, env=env, capture_output=True, text=True)


def test_under_ci_only_gpu_tests_may_skip_and_the_oracle_tests_are_named(tmp_path):
    (tmp_path / "test_some.py").write_text(TESTS)
    ci = run(tmp_path, ci=True)
    assert ci.returncode == 1, ci.stdout
    missing = "SKIPPED test_some.py::test_needs_something_missing: Skipped: no such package"
    assert missing in ci.stdout
    assert "SKIPPED test_some.py::test_needs_a_gpu" not in ci.stdout
    assert "PASSED test_some.py::test_against_an_outside_implementation" in ci.stdout
    local = run(tmp_path, ci=False)
    assert local.returncode == 0, local.stdout
    assert "oracle tests" not in local.stdout


def test_ci_runs_the_readmes_test_command():
    root = Path(__file__).parent.parent
    readme = (root / "README.md").read_text().splitlines()
    command = readme[readme.index("# set up and run the tests") + 1]
    assert "'.[test,oracle]'" in command and command.endswith("-m pytest -n auto")
    assert command in (root / ".ci" / "run").read_text().splitlines()


def test_xdist_workers_get_one_blas_thread(tmp_path):
    """conftest.py: with -n, every worker starts with one BLAS and OpenMP thread."""
    (tmp_path / "test_env.py").write_text(
        "import os\n\ndef test_one_thread():\n"
        "    assert os.environ.get('PYTEST_XDIST_WORKER')\n"
        "    assert os.environ.get('OPENBLAS_NUM_THREADS') == '1'\n"
        "    assert os.environ.get('OMP_NUM_THREADS') == '1'\n")
    root = Path(__file__).parent
    env = {k: v for k, v in os.environ.items()
           if k != "CI" and k not in THREADS}
    env["PYTHONPATH"] = os.pathsep.join([str(root), str(root.parent)])
    done = subprocess.run([sys.executable, "-m", "pytest", "-p", "conftest", "-p",
                           "no:cacheprovider", "-n", "2", str(tmp_path)], cwd=tmp_path, env=env,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed" in done.stdout
