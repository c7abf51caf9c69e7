"""Training. For now a plain supervised loop (``fit_classifier``) used by the
demo, tests and benchmarks; the recipes of ch. 4–7 build on it."""
from robustlab.train.quick import fit_classifier

__all__ = ["fit_classifier"]
