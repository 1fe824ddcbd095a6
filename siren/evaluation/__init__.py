"""Evaluation of trained guards: per-dataset metrics, plots, baselines and reports."""
