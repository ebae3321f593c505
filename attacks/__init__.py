"""Adversarial attacks and the exercise's evaluation, on top of `nn`.

Every module keeps a name of its own (no function below is called like its module), so that
`import attacks.square_attack` and patching by dotted path reach the module.
"""
from .autoencoder import autoencoder_attack
from .autopgd import apgd, apgd_targeted
from .blackbox import LabelOracle, QueryBudgetExceeded, ScoreOracle, jacobian_augmentation
from .ddn_attack import ddn
from .evaluation import certify, default_attacks, evaluate, pgd_attack, predict
from .fab_attack import fab_targeted
from .gradient import (
    eval_mode,
    fgs,
    fgs_step,
    fgv,
    fgv_step,
    input_gradient,
    loss_and_gradients,
    sign_noise,
)
from .hopskipjump_attack import hopskipjump
from .iterative import (
    eot_pgd,
    fooling_images,
    pgd,
    signed_steps,
    smallest_targeted,
    targeted_fgs,
    targeted_pgd,
    targeted_pgd_l2,
    uniform_start,
)
from .square_attack import square
from .training import adversarial_step, ibp_step, noise_step, pgd_step, standard_step
