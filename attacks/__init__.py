"""Adversarial attacks and the exercise's evaluation, on top of `nn`."""
from .apgd import apgd, apgd_targeted
from .autoencoder import autoencoder_attack
from .blackbox import LabelOracle, QueryBudgetExceeded, ScoreOracle, jacobian_augmentation
from .evaluate import default_attacks, evaluate, pgd_attack, predict
from .gradient import (eval_mode, fgs, fgs_step, fgv, fgv_step, input_gradient,
                       loss_and_gradients, sign_noise)
from .iterative import (fooling_images, pgd, signed_steps, smallest_targeted, targeted_fgs,
                        targeted_pgd, uniform_start)
from .square import square
from .training import adversarial_step, noise_step, pgd_step, standard_step
