"""envbisect: find the package that silently breaks your environment."""

__version__ = "0.1.0"
