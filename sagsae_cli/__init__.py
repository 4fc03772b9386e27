"""sagsae: reproduce and extend Sign-Aware Gated Sparse Autoencoders (arXiv 2605.28149)."""

__version__ = "0.3.0"
