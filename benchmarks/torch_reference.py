"""PyTorch's side of bench_train.py, the optional reference: the torch import, torch_cnn (the
layers of reference_cnn in torch.nn), our weights copied into it, the `Torch` bench and the
check that both networks compute the same loss and input gradient.

The only module of the benchmark that imports torch (nn/ and attacks/ never do)."""
import numpy as np

from benchmarks.ours import ALPHA, FGV_ALPHA, LR, MOMENTUM
from benchmarks.report import log
from nn import EVAL_BATCH


def torch_or_none():
    try:
        import torch
        return torch
    except Exception as exc:  # ImportError, or a broken install
        log(f"PyTorch not available ({exc}); measuring ours only.")
        return None


def torch_cnn(torch, bn):
    """The same layer sequence as reference_cnn, so that layer indices (and names) line up."""
    tnn = torch.nn

    def block(c_in, c_out):
        norm = [tnn.BatchNorm2d(c_out)] if bn else []
        return [tnn.Conv2d(c_in, c_out, 5), *norm, tnn.MaxPool2d(2), tnn.ReLU()]

    return tnn.Sequential(*block(1, 32), *block(32, 64), tnn.Flatten(), tnn.Linear(1024, 10))


def ours_state_to_torch(torch, model, state):
    """Copy our state dict into a torch_cnn: Dense W (D, M) becomes Linear weight (M, D)."""
    names = {"W": "weight", "b": "bias", "gamma": "weight", "beta": "bias",
             "running_mean": "running_mean", "running_var": "running_var"}
    tstate = {}
    for key, value in state.items():
        i, name = key.split(".")
        if isinstance(model[int(i)], torch.nn.Linear) and name == "W":
            value = value.T
        tstate[f"{i}.{names[name]}"] = torch.tensor(np.array(value))  # an independent copy
    for key, value in model.state_dict().items():  # BatchNorm's num_batches_tracked
        tstate.setdefault(key, value.clone())
    return tstate


class Torch:
    name = "torch"

    def __init__(self, torch, bn, ours, x, t, images, labels):
        self.torch = torch
        self.F = torch.nn.functional
        self.model = torch_cnn(torch, bn)
        self.init_state = ours_state_to_torch(torch, self.model, ours.init_state)
        self.x, self.t = torch.from_numpy(x), torch.from_numpy(t)
        self.images, self.labels = torch.from_numpy(images), torch.from_numpy(labels)
        self.reset()

    def reset(self):
        self.model.load_state_dict(self.init_state)  # copies into the parameters
        self.model.train()
        self.opt = self.torch.optim.SGD(self.model.parameters(), lr=LR, momentum=MOMENTUM)

    def train_step(self):
        self.opt.zero_grad()
        loss = self.F.cross_entropy(self.model(self.x), self.t)
        loss.backward()
        self.opt.step()
        return loss.detach()

    def adv_step(self):
        self.opt.zero_grad()
        x = self.x.detach().requires_grad_(True)
        clean = self.F.cross_entropy(self.model(x), self.t)
        clean.backward()                                   # parameter grads and x.grad, one pass
        x_fgs = (self.x + ALPHA * x.grad.sign()).clamp(0.0, 1.0).detach()
        adv = self.F.cross_entropy(self.model(x_fgs), self.t)
        adv.backward()                                     # accumulates: .grad = clean + adv
        self.opt.step()
        return clean.detach() + adv.detach()

    def fwd_bwd(self):
        self.model.zero_grad(set_to_none=True)
        x = self.x.detach().requires_grad_(True)
        loss = self.F.cross_entropy(self.model(x), self.t)
        loss.backward()
        return loss.detach(), x.grad

    def eval(self, n=None):
        torch, F_, model = self.torch, self.F, self.model
        n = len(self.images) if n is None else n
        was_training = model.training
        model.eval()
        n_correct, clean_loss = 0, 0.0
        still = {"fgs": 0, "fgv": 0}
        linf = {"fgs": 0.0, "fgv": 0.0}
        l2 = {"fgs": 0.0, "fgv": 0.0}
        try:
            for start in range(0, n, EVAL_BATCH):
                s = slice(start, min(start + EVAL_BATCH, n))
                x, t = self.images[s].detach().requires_grad_(True), self.labels[s]
                logits = model(x)
                loss = F_.cross_entropy(logits, t)
                (g,) = torch.autograd.grad(loss, x)  # dL/dx only: no parameter gradient
                with torch.no_grad():
                    x = x.detach()
                    correct = logits.argmax(1) == t
                    clean_loss += loss.item() * len(t)
                    n_correct += int(correct.sum())
                    peak = g.abs().amax(dim=(1, 2, 3), keepdim=True)
                    adv = {"fgs": (x + ALPHA * g.sign()).clamp(0.0, 1.0),
                           "fgv": (x + FGV_ALPHA * g / torch.where(peak > 0, peak, 1.0))
                           .clamp(0.0, 1.0)}
                    mask = correct.to(x.dtype)
                    for name, x_adv in adv.items():
                        still[name] += int((correct & (model(x_adv).argmax(1) == t)).sum())
                        delta = (x_adv - x).flatten(1)
                        linf[name] += float((delta.abs().amax(1) * mask).sum())
                        l2[name] += float((delta.norm(dim=1) * mask).sum())
        finally:
            model.train(was_training)
        k = max(n_correct, 1)
        return {"n": n, "clean_acc": n_correct / n, "clean_loss": clean_loss / n,
                **{f"{a}_acc": still[a] / k for a in still},
                **{f"{a}_linf": linf[a] / k for a in still}}


def check_same_network(ours, theirs):
    """Loss and dL/dx of one train-mode pass of both (from the initial weights)."""
    ours.reset()
    theirs.reset()
    p = ours.fwd_bwd()
    loss_t, dx_t = theirs.fwd_bwd()
    dx_o, dx_t = np.asarray(p.dx), dx_t.numpy()
    out = {"loss_ours": float(p.loss), "loss_torch": float(loss_t),
           "dx_max_abs_diff": float(np.max(np.abs(dx_o - dx_t))),
           "dx_max_abs": float(np.max(np.abs(dx_t)))}
    ours.reset()
    theirs.reset()
    return out
