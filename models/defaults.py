"""The student's defaults, in a module without torch: the flag parsers (engine/flags.py) read them before
torch loads, so that ``--help`` or a mistyped flag answers at once."""

DEFAULT_MODEL = "convnextv2_tiny"
IMAGENET_CLASSES = 1000      # the cid_mask and the distillation targets are over ImageNet-1k's classes
CLASSIFIER_INIT_STD = 2e-5   # the released code's init of the new seen-class classifier
OFFICIAL_FILE = "convnextv2_tiny_1k_224_ema.pt"   # the paper's pretrained weights (README, 'Pretrained weights')
