"""MNIST reader: IDX files (gzipped or plain), checked header by header and by SHA-256.

    images, labels = load_mnist("train", limit=1000)  # (1000, 1, 28, 28) float32, (1000,) int64

Any problem with the data raises MNISTError naming the file; nothing falls back to other data.
Bad arguments (split, limit) raise ValueError.
"""
import functools
import gzip
import hashlib
import math
import struct
import zlib
from pathlib import Path

import numpy as np

EMBEDDED_DIR = Path(__file__).resolve().parent / "mnist"

# (images, labels) base names of each split, as in the original MNIST distribution.
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# SHA-256 of each file once decompressed; these are the canonical MNIST files.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}


class MNISTError(Exception):
    """The MNIST data is missing, damaged or not what it should be; the message names the file."""


def load_mnist(split="train", data_dir=None, limit=None):
    """Load one MNIST split as arrays ready for training.

    split: "train" (60000 images) or "test" (10000 images).
    data_dir: folder holding the four IDX files, each either gzipped (`train-images-idx3-ubyte.gz`)
        or plain (`train-images-idx3-ubyte`), as in torchvision's `MNIST/raw`; the plain file is
        used when both exist. None means the copy embedded next to this module.
    limit: keep only the first `limit` images (a positive int; more than the split holds keeps all).
    Returns images, float32 of shape (N, 1, 28, 28) in [0, 1] (pixel / 255),
        and labels, int64 of shape (N,) in 0..9.
    Raises MNISTError for any problem with the files, ValueError for a bad split or limit.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    is_int = isinstance(limit, (int, np.integer)) and not isinstance(limit, bool)
    if limit is not None and not (is_int and limit >= 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    folder = EMBEDDED_DIR if data_dir is None else Path(data_dir).expanduser().resolve()
    if not folder.is_dir():
        raise MNISTError(f"MNIST data directory {folder} does not exist or is not a directory")

    image_name, label_name = SPLITS[split]
    image_path, label_path = _find(folder, image_name), _find(folder, label_name)
    images = _read_idx(image_path, image_name, ndim=3)  # (N, 28, 28) uint8, read-only, cached
    labels = _read_idx(label_path, label_name, ndim=1)  # (N,) uint8, read-only, cached
    if len(images) != len(labels):
        raise MNISTError(f"MNIST files {image_path} and {label_path} disagree: "
                         f"{len(images)} images but {len(labels)} labels")

    x = images[:limit, None].astype(np.float32)  # a fresh copy: the cached arrays stay untouched
    x /= 255
    return x, labels[:limit].astype(np.int64)


def _find(folder, name):
    """Path of `name` or `name.gz` in `folder` (plain first)."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    raise MNISTError(f"MNIST file missing: looked for {folder / name} and {folder / name}.gz")


def _read_idx(path, name, ndim):
    """Checked contents of one IDX file as a read-only uint8 array, cached per (path, mtime, size)."""
    stat = path.stat()
    return _read_idx_cached(path, stat.st_mtime_ns, stat.st_size, name, ndim)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path, mtime_ns, size, name, ndim):
    # mtime_ns and size are unused here: they only make the cache forget a file that changed.
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MNISTError(f"MNIST file {path} cannot be read: {e.strerror}") from e
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise MNISTError(f"MNIST file {path} is not a valid gzip file "
                             f"(damaged or truncated): {e}") from e

    header_size, magic_expected = 4 + 4 * ndim, 0x800 + ndim  # 0x08 = unsigned bytes, then ndim
    if len(raw) < header_size:
        raise MNISTError(f"MNIST file {path} is truncated: expected a {header_size}-byte IDX header, "
                         f"got {len(raw)} bytes")
    magic, *dims = struct.unpack(f">{1 + ndim}I", raw[:header_size])  # big-endian uint32s
    if magic != magic_expected:
        raise MNISTError(f"MNIST file {path} has bad magic number 0x{magic:08x}, "
                         f"expected 0x{magic_expected:08x}")
    if ndim == 3 and dims[1:] != [28, 28]:
        raise MNISTError(f"MNIST file {path} has wrong image dimensions {dims[1]}x{dims[2]}, expected 28x28")
    expected = header_size + math.prod(dims)
    if len(raw) != expected:
        problem = "is truncated" if len(raw) < expected else "has extra bytes"
        raise MNISTError(f"MNIST file {path} {problem}: expected {expected} bytes "
                         f"(header and {'x'.join(map(str, dims))} values), got {len(raw)}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256[name]:
        raise MNISTError(f"MNIST file {path} fails its checksum: SHA-256 {digest}, "
                         f"expected {SHA256[name]}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)
