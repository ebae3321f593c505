"""A generative adversarial network on MNIST built from the hand-written layers of `nn/`.

losses.py the generator costs, models.py the two networks, steps.py one alternating update of
each (the discriminator's cost inline: two binary cross-entropies), fid.py the sample-quality
scores taken with the project's classifier; run.py train_gan.py's run. pix2pix.py the U-Net and
the PatchGAN, pix2pix_run.py train_pix2pix.py's run, pix2pix_report.py its figures and report.
"""
from .fid import frechet_distance
from .losses import GAN_LOSSES, generator_loss
from .models import discriminator, generator
from .steps import discriminator_step, generator_step
