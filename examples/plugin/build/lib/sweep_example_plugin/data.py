"""Two interleaved half circles, generated (nothing is downloaded)."""

import numpy as np
from sklearn.datasets import make_moons


def moons() -> tuple[np.ndarray, np.ndarray]:
    return make_moons(n_samples=600, noise=0.2, random_state=0)
