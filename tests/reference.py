"""A slow step-by-step reference of APGD on one image, for tests/test_apgd.py. (The loop
references of convolution and pooling are nn/naive.py, the readable versions.)"""
import numpy as np


def apgd_one_image(value_and_grad, x, label, eps, steps, start, rho=0.75, momentum=0.75,
                   halving="paper"):
    """APGD on one image, step by step as in Croce and Hein (2020), Algorithm 1, with
    AutoAttack's whole-number checkpoint intervals (0.22, then 0.03 shorter each time, at least
    0.06 of `steps`). halving="autoattack" follows AutoAttack's code instead of the paper's
    text: halve when the loss rose in at most rho of the steps, and the first iterate's loss is
    compared with 0 (the wrapped index into its zero-initialised array of losses).

    value_and_grad(image (C, H, W)) -> (predicted class, loss, dloss/dimage); start (C, H, W).
    Returns (the first misclassified iterate, else the iterate of the highest loss; whether
    some iterate was misclassified).
    """
    low, high = np.clip(x - eps, 0, 1), np.clip(x + eps, 0, 1)

    def project(p):
        return np.minimum(np.maximum(p, low), high)

    current = project(start)
    pred, loss, grad = value_and_grad(current)
    first = current if pred != label else None
    best, best_loss, best_grad = current, loss, grad
    previous, step = current, 2 * eps
    interval, since_check, rises = max(int(0.22 * steps), 1), 0, 0
    last_loss = 0.0 if halving == "autoattack" else loss
    reduced_at_check, best_at_check = True, best_loss
    for i in range(steps):
        a = momentum if i > 0 else 1.0
        z = project(current + step * np.sign(grad))
        previous, current = current, project(current + a * (z - current)
                                             + (1 - a) * (current - previous))
        pred, loss, grad = value_and_grad(current)
        if first is None and pred != label:
            first = current
        rises += loss > last_loss
        last_loss = loss
        if loss > best_loss:
            best, best_loss, best_grad = current, loss, grad
        since_check += 1
        if since_check == interval:
            few = rises <= rho * interval if halving == "autoattack" else rises < rho * interval
            reduce = few or (not reduced_at_check and best_loss <= best_at_check)
            reduced_at_check, best_at_check = reduce, best_loss
            if reduce:
                step /= 2
                current, grad = best, best_grad
            since_check = rises = 0
            interval = max(interval - max(int(0.03 * steps), 1), max(int(0.06 * steps), 1))
    return (best if first is None else first), first is not None
