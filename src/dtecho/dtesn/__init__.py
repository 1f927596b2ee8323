"""The Deep Tree Echo State Network: rooted trees, B-series integrators, membrane reservoirs.

Pure numerics (NumPy/SciPy), no web imports. ``DTESN`` is the estimator; ``trees`` and
``bseries`` hold the rooted-tree and Runge–Kutta theory it integrates with; ``datasets``
the benchmark signals.
"""

from . import bseries, datasets, trees
from .model import DTESN, NotFittedError

__all__ = ["DTESN", "NotFittedError", "bseries", "datasets", "trees"]
