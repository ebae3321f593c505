"""The only module that knows about CuPy: array namespaces and moving arrays between devices.

Every op in `nn/` and `attacks/` takes its namespace from its arguments with `xp_of(x)`, so the
same code runs on NumPy, CuPy and the strict Array API test backend. Arrays reach the GPU only
through `to_device` and come back only through `to_numpy`: nothing moves implicitly.
"""
import ctypes
import os

import numpy as np
from array_api_compat import array_namespace, device


class DeviceError(RuntimeError):
    """The requested device cannot be used on this machine (one sentence, for the user)."""


_NUMPY = array_namespace(np.empty(0))


def xp_of(*arrays):
    """The Array API namespace shared by `arrays` (NumPy's arrays give array_api_compat.numpy)."""
    # NumPy's arrays answered at once: array_namespace takes 3.7 us a call, 40 calls a step
    if arrays and all(type(a) is np.ndarray for a in arrays):
        return _NUMPY
    return array_namespace(*arrays)


def is_numpy(x):
    """Whether x is a plain NumPy array: tuning for the host's BLAS applies to it alone."""
    return type(x) is np.ndarray


def device_of(x):
    """The device `x` lives on, in its own library's terms."""
    return "cpu" if type(x) is np.ndarray else device(x)


def cupy_or_error():
    """Import CuPy and check that a CUDA device is present, or raise DeviceError saying why not."""
    try:
        import cupy
    except ImportError:
        raise DeviceError("--device gpu needs CuPy, which is not installed "
                          "(pip install 'cupy-cuda12x' or the build for your CUDA).") from None
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CuPy raises its own CUDARuntimeError, or ImportError of libcuda
        raise DeviceError(f"--device gpu found CuPy but no usable CUDA device ({exc}).") from None
    if count == 0:
        raise DeviceError("--device gpu found CuPy but no CUDA device.")
    return cupy


def namespace_for(device_name):
    """The array module for 'cpu' (NumPy through array_api_compat) or 'gpu' (CuPy)."""
    if device_name == "cpu":
        return _NUMPY
    if device_name == "gpu":
        return array_namespace(cupy_or_error().empty(0))
    raise DeviceError(f"unknown device {device_name!r}: choose 'cpu' or 'gpu'.")


def to_device(x, like):
    """Host array `x` as an array of the same library and device as `like` (dtype kept)."""
    xp = xp_of(like)
    return xp.asarray(x, device=device_of(like))


def to_numpy(x):
    """Any supported array as a NumPy array on the host (a no-op for NumPy arrays)."""
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "get"):  # CuPy
        return x.get()
    return np.asarray(x.to_device(xp_of(x).__array_namespace_info__().default_device()))


def reuse_host_memory():
    """Ask glibc to keep freed memory for reuse rather than hand it back to the system.

    NumPy takes every large temporary (im2col's columns: 13 MB for a batch of 64) from malloc,
    which by default maps fresh pages for it and unmaps them on free; the first touch of each
    fresh 4 KiB page then faults, and that cost about a third of a training step on the
    benchmark machine. With blocks up to 32 MiB served from the heap and no trimming of it,
    the same memory serves every step. Called by the entry points (train.py, the benchmark),
    never on import. Returns False where the C library is not glibc (nothing changes).
    """
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):
        return False
    M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
    return bool(mallopt(M_MMAP_THRESHOLD, 32 * 2**20) and mallopt(M_TRIM_THRESHOLD, 2**30))


# OpenBLAS's kernel sets (its DYNAMIC_ARCH core names) that use AVX-512
AVX512_KERNELS = {"SkylakeX", "Cooperlake", "SapphireRapids"}


def blas_kernel_note():
    """kernel_note for this process's OpenBLAS (threadpoolctl), CPU and environment."""
    from threadpoolctl import threadpool_info
    architecture = next((p.get("architecture") for p in threadpool_info()
                         if p.get("internal_api") == "openblas"), None)
    return kernel_note(architecture, _cpu_flags(), os.environ.get("OPENBLAS_CORETYPE"))


def kernel_note(architecture, cpu_flags, coretype):
    """One sentence when OpenBLAS's kernels `architecture` (None: no OpenBLAS) lack the AVX-512
    that the CPU's `cpu_flags` offer, else None; `coretype` is OPENBLAS_CORETYPE (or None).

    A machine's environment can pin OpenBLAS's kernels (OPENBLAS_CORETYPE=Haswell): on an AMD
    EPYC with AVX-512 that held a one-core 2048 x 2048 product to 105 GFLOP/s against 238 with
    the kernels OpenBLAS picks itself, and the exercise's training step to 1.3 times its time.
    """
    if architecture is None or architecture in AVX512_KERNELS or "avx512f" not in cpu_flags:
        return None
    fix = (f"OPENBLAS_CORETYPE={coretype} in the environment holds it there; unset it"
           if coretype else "set OPENBLAS_CORETYPE=SkylakeX")
    return (f"OpenBLAS runs its {architecture} kernels (AVX2) on a CPU with AVX-512, so matrix "
            f"products may take up to twice as long: {fix} to use the CPU's own.")


def _cpu_flags():
    """The CPU's feature flags from /proc/cpuinfo (an empty set elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            line = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        return set()
    return set(line.partition(":")[2].split())
