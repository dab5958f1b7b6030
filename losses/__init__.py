"""The SBKA objective (METHOD.md sections 3-4): its terms, their weights and the total."""
from utils.runtime import lazy_exports, prepare_process

prepare_process()  # before torch loads: OpenMP reads its settings then (utils/runtime.py)

__all__ = ["LOSS_TERM_LABELS", "PRIOR_WEIGHT", "SEMANTIC_BIAS", "SBKAObjective", "gaussian_prior_kl",
           "seen_class_cross_entropy", "semantic_soft_cross_entropy"]
__getattr__ = lazy_exports(__name__, dict.fromkeys(__all__, "losses.sbka_losses"))   # torch loads on first use
