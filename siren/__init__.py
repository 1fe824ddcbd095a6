"""SIREN: a harmful-content guard that reads a frozen LLM's internal representations.

Pipeline (each stage reads and writes files, so each can be rerun alone):
data -> extract (features) -> probes -> select -> head (+ Optuna tune) -> artifact -> guard.
"""

__version__ = "0.1.0"
