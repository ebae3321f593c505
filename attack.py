"""Run one of the lecture's attack experiments on a trained CNN and write its numbers and figures.

    python attack.py curve --checkpoint runs/adversarial-seed0/checkpoint.npz
    python attack.py targeted            # no --checkpoint: trains (or reuses) a standard CNN

Every experiment writes into its --out folder (default runs/attack-<experiment>): a JSON or CSV
of its numbers and PNG figures. `python attack.py <experiment> --help` lists its flags.
"""
import argparse
import importlib
import sys

from experiments.common import ExperimentError, add_common_arguments
from training.cli import HelpFormatter, run_cli

# name -> what it shows; each is a module experiments/<name>.py with add_arguments and run
EXPERIMENTS = {
    "gallery": "original, perturbation x10 and adversarial image for FGS, FGV, PGD, targeted",
    "curve": "accuracy against eps for FGS and PGD (eps 0 to 0.4)",
    "targeted": "targeted PGD toward every wrong class, smallest successful perturbation",
    "fooling": "one signed step from noise toward each class",
    "transfer": "attacks crafted on one network, tested on networks trained on the other half",
    "blackbox": "attack a label-only model through a substitute trained on its answers",
    "autoencoder": "a small input change that makes an autoencoder reconstruct another digit",
    "hopskipjump": "HopSkipJump from labels alone (in-process or over the API), distortion "
                   "against queries",
    "minimum": "the white-box L2 minimum by DDN, from the image and from random misclassified "
               "images, beside HopSkipJump's",
    "physical": "destruction rates of FGS, PGD, least-likely and EOT-PGD under camera-like "
                "transformations",
    "survival": "destruction by a camera of PGD stopped early or run to the end, Kurakin's "
                "schedule and EOT, against the adversarial margin",
    "patch": "targeted adversarial patches of several sizes, against noise and a drawn digit",
    "patch_location": "a patch's success at every place, the patch trained for the centre, and "
                      "a patch per image at its best place",
    "universal": "one image-agnostic perturbation per eps, fitted on training images",
    "universal_seeds": "universal perturbations over seeds, fitted pass by pass until converged, "
                       "untargeted and toward each class",
    "visualise": "saliency, class visualisations, unit stimuli and large-eps targeted images, "
                 "judged by an independent model",
    "claims": "the README's claims against their evidence in results/: pix2pix's ranking with "
              "significance, looking-inside numbers, single-pixel filters, the VAE over seeds",
    "robust": "worst case over APGD-CE, APGD-T, FAB-T and Square (AutoAttack's standard version)",
    "certify": "the share of test images proven robust by interval bounds, beside PGD's",
}
ALIASES = {"hopskipjump": ["decision"], "visualise": ["inside"]}  # their old names, still accepted


def summary(doc):
    """A module docstring's first paragraph, as one line (its first line may end mid-sentence)."""
    return " ".join(doc.split("\n\n")[0].split())


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="experiment", required=True, metavar="experiment")
    for name, help_text in EXPERIMENTS.items():
        module = importlib.import_module(f"experiments.{name}")
        p = sub.add_parser(name, aliases=ALIASES.get(name, []), help=help_text,
                           description=summary(module.__doc__), formatter_class=HelpFormatter)
        add_common_arguments(p, name, **getattr(module, "DEFAULTS", {}))
        module.add_arguments(p)
        p.set_defaults(run=module.run)
    return parser.parse_args(argv)


def main(argv=None):
    from web.client import ApiError  # the attacks over serve.py's API: one sentence too
    args = parse_args(argv)
    return run_cli(f"attack.py {args.experiment}", args.run, args,
                   errors=(ExperimentError, ApiError),
                   interrupted=f"interrupted: {args.out} keeps what was written before; models "
                               "being trained keep their last epoch and are resumed next time")


if __name__ == "__main__":
    sys.exit(main())
