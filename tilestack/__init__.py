"""tilestack: tile-based quality reconstruction (TBQR) of astronomical frame stacks."""

__version__ = "0.1.0"
