"""Assertions shared by the tests."""
import numpy as np
from array_api_compat import array_namespace, device

from nn.backend import to_numpy


def assert_like(out, ref, like, atol=1e-6):
    """`out` has the namespace, device and dtype of `like`, and equals NumPy's `ref`."""
    assert array_namespace(out) is array_namespace(like)
    assert device(out) == device(like)
    assert out.dtype == like.dtype
    np.testing.assert_allclose(to_numpy(out), ref, rtol=1e-5, atol=atol)


def counting(model, monkeypatch):
    """A list that grows by the batch size of each of `model`'s forward passes from now on."""
    calls, forward = [], model.forward
    monkeypatch.setattr(model, "forward", lambda x: calls.append(len(x)) or forward(x))
    return calls


# --- what the BLAS allows ---------------------------------------------------------------------
# Our products in blocks (nn/conv.py) are the whole product's floats bit for bit only if the
# BLAS gives each element the same floats whatever else the product holds. OpenBLAS's SkylakeX
# kernels do for the products below; its Haswell kernels (OPENBLAS_CORETYPE=Haswell, which some
# machines set) differ in the last bits with the number of columns or rows. The tests ask the
# BLAS first, with plain NumPy on the same operands, and hold our code to the floats where it
# can give them, to float32 rounding elsewhere.

def blas_column_blocks_exact(a, b, width):
    """Whether a @ b, b's columns `width` at a time, is the whole product bit for bit."""
    whole = a @ b
    return all(np.array_equal(whole[:, i:i + width], a @ b[:, i:i + width])
               for i in range(0, b.shape[1], width))


def blas_row_subset_exact(a, b, width, rows):
    """Whether a[rows] @ b is (a @ b)[rows] bit for bit, b's columns `width` at a time."""
    return all(np.array_equal((a @ b[:, i:i + width])[rows], a[rows] @ b[:, i:i + width])
               for i in range(0, b.shape[1], width))


def assert_floats_as_blas_allows(actual, desired, exact):
    """Bit for bit where `exact`, else equal to float32 rounding."""
    if exact:
        np.testing.assert_array_equal(actual, desired)
    else:
        np.testing.assert_allclose(actual, desired, rtol=1e-5, atol=1e-5 * np.abs(desired).max())
