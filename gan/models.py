"""The two networks of the GAN, fully connected, from nn.layers.

generator:     z (N, z_dim) -> images (N, 784) in [0, 1] (reshape to (N, 1, 28, 28) to view)
discriminator: images (N, 784) or (N, 1, 28, 28) -> logit (N, 1); D(x) = sigmoid(logit)
"""
import numpy as np

from nn import Dense, Dropout, Flatten, LeakyReLU, Sequential, Sigmoid

IMAGE_SIZE = 28 * 28


def generator(z_dim=100, rng=None):
    """Dense(z_dim, 256) LeakyReLU(0.2) Dense(256, 512) LeakyReLU(0.2) Dense(512, 784) Sigmoid."""
    rng = np.random.default_rng(0) if rng is None else rng
    return Sequential(Dense(z_dim, 256, rng=rng), LeakyReLU(0.2),
                      Dense(256, 512, rng=rng), LeakyReLU(0.2),
                      Dense(512, IMAGE_SIZE, rng=rng), Sigmoid())


def discriminator(rng=None, dropout=0.0):
    """Flatten Dense(784, 512) LeakyReLU(0.2) Dense(512, 256) LeakyReLU(0.2) Dense(256, 1).

    dropout > 0 adds a Dropout(dropout) after each LeakyReLU, drawing its masks from rng (after
    the initial weights); dropout 0 leaves the layers, and so the parameter names, as above.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    drop = (lambda: [Dropout(dropout, rng=rng)]) if dropout > 0 else list
    return Sequential(Flatten(), Dense(IMAGE_SIZE, 512, rng=rng), LeakyReLU(0.2), *drop(),
                      Dense(512, 256, rng=rng), LeakyReLU(0.2), *drop(), Dense(256, 1, rng=rng))
