"""A small deep-learning framework with a hand-written forward and backward pass for every layer."""
from .backend import to_device, to_numpy, xp_of
from .layers import (
    BatchNorm1d,
    BatchNorm2d,
    Conv2d,
    ConvTranspose2d,
    Dense,
    Dropout,
    Flatten,
    LeakyReLU,
    MaxPool2d,
    ReLU,
    Sigmoid,
    Tanh,
)
from .losses import dlr_loss, log_softmax, mse_loss, softmax, softmax_cross_entropy
from .model import Sequential, dense_autoencoder, first_param, reference_cnn
from .optim import SGD, Adam, add_grads
