"""Serving a trained guard: scoring, streaming, the server. Imports no Optuna and no training code."""
