"""MNIST and Fashion-MNIST reader: IDX files (gzipped or plain), checked header by header and
by SHA-256.

    images, labels = load_mnist("train", limit=1000)  # (1000, 1, 28, 28) float32, (1000,) int64
    images, labels = load_mnist("test", dataset="fashion-mnist")

Both have the same format (28x28 grey, 10 classes, 60,000 + 10,000). MNIST is embedded in the
repository (data/mnist/, 11 MB); Fashion-MNIST (30 MB) is not: it is read from --data-dir, else
from Debian's package dataset-fashion-mnist, which installs the original files under
/usr/share/datasets/fashion-mnist/. Any problem with the data raises MNISTError naming the file;
nothing falls back to other data. Bad arguments (split, limit, dataset) raise ValueError.
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
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")

# (images, labels) base names of each split, as in the original MNIST distribution.
SPLITS = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

# SHA-256 of each file once decompressed: the canonical files of each dataset (Fashion-MNIST's
# are the same bytes as Zalando's release and torchvision's FashionMNIST/raw)
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte": "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
        "train-labels-idx1-ubyte": "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
        "t10k-images-idx3-ubyte": "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
        "t10k-labels-idx1-ubyte": "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
    },
}
DATASETS = tuple(SHA256)
CLASS_NAMES = {
    "mnist": [str(d) for d in range(10)],
    "fashion-mnist": ["T-shirt/top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                      "sneaker", "bag", "ankle boot"],
}
WHERE = {"fashion-mnist": "install Debian's package dataset-fashion-mnist (apt-get install "
                          "dataset-fashion-mnist), or give --data-dir a folder with the four IDX "
                          "files of torchvision's FashionMNIST/raw or of Zalando's release"}


class MNISTError(Exception):
    """The MNIST data is missing, damaged or not what it should be; the message names the file."""


def load_mnist(split="train", data_dir=None, limit=None, dataset="mnist"):
    """Load one split of MNIST (or of Fashion-MNIST) as arrays ready for training.

    split: "train" (60000 images) or "test" (10000 images).
    data_dir: folder holding the four IDX files, each either gzipped (`train-images-idx3-ubyte.gz`)
        or plain (`train-images-idx3-ubyte`), as in torchvision's `MNIST/raw`; the plain file is
        used when both exist. None means the copy embedded next to this module (MNIST), or
        Debian's /usr/share/datasets/fashion-mnist (Fashion-MNIST).
    limit: keep only the first `limit` images (a positive int; more than the split holds keeps all).
    dataset: "mnist" or "fashion-mnist".
    Returns images, float32 of shape (N, 1, 28, 28) in [0, 1] (pixel / 255),
        and labels, int64 of shape (N,) in 0..9.
    Raises MNISTError for any problem with the files, ValueError for a bad split or limit.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if dataset not in SHA256:
        raise ValueError(f"dataset must be one of {', '.join(DATASETS)}, got {dataset!r}")
    is_int = isinstance(limit, (int, np.integer)) and not isinstance(limit, bool)
    if limit is not None and not (is_int and limit >= 1):
        raise ValueError(f"limit must be a positive int or None, got {limit!r}")
    default = EMBEDDED_DIR if dataset == "mnist" else FASHION_DIR
    folder = default if data_dir is None else Path(data_dir).expanduser().resolve()
    if not folder.is_dir():
        where = f": {WHERE[dataset]}" if dataset in WHERE and data_dir is None else ""
        raise MNISTError(f"{_title(dataset)} data directory {folder} does not exist or is not a "
                         f"directory{where}")

    image_name, label_name = SPLITS[split]
    image_path, label_path = (_find(folder, name, dataset) for name in (image_name, label_name))
    images = _read_idx(image_path, image_name, 3, dataset)  # (N, 28, 28) uint8, read-only, cached
    labels = _read_idx(label_path, label_name, 1, dataset)  # (N,) uint8, read-only, cached
    if len(images) != len(labels):
        raise MNISTError(f"MNIST files {image_path} and {label_path} disagree: "
                         f"{len(images)} images but {len(labels)} labels")

    x = images[:limit, None].astype(np.float32)  # a fresh copy: the cached arrays stay untouched
    x /= 255
    return x, labels[:limit].astype(np.int64)


def _title(dataset):
    return {"mnist": "MNIST", "fashion-mnist": "Fashion-MNIST"}[dataset]


def _find(folder, name, dataset="mnist"):
    """Path of `name` or `name.gz` in `folder` (plain first)."""
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    where = f" ({WHERE[dataset]})" if dataset in WHERE else ""
    raise MNISTError(f"{_title(dataset)} file missing: looked for {folder / name} and "
                     f"{folder / name}.gz{where}")


def _read_idx(path, name, ndim, dataset="mnist"):
    """Checked contents of one IDX file as a read-only uint8 array, cached per (path, mtime, size)."""
    stat = path.stat()
    return _read_idx_cached(path, stat.st_mtime_ns, stat.st_size, name, ndim, dataset)


@functools.lru_cache(maxsize=8)
def _read_idx_cached(path, mtime_ns, size, name, ndim, dataset):
    # mtime_ns and size are unused here: they only make the cache forget a file that changed.
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise MNISTError(f"{_title(dataset)} file {path} cannot be read: {e.strerror}") from e
    if path.suffix == ".gz":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise MNISTError(f"{_title(dataset)} file {path} is not a valid gzip file "
                             f"(damaged or truncated): {e}") from e

    header_size, magic_expected = 4 + 4 * ndim, 0x800 + ndim  # 0x08 = unsigned bytes, then ndim
    if len(raw) < header_size:
        raise MNISTError(f"{_title(dataset)} file {path} is truncated: expected a {header_size}-byte IDX header, "
                         f"got {len(raw)} bytes")
    magic, *dims = struct.unpack(f">{1 + ndim}I", raw[:header_size])  # big-endian uint32s
    if magic != magic_expected:
        raise MNISTError(f"{_title(dataset)} file {path} has bad magic number 0x{magic:08x}, "
                         f"expected 0x{magic_expected:08x}")
    if ndim == 3 and dims[1:] != [28, 28]:
        raise MNISTError(f"{_title(dataset)} file {path} has wrong image dimensions {dims[1]}x{dims[2]}, expected 28x28")
    expected = header_size + math.prod(dims)
    if len(raw) != expected:
        problem = "is truncated" if len(raw) < expected else "has extra bytes"
        raise MNISTError(f"{_title(dataset)} file {path} {problem}: expected {expected} bytes "
                         f"(header and {'x'.join(map(str, dims))} values), got {len(raw)}")
    digest = hashlib.sha256(raw).hexdigest()
    if digest != SHA256[dataset][name]:
        raise MNISTError(f"{_title(dataset)} file {path} fails its checksum: SHA-256 {digest}, "
                         f"expected {SHA256[dataset][name]}")
    return np.frombuffer(raw, dtype=np.uint8, offset=header_size).reshape(dims)
