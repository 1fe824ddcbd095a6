"""SIREN: a harmful-content guard that reads a frozen LLM's internal representations.

Pipeline (each stage reads and writes files, so each can be rerun alone):
data -> extract (features) -> probes -> select -> head (+ Optuna tune) -> artifact -> guard.
"""

import os

__version__ = "0.1.0"

# oneDNN (PyTorch's CPU matmul library) caches up to 1,024 compiled kernels, one per input
# shape, and each keeps its own buffers. Length-bucketed extraction and the head search's
# varying widths meet hundreds of shapes, so that cache alone grew peak memory by about
# 0.4 GiB on a three-dataset extraction (1.85 -> 1.44 GiB with 128 entries, same speed;
# 16 entries: 1.40 GiB but 16% slower; reports/memory_knobs). Read once, when oneDNN first runs, so it is set here,
# before torch is imported through siren; a value the user exported wins.
os.environ.setdefault("ONEDNN_PRIMITIVE_CACHE_CAPACITY", "128")
