"""Peak RSS and time of one extraction (aegis, safe_rlhf, wildguard; both pooling types; cold cache).

    ONEDNN_PRIMITIVE_CACHE_CAPACITY=N python extract_peak.py LABEL DATA_DIR [batch]

"batch" calls malloc_trim(0) after every extraction batch. Each run in a fresh process, one
after another, nothing else running.
"""
import ctypes
import resource
import shutil
import sys
import tempfile
import time

import siren.features as F
import siren.pipeline.extract as ex

label, data_dir = sys.argv[1], sys.argv[2]
if sys.argv[3:] == ["batch"]:
    libc, orig = ctypes.CDLL("libc.so.6"), F.LayerFeatures.__call__

    def trimmed(self, *a, **k):
        out = orig(self, *a, **k)
        libc.malloc_trim(0)
        return out

    F.LayerFeatures.__call__ = trimmed
cache = tempfile.mkdtemp()
t = time.time()
ex.ensure_features("smollm2-135m", ["aegis", "safe_rlhf", "wildguard"], pooling_types=["residual_mean", "mlp_mean"],
                   data_dir=data_dir, cache_dir=cache)
print(label, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, "MiB peak", round(time.time() - t, 1), "s",
      flush=True)
shutil.rmtree(cache)
