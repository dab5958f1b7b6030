"""The objective's released weights, in a module without torch: the flag parsers (engine/flags.py) read them
before torch loads."""

PRIOR_WEIGHT = 0.1     # weight of L_prior in the student objective
SEMANTIC_BIAS = 0.3    # weight of the cid_mask row added to the target logits of both distillation terms
