"""The lecture's experiments, one module each, run by `python attack.py <experiment>`."""
