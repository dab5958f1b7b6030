"""SBKA losses (METHOD.md section 3)."""
from losses.sbka_losses import gaussian_prior_kl, semantic_soft_cross_entropy  # noqa: F401
