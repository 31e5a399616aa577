"""transformer-mt: the Transformer of "Attention Is All You Need" and its baselines for translation."""

__version__ = "0.1.0"
