"""Adversarial attacks and the exercise's evaluation, on top of `nn`.

One module per family, named for the family, never like a function it exports (so that
`import attacks.score_based` and patching by dotted path reach the module):
gradient.py one-step gradient attacks (FGS, FGV); iterative.py the PGD family; autopgd.py APGD;
minimum_norm.py FAB-T and DDN; score_based.py Square; decision_based.py HopSkipJump;
blackbox.py the substitute attack and the oracles; universal.py patches and universal
perturbations; autoencoder.py attacks on autoencoders; adversarial_training.py one training step
of each mode; evaluation.py the exercise's evaluation.
"""
from .adversarial_training import adversarial_step, ibp_step, noise_step, pgd_step, standard_step
from .autoencoder import autoencoder_attack
from .autopgd import apgd, apgd_targeted
from .blackbox import LabelOracle, QueryBudgetExceeded, ScoreOracle
from .decision_based import hopskipjump
from .evaluation import certify, default_attacks, evaluate, pgd_attack
from .gradient import (
    fgs,
    fgs_step,
    fgv,
    fgv_step,
    input_gradient,
    loss_and_gradients,
    sign_noise,
)
from .iterative import (
    eot_pgd,
    fooling_images,
    pgd,
    signed_steps,
    smallest_targeted,
    targeted_fgs,
    targeted_pgd,
    targeted_pgd_l2,
)
from .minimum_norm import fab_targeted
from .score_based import square
