"""Performance benchmarks a user can run on their own machine (``histoxmodal bench ...``).

Every figure is a ratio against a baseline measured in the same process, in interleaved rounds,
because shared machines are noisy.
"""
