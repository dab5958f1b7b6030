"""The SBKA objective (METHOD.md sections 3-4): its terms, their weights and the total."""
from utils.runtime import prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)

from losses.sbka_losses import (LOSS_TERM_LABELS, PRIOR_WEIGHT, SEMANTIC_BIAS, SBKAObjective,  # noqa: E402, F401
                                gaussian_prior_kl, seen_class_cross_entropy, semantic_soft_cross_entropy)
