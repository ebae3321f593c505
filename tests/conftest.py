"""Shared fixtures: the array backends every op must run on, Hypothesis profiles, and the small
trained models that several test modules use (trained once a session).

`xp` runs a test on NumPy, on the strict Array API backend (which rejects anything outside the
standard) and on CuPy (marked gpu; skipped without CuPy and a CUDA device). Select a Hypothesis
profile with HYPOTHESIS_PROFILE=dev|ci (ci is the default under CI=true).
"""
import os
import sys

import pytest
from hypothesis import HealthCheck, settings

from ci_report import pytest_sessionfinish  # noqa: F401  (the hook: under CI, no skips but gpu)
from nn.backend import reuse_host_memory
from training.grid_task import THREADS

os.environ.setdefault("MPLBACKEND", "Agg")  # figures go to files, as the commands' run_cli sets
reuse_host_memory()  # as train.py does: large temporaries stop page-faulting, tests run faster


def pytest_configure(config):
    """With xdist's workers (-n), one BLAS and OpenMP thread each, set before they start and load
    NumPy or torch: two processes whose BLAS threads both spin on two cores slow each other down
    many times over (docs/speed.md)."""
    if getattr(config.option, "numprocesses", None):
        for name, value in THREADS.items():
            os.environ.setdefault(name, value)


settings.register_profile("ci", max_examples=25, deadline=None, derandomize=True,
                          suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("dev", max_examples=10, deadline=None,
                          suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))


def _cupy_or_skip():
    try:
        import cupy
        if cupy.cuda.runtime.getDeviceCount() > 0:
            return cupy
    except Exception as exc:  # ImportError, or CUDA runtime errors without a driver
        pytest.skip(f"CuPy backend needs CuPy and a CUDA device: {exc}")
    pytest.skip("CuPy backend needs a CUDA device; none found")


@pytest.fixture(scope="session", params=["numpy", "array_api_strict",
                                         pytest.param("cupy", marks=pytest.mark.gpu)])
def xp(request):
    """An Array API namespace: array_api_compat's NumPy, array_api_strict, or CuPy."""
    if request.param == "numpy":
        from array_api_compat import numpy as xnp
        return xnp
    if request.param == "array_api_strict":
        return pytest.importorskip("array_api_strict")
    _cupy_or_skip()
    from array_api_compat import cupy as xcp
    return xcp


@pytest.fixture(scope="session")
def mnist_small():
    """The first 3,000 real training images and 1,000 real test images."""
    from data.mnist import load_mnist
    return load_mnist("train", limit=3000), load_mnist("test", limit=1000)


@pytest.fixture
def cli(monkeypatch, capsys):
    """run(*argv) -> (exit code, stdout, stderr) of attack.main (or train.main)."""
    import attack
    from test_train import call
    monkeypatch.setattr(sys, "argv", ["attack.py"])

    def run(*argv, main=attack.main):
        code = call(main, argv)
        out, err = capsys.readouterr()
        return code, out, err
    return run


@pytest.fixture(scope="session")
def checkpoints(tmp_path_factory):
    """Two tiny train.py runs (one epoch on 96 images): plain (--alpha 0.3) and with BatchNorm
    (--alpha 0.2) -> {"plain": path, "bn": path} of their checkpoint.npz; read only."""
    import train
    from test_train import SMALL, call
    root = tmp_path_factory.mktemp("runs")
    runs = {"plain": [], "bn": ["--bn", "--alpha", "0.2"]}
    for name, flags in runs.items():
        assert call(train.main, [*SMALL, "--epochs", 1, *flags, "--out", root / name]) == 0
    return {name: root / name / "checkpoint.npz" for name in runs}


@pytest.fixture(scope="session")
def checkpoint(checkpoints):
    """The plain one of `checkpoints`."""
    return checkpoints["plain"]


@pytest.fixture(scope="session")
def shipped_tiny(tmp_path_factory):
    """A folder whose models/ holds one shipped model, 'tiny', made by the real models.build
    (one epoch on 96 images, exported, measured, in the manifest)."""
    from models import build
    root = tmp_path_factory.mktemp("shipped")
    (root / "models").mkdir()
    with pytest.MonkeyPatch.context() as patch:
        _point_models_at(patch, root)
        assert build.main(["--images", "8"]) == 0
    return root


def _point_models_at(patch, root):
    """models (its folder, manifest and list) and the build's runs folder under root."""
    import models
    from models import build
    from test_train import SMALL
    patch.setattr(models, "FOLDER", root / "models")
    patch.setattr(models, "MANIFEST", root / "models" / "manifest.json")
    patch.setattr(models, "MODELS", {"tiny": ("a tiny CNN", ["--mode", "standard", "--epochs",
                                                             "1", *SMALL])})
    patch.setattr(build, "RUNS", root / "runs")


@pytest.fixture(scope="module")
def tiny(shipped_tiny):
    """`shipped_tiny`'s folder, models pointed at it for the test module that asks (the real
    folder again after it)."""
    with pytest.MonkeyPatch.context() as patch:
        _point_models_at(patch, shipped_tiny)
        yield shipped_tiny
