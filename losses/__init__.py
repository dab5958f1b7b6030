"""SBKA losses (METHOD.md section 3)."""
from utils.runtime import prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)

from losses.sbka_losses import gaussian_prior_kl, semantic_soft_cross_entropy  # noqa: E402, F401
