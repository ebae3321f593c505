"""Real learning: the reference CNN trained on a few thousand real MNIST images."""
import numpy as np
import pytest

from attacks import standard_step
from nn import SGD, batch_slices, predict, reference_cnn


@pytest.mark.slow
@pytest.mark.parametrize("batch_norm", [False, True])
def test_few_hundred_sgd_steps_reach_90_percent(mnist_small, batch_norm):
    (train_x, train_t), (test_x, test_t) = mnist_small
    rng = np.random.default_rng(0)
    model = reference_cnn(batch_norm=batch_norm, rng=rng).train()
    optimizer = SGD(lr=0.01, momentum=0.9)
    steps = 0
    for _ in range(3):  # 3 epochs of 94 batches of 32: 282 steps
        order = rng.permutation(len(train_x))
        for s in batch_slices(len(order), 32):
            standard_step(model, optimizer, train_x[order[s]], train_t[order[s]])
            steps += 1
    accuracy = np.mean(predict(model, test_x) == test_t)
    assert steps == 282
    assert accuracy > 0.90, f"test accuracy {accuracy:.3f} after {steps} steps"


def test_untrained_model_is_near_chance(mnist_small):
    """The 90% above comes from training: an untrained network is near 10%."""
    _, (test_x, test_t) = mnist_small
    accuracy = np.mean(predict(reference_cnn(rng=np.random.default_rng(0)), test_x) == test_t)
    assert accuracy < 0.3
