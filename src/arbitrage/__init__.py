"""Step-level speculative reasoning with advantage-aware routing (Arbitrage, arXiv 2512.05033)."""

__version__ = "0.1.0"
