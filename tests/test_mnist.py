"""Tests for data/mnist.py: real loads, user data folders, and one test per failure mode."""
import gzip
import shutil

import numpy as np
import pytest

from data import MNISTError, load_mnist, mnist
from data.mnist import EMBEDDED_DIR

TEST_IMAGES, TEST_LABELS = mnist.SPLITS["test"]


@pytest.fixture
def test_dir(tmp_path):
    """A data folder holding the gzipped test split, copied from the embedded files."""
    for name in mnist.SPLITS["test"]:
        shutil.copy(EMBEDDED_DIR / f"{name}.gz", tmp_path)
    return tmp_path


def gunzip_in_place(folder, name):
    """Replace `name.gz` in `folder` by the plain `name`; returns the plain file's path."""
    plain = folder / name
    plain.write_bytes(gzip.decompress((folder / f"{name}.gz").read_bytes()))
    (folder / f"{name}.gz").unlink()
    return plain


def assert_error_names(path, *fragments, **load_kwargs):
    """load_mnist raises MNISTError whose message names `path` and contains each fragment."""
    with pytest.raises(MNISTError) as info:
        load_mnist(**load_kwargs)
    message = str(info.value)
    assert str(path.resolve()) in message
    rest = message.replace(str(path.resolve()), "")  # tmp_path holds the test's name: keep it out
    for fragment in fragments:
        assert fragment in rest


# Real loads of the embedded files.

@pytest.mark.parametrize("split, count, first_label", [("train", 60000, 5), ("test", 10000, 7)])
def test_real_split(split, count, first_label):
    images, labels = load_mnist(split)
    assert images.shape == (count, 1, 28, 28) and images.dtype == np.float32
    assert labels.shape == (count,) and labels.dtype == np.int64
    assert images.min() == 0.0 and images.max() == 1.0
    assert set(np.unique(labels)) == set(range(10))
    assert labels[0] == first_label


def test_pixels_are_bytes_over_255():
    images, _ = load_mnist("test", limit=1)
    assert np.array_equal(np.round(images * 255) / 255, images)
    assert len(np.unique(images)) > 2  # grey levels, not a thresholded image


def test_limit_keeps_first_images():
    images, labels = load_mnist("test")
    few_images, few_labels = load_mnist("test", limit=7)
    assert few_images.shape == (7, 1, 28, 28) and few_labels.shape == (7,)
    assert np.array_equal(few_images, images[:7]) and np.array_equal(few_labels, labels[:7])
    assert load_mnist("test", limit=np.int64(3))[0].shape[0] == 3
    assert load_mnist("test", limit=10**6)[0].shape[0] == 10000


def test_returned_arrays_are_fresh_copies():
    images, labels = load_mnist("test", limit=5)
    images[:] = -1.0
    labels[:] = -1
    again_images, again_labels = load_mnist("test", limit=5)
    assert again_images.min() >= 0.0 and again_labels.min() >= 0


@pytest.mark.parametrize("limit", [0, -1, 2.5, True, "10"])
def test_bad_limit(limit):
    with pytest.raises(ValueError, match="limit"):
        load_mnist("test", limit=limit)


@pytest.mark.parametrize("split", ["val", "Train", None])
def test_bad_split(split):
    with pytest.raises(ValueError, match="split"):
        load_mnist(split)


# User data folders.

def test_gzipped_data_dir(test_dir):
    images, labels = load_mnist("test", data_dir=test_dir)
    expected_images, expected_labels = load_mnist("test")
    assert np.array_equal(images, expected_images) and np.array_equal(labels, expected_labels)


def test_plain_data_dir(test_dir):
    for name in mnist.SPLITS["test"]:
        gunzip_in_place(test_dir, name)
    images, labels = load_mnist("test", data_dir=str(test_dir))
    expected_images, expected_labels = load_mnist("test")
    assert np.array_equal(images, expected_images) and np.array_equal(labels, expected_labels)


# Failure modes: each raises MNISTError naming the file.

def test_missing_data_dir(tmp_path):
    assert_error_names(tmp_path / "nowhere", "does not exist", split="test", data_dir=tmp_path / "nowhere")


def test_missing_file(test_dir):
    (test_dir / f"{TEST_LABELS}.gz").unlink()
    with pytest.raises(MNISTError, match="missing") as info:
        load_mnist("test", data_dir=test_dir)
    plain = test_dir.resolve() / TEST_LABELS
    assert f"{plain} and {plain}.gz" in str(info.value)  # both names looked for


def test_missing_split_in_user_dir(test_dir):
    assert_error_names(test_dir / "train-images-idx3-ubyte", "missing", split="train", data_dir=test_dir)


def test_truncated_plain_file(test_dir):
    path = gunzip_in_place(test_dir, TEST_LABELS)
    path.write_bytes(path.read_bytes()[:-8])
    assert_error_names(path, "truncated", "expected 10008 bytes", "got 10000",
                       split="test", data_dir=test_dir)


def test_truncated_header(test_dir):
    path = gunzip_in_place(test_dir, TEST_IMAGES)
    path.write_bytes(path.read_bytes()[:10])
    assert_error_names(path, "truncated", "16-byte", split="test", data_dir=test_dir)


def test_extra_bytes(test_dir):
    path = gunzip_in_place(test_dir, TEST_LABELS)
    path.write_bytes(path.read_bytes() + b"\0")
    assert_error_names(path, "extra bytes", "expected 10008", "got 10009",
                       split="test", data_dir=test_dir)


def test_truncated_gzip_file(test_dir):
    path = test_dir / f"{TEST_LABELS}.gz"
    path.write_bytes(path.read_bytes()[:-100])
    assert_error_names(path, "gzip", split="test", data_dir=test_dir)


def test_corrupted_byte_fails_checksum(test_dir):
    path = gunzip_in_place(test_dir, TEST_LABELS)
    raw = bytearray(path.read_bytes())
    raw[100] = (raw[100] + 1) % 10  # still a valid label, so only the checksum can tell
    path.write_bytes(bytes(raw))
    assert_error_names(path, "checksum", mnist.SHA256["mnist"][TEST_LABELS], split="test", data_dir=test_dir)


def test_bad_magic(test_dir):
    path = gunzip_in_place(test_dir, TEST_IMAGES)
    raw = bytearray(path.read_bytes())
    raw[3] = 0x01  # a labels magic number in an images file
    path.write_bytes(bytes(raw))
    assert_error_names(path, "magic", "0x00000801", "0x00000803", split="test", data_dir=test_dir)


def test_wrong_image_dimensions(test_dir):
    path = gunzip_in_place(test_dir, TEST_IMAGES)
    raw = bytearray(path.read_bytes())
    raw[8:16] = (56).to_bytes(4, "big") + (14).to_bytes(4, "big")  # same payload size, 56x14
    path.write_bytes(bytes(raw))
    assert_error_names(path, "dimensions", "56x14", "28x28", split="test", data_dir=test_dir)


def test_garbage_in_gz_file(test_dir):
    path = test_dir / f"{TEST_IMAGES}.gz"
    path.write_bytes(b"this is not gzip data at all" * 10)
    assert_error_names(path, "not a valid gzip file", split="test", data_dir=test_dir)


def test_image_label_count_mismatch(tmp_path, monkeypatch):
    # Checksums normally rule this out, so pass off the test labels as the train labels.
    shutil.copy(EMBEDDED_DIR / "train-images-idx3-ubyte.gz", tmp_path)
    shutil.copy(EMBEDDED_DIR / f"{TEST_LABELS}.gz", tmp_path / "train-labels-idx1-ubyte.gz")
    monkeypatch.setitem(mnist.SHA256["mnist"], "train-labels-idx1-ubyte", mnist.SHA256["mnist"][TEST_LABELS])
    assert_error_names(tmp_path / "train-labels-idx1-ubyte.gz", "60000 images but 10000 labels",
                       split="train", data_dir=tmp_path)


def test_changed_file_is_reread(test_dir):
    load_mnist("test", data_dir=test_dir)
    path = test_dir / f"{TEST_LABELS}.gz"
    path.write_bytes(gzip.compress(b"garbage"))
    assert_error_names(path, split="test", data_dir=test_dir)



def test_plain_file_preferred_when_both_exist(test_dir):
    # As in torchvision's MNIST/raw, which keeps both; the gzipped copy is then not read.
    gz = test_dir / f"{TEST_LABELS}.gz"
    gunzip_in_place(test_dir, TEST_LABELS)
    gz.write_bytes(b"not gzip")
    labels = load_mnist("test", data_dir=test_dir)[1]
    assert np.array_equal(labels, load_mnist("test")[1])


# --- Fashion-MNIST ----------------------------------------------------------------------------

@pytest.mark.skipif(not mnist.FASHION_DIR.is_dir(),
                    reason="no Fashion-MNIST: apt-get install dataset-fashion-mnist")
def test_fashion_mnist_is_read_from_debians_copy_and_checked():
    x, t = load_mnist("test", dataset="fashion-mnist")
    assert x.shape == (10000, 1, 28, 28) and x.dtype == np.float32 and t.dtype == np.int64
    assert np.bincount(t).tolist() == [1000] * 10  # Fashion-MNIST's test set is balanced
    train_x, _ = load_mnist("train", dataset="fashion-mnist", limit=5)
    digits, _ = load_mnist("train", limit=5)
    assert not np.array_equal(train_x, digits)
    assert len(mnist.CLASS_NAMES["fashion-mnist"]) == 10


def test_fashion_mnist_missing_says_where_to_get_it(monkeypatch, tmp_path):
    monkeypatch.setattr(mnist, "FASHION_DIR", tmp_path / "nowhere")
    with pytest.raises(MNISTError) as err:
        load_mnist("test", dataset="fashion-mnist")
    message = str(err.value)
    assert "Fashion-MNIST data directory" in message and "dataset-fashion-mnist" in message
    assert "torchvision" in message and "\n" not in message
    with pytest.raises(ValueError, match="dataset must be one of mnist, fashion-mnist"):
        load_mnist("test", dataset="cifar")


def test_mnist_files_fail_fashion_mnists_checksums():
    with pytest.raises(MNISTError, match="Fashion-MNIST file .* fails its checksum"):
        load_mnist("test", data_dir=mnist.EMBEDDED_DIR, dataset="fashion-mnist")
