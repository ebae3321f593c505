"""A generative adversarial network on MNIST built from the hand-written layers of `nn/`.

losses.py the discriminator and generator costs, models.py the two networks, training.py one
alternating update of each, fid.py the sample-quality scores taken with the project's classifier.
"""
from .fid import class_histogram, classifier_features, frechet_distance
from .losses import GAN_LOSSES, discriminator_loss, generator_loss
from .models import discriminator, generator
from .training import discriminator_step, generator_step
