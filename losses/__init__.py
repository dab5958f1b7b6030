"""The SBKA objective (METHOD.md sections 3-4): its terms, their weights and the total."""
from losses.sbka_losses import (LOSS_TERM_LABELS, PRIOR_WEIGHT, SEMANTIC_BIAS, SBKAObjective,  # noqa: F401
                                gaussian_prior_kl, seen_class_cross_entropy, semantic_soft_cross_entropy)
