"""Sequential: a chain of layers whose backward pass ends at the *input image*.

The forward pass runs the layers in order. The backward pass runs them in reverse, each turning
the gradient of the loss with respect to its output into the gradient with respect to its input
(plus its parameter gradients). After the first layer that gradient is dL/dx for the network's
input itself: the attacks in `attacks/` take it from here to move the image, where training only
uses the parameter gradients.

Also what every caller needs around a model: `eval_mode` (the explicit train/eval switch for a
block), `batch_slices` and `predict` (host images in batches of EVAL_BATCH).
"""
from contextlib import contextmanager

import numpy as np

from . import parallel
from .backend import device_of, to_device, to_numpy, xp_of
from .layers import BatchNorm2d, Conv2d, Dense, Flatten, MaxPool2d, ReLU, Sigmoid, no_grad


class Sequential:
    """Layers applied in order; parameters named "<layer index>.<name>" as in PyTorch."""

    def __init__(self, *layers):
        self.layers = list(layers)
        self._split = None  # the replicas of a forward pass split over processes (nn/parallel.py)

    def train(self):
        """Training mode: BatchNorm normalises with batch statistics and updates running ones."""
        for layer in self.layers:
            layer.training = True
        return self

    def eval(self):
        """Evaluation mode: BatchNorm uses (and never changes) its running statistics."""
        for layer in self.layers:
            layer.training = False
        return self

    @property
    def training(self):
        return all(layer.training for layer in self.layers)

    def forward(self, x):
        """x (N, ...) -> output of the last layer; every layer caches what its backward needs.
        With nn.parallel.use_threads(n), a large batch runs in n slices at once (same numbers)."""
        if parallel.worth_splitting(self, x):
            return parallel.forward(self, x)
        self._split = None
        for layer in self.layers:
            x = layer.forward(x)
        return x

    __call__ = forward

    def backward(self, dout, input_grad=True, param_grads=True):
        """dout = dL/d(output) -> (dx, grads), after one forward.

        dx is dL/d(input), shaped like the input of `forward`: the chain rule carried through
        every layer back to the pixels. grads maps each name of `params` to dL/d(param).
        input_grad=False skips the first layer's dx (returned as None): training needs only the
        parameter gradients, and the first convolution's dx costs a matrix product and a col2im.
        param_grads=False skips every parameter gradient (grads is {}): an attack needs only dx,
        and each convolution and dense layer saves a matrix product.
        """
        if getattr(self, "_split", None) is not None:
            return parallel.backward(self, dout, input_grad, param_grads)
        grads = {}
        for i in reversed(range(len(self.layers))):
            # a ReLU before a convolution drops its dead channels' gradient: not computed
            gated = {"gated": True} if (i and isinstance(self.layers[i], Conv2d)
                                        and isinstance(self.layers[i - 1], ReLU)) else {}
            dout, layer_grads = self.layers[i].backward(dout, input_grad=input_grad or i > 0,
                                                        param_grads=param_grads, **gated)
            for name, g in layer_grads.items():
                grads[f"{i}.{name}"] = g
        return dout, grads

    @property
    def params(self):
        """name -> the live parameter array (an optimizer updates these in place)."""
        return {f"{i}.{name}": p for i, layer in enumerate(self.layers)
                for name, p in layer.params.items()}

    @property
    def buffers(self):
        """name -> running statistics (not trained by gradients)."""
        return {f"{i}.{name}": b for i, layer in enumerate(self.layers)
                for name, b in layer.buffers.items()}

    def state_dict(self):
        """Host (NumPy) copies of every parameter and buffer, keyed by name."""
        return {k: np.array(to_numpy(v)) for k, v in {**self.params, **self.buffers}.items()}

    def load_state_dict(self, state):
        """Copy arrays from `state` (name -> array) into the model, keeping its device and dtypes.

        Raises ValueError if the names or shapes differ from the model's.
        """
        own = {**self.params, **self.buffers}
        if set(state) != set(own):
            missing, extra = sorted(set(own) - set(state)), sorted(set(state) - set(own))
            raise ValueError(f"state does not match the model: missing {missing}, "
                             f"unexpected {extra}")
        for key, value in state.items():
            if tuple(value.shape) != tuple(own[key].shape):
                raise ValueError(f"state entry {key} has shape {tuple(value.shape)}, "
                                 f"the model needs {tuple(own[key].shape)}")
        self._assign(lambda key, old: xp_of(old).asarray(
            np.array(to_numpy(state[key])), dtype=old.dtype, device=device_of(old)))

    def to(self, xp, device=None):
        """Move every parameter and buffer to array namespace `xp` (e.g. cupy) and `device`."""
        self._assign(lambda key, old: xp.asarray(to_numpy(old), device=device))
        return self

    def _assign(self, new_value):
        for i, layer in enumerate(self.layers):
            for store in (layer.params, layer.buffers):
                for name, old in store.items():
                    store[name] = new_value(f"{i}.{name}", old)

    def clear_caches(self):
        """Drop what every layer kept for a backward pass (after forward passes that need none)."""
        self._split = None
        for layer in self.layers:
            layer._cache = None

    def __repr__(self):
        return "Sequential(\n" + "".join(f"  ({i}) {l!r}\n" for i, l in enumerate(self.layers)) + ")"


class Parts:
    """A model made of named Sequentials (`self.parts`) wired by hand (a VAE, a U-Net): what an
    optimizer, a checkpoint, a device move and the train/eval switch see, each part's names
    under its prefix ("enc.1.W")."""

    @property
    def layers(self):
        return [layer for part in self.parts.values() for layer in part.layers]

    @property
    def params(self):
        return {f"{p}.{k}": v for p, m in self.parts.items() for k, v in m.params.items()}

    def state_dict(self):
        return {f"{p}.{k}": v for p, m in self.parts.items() for k, v in m.state_dict().items()}

    def load_state_dict(self, state):
        for p, m in self.parts.items():
            m.load_state_dict({k[len(p) + 1:]: v for k, v in state.items()
                               if k.startswith(p + ".")})

    def to(self, xp, device=None):
        for m in self.parts.values():
            m.to(xp, device)
        return self

    def train(self):
        for m in self.parts.values():
            m.train()
        return self

    def eval(self):
        for m in self.parts.values():
            m.eval()
        return self


def first_param(model):
    """One parameter array of `model`: its namespace, device and dtype stand for the model's."""
    return next(iter(model.params.values()))


def on_model(model, host):
    """Host array `host` moved to the model's namespace and device (its dtype kept)."""
    return to_device(host, first_param(model))


# Images per evaluation batch: small enough that a batch's arrays stay in the CPU caches
# (benchmarks/bench_train.py measured 100 faster than 500 or 1,000 on 2 cores).
EVAL_BATCH = 100


@contextmanager
def eval_mode(model):
    """Run a block with the model in eval mode (BatchNorm frozen), then restore each layer's mode."""
    modes = [layer.training for layer in model.layers]
    model.eval()
    try:
        yield model
    finally:
        for layer, mode in zip(model.layers, modes):
            layer.training = mode


def batch_slices(n, batch_size):
    """Consecutive slices of range(n), each at most batch_size long."""
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def predict(model, images, batch_size=EVAL_BATCH):
    """Predicted labels (N,) on the host for host images (N, C, H, W), in eval mode."""
    xp = xp_of(first_param(model))
    with eval_mode(model), no_grad():
        return np.concatenate([to_numpy(xp.argmax(model.forward(on_model(model, images[s])), axis=1))
                               for s in batch_slices(len(images), batch_size)])


def reference_cnn(batch_norm=False, rng=None):
    """The exercise's CNN for 1x28x28 images -> 10 logits.

    Conv(1->32, 5x5) -> [BatchNorm2d] -> MaxPool 2 -> ReLU -> Conv(32->64, 5x5) -> [BatchNorm2d]
    -> MaxPool 2 -> ReLU -> Flatten -> Dense(1024 -> 10). Shapes: 28 -> 24 -> 12 -> 8 -> 4.
    """
    rng = np.random.default_rng(0) if rng is None else rng

    def block(c_in, c_out):
        norm = [BatchNorm2d(c_out)] if batch_norm else []
        return [Conv2d(c_in, c_out, 5, rng=rng), *norm, MaxPool2d(2), ReLU()]

    return Sequential(*block(1, 32), *block(32, 64), Flatten(), Dense(64 * 4 * 4, 10, rng=rng))


def dense_autoencoder(code=32, hidden=256, rng=None):
    """A small dense autoencoder for 1x28x28 images in [0, 1]: (N, 1, 28, 28) -> (N, 784).

    Encoder Flatten -> Dense(784 -> hidden) -> ReLU -> Dense(hidden -> code); decoder
    Dense(code -> hidden) -> ReLU -> Dense(hidden -> 784) -> Sigmoid, so that the reconstruction
    is a flat image in (0, 1). The code layer is linear: no code unit can die, and the bottleneck
    of `code` numbers is what forces the network to learn the shapes of digits.
    """
    rng = np.random.default_rng(0) if rng is None else rng
    return Sequential(Flatten(), Dense(28 * 28, hidden, rng=rng), ReLU(),
                      Dense(hidden, code, rng=rng),
                      Dense(code, hidden, rng=rng), ReLU(),
                      Dense(hidden, 28 * 28, rng=rng), Sigmoid())
