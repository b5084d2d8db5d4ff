"""speechbudget: budget-aware self-supervised speech pretraining."""

__version__ = "0.1.0"
