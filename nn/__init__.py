"""A small deep-learning framework with a hand-written forward and backward pass for every layer."""
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
    no_grad,
)
from .losses import mse_loss, softmax, softmax_cross_entropy
from .model import (
    EVAL_BATCH,
    Sequential,
    batch_slices,
    dense_autoencoder,
    eval_mode,
    first_param,
    on_model,
    predict,
    reference_cnn,
)
from .optim import SGD, Adam
