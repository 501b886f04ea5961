"""Reproduction pipeline for "Bayes Conditional Distribution Estimation for Knowledge Distillation"."""

__version__ = "0.1.0"
