"""Our `attack.py robust` against the authors' AutoAttack, standard version (an oracle test).

Needs torch and pyautoattack (pip install -e '.[oracle]'; CI installs them). The reference is
Croce and Hein's own code as packaged on PyPI (`pyautoattack`, their autoattack/ folder),
AutoAttack(version="standard"): APGD-CE, APGD-T (9 targets), FAB-T (9 targets), Square (5,000
queries, schedule not rescaled), 100 steps each.

A CNN trained for 2 epochs on 600 MNIST images is exported (nn/export.py) and loaded into
PyTorch; both evaluations attack the first 100 test images at eps 0.1, where about a third stay
robust (a regime in which the attacks differ; at the exercise's 0.3 the first attack breaks
everything). Ours runs `attack.py robust` with its defaults. The worst cases must agree within
1 point (1 image), and after each attack the robust accuracies within 3 images.
"""
import json
import logging
import re

import numpy as np
import pytest
from safetensors.numpy import load_file

import attack
import train
from data.mnist import load_mnist
from nn.export import export_checkpoint
from test_export import torch_cnn
from test_train import call

IMAGES, EPS = 100, 0.1


def authors_autoattack(net, x, t, caplog):
    """(adversarial images, {attack: robust accuracy after it}) from the authors' standard
    version, the accuracies read from its log."""
    from pyautoattack import AutoAttack
    caplog.set_level(logging.DEBUG, logger="auto-attack")
    adversary = AutoAttack(net, eps=EPS, version="standard", seed=0)
    x_adv, _ = adversary.run_standard_evaluation(x, t, batch_size=IMAGES)
    after = {m.group(1).lower(): float(m.group(2)) / 100 for m in re.finditer(
        r"robust accuracy after ([A-Z-]+): ([\d.]+)%", caplog.text)}
    return x_adv, after


@pytest.mark.slow
@pytest.mark.oracle
def test_robust_agrees_with_the_authors_autoattack(tmp_path, caplog):
    torch = pytest.importorskip("torch")
    pytest.importorskip("pyautoattack")
    run = tmp_path / "run"
    assert call(train.main, ["--train-limit", 600, "--test-limit", 100, "--epochs", 2,
                             "--out", run]) == 0
    assert call(attack.main, ["robust", "--checkpoint", run / "checkpoint.npz", "--eps", EPS,
                              "--images", IMAGES, "--out", tmp_path / "robust"]) == 0
    report = json.loads((tmp_path / "robust" / "results.json").read_text())
    (ours,) = report["models"]
    assert report["settings"]["deviations"] == []  # the standard version, as the reference

    export_checkpoint(run / "checkpoint.npz", tmp_path / "model.safetensors")
    net = torch_cnn(torch, bn=False)
    net.load_state_dict({k: torch.from_numpy(v)
                         for k, v in load_file(tmp_path / "model.safetensors").items()})
    net.eval()
    images, labels = load_mnist("test", limit=IMAGES)
    x, t = torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        adversarial, after = authors_autoattack(net, x, t, caplog)
        with torch.no_grad():
            theirs = float((net(adversarial).argmax(dim=1) == t).float().mean())
            clean = float((net(x).argmax(dim=1) == t).float().mean())
    finally:
        torch.set_num_threads(threads)
    ours_after = {s["attack"]: s["robust_acc"] for s in ours["attacks"]}
    print(f"clean {ours['clean_acc']:.2f} (torch {clean:.2f}); worst "
          f"case: ours {ours['robust_acc']:.2f}, reference {theirs:.2f}; after each attack: "
          f"ours {ours_after}, reference {after}")
    assert ours["clean_acc"] == pytest.approx(clean)
    assert 0.1 <= theirs <= 0.9  # a regime where the attacks can differ
    assert float((adversarial - x).detach().abs().max()) <= EPS + 1e-6
    assert abs(ours["robust_acc"] - theirs) <= 0.01 + 1e-9
    assert after, "no accuracy after each attack in the authors' log"
    for name, value in after.items():
        assert abs(ours_after[name] - value) <= 0.03 + 1e-9, name
    assert ours["robust_acc"] <= ours["pgd_alone"]["robust_acc"]
