"""Training stages: feature cache and extraction, layer probes, neuron selection, the MLP head,
its Optuna search, and the `siren train` entry point. Nothing under `siren.runtime` imports this."""
