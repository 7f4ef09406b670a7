"""Outside baselines run next to the project's policies: SpecReason-style judging and token-level
speculative decoding (transformers assisted generation).

`arbitrage.policies` registers the SpecReason policy by importing `baselines.specreason` at its end, and
that module imports `arbitrage.policies`. Importing `arbitrage.policies` here first makes the order the same
whichever module is imported first (otherwise importing `baselines.specreason` first would be a cycle).
"""

from .. import policies  # noqa: F401  (see the docstring)
