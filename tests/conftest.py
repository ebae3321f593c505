"""Shared fixtures: the array backends every op must run on, and Hypothesis profiles.

`xp` runs a test on NumPy, on the strict Array API backend (which rejects anything outside the
standard) and on CuPy (marked gpu; skipped without CuPy and a CUDA device). Select a Hypothesis
profile with HYPOTHESIS_PROFILE=dev|ci (ci is the default under CI=true).
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

from nn.backend import reuse_host_memory

reuse_host_memory()  # as train.py does: large temporaries stop page-faulting, tests run faster

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
