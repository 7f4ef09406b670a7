"""Outside baselines run next to the project's policies: SpecReason-style judging (a step policy) and
token-level speculative decoding (transformers assisted generation, a runner). Both reach the rest of the
package through the registry (`plugin.py`), as any plugin would."""
