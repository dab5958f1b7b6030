"""The test's option values and defaults, in a module without torch: the flag parsers (engine/flags.py) read
them before torch loads."""

QUANTIZERS = ("gmm", "kmeans")
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
DEFAULT_ALPHA = 0.8
DEFAULT_SEED = 123       # the released PQ.fit seeds NumPy's global generator with 123 before fitting
