"""MNIST data: `load_mnist(split, data_dir=None, limit=None) -> (images, labels)`."""
from .mnist import MNISTError, load_mnist

__all__ = ["MNISTError", "load_mnist"]
