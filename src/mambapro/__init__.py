"""MambaPro: multi-modal object re-identification with Mamba Aggregation and Synergistic Prompt."""

__version__ = "0.1.0"
