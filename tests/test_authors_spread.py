"""reports/authors_spread_offline6/authors_on_cached_features.py: the rows it hands the authors'
functions are in their extractor's order, each with its own features."""

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "reports" / "authors_spread_offline6"))
import authors_on_cached_features as A  # noqa: E402


def test_split_reps_orders_rows_as_the_authors_extractor_does(tmp_path, monkeypatch):
    L, d = 2, 3
    file_ids, caches = [], {}
    rng = np.random.default_rng(0)
    for gi, name in enumerate(A.DATASETS):
        ids = [f"{name}-{k}" for k in range(4 + gi)]                 # the data file's order
        (tmp_path / name).mkdir()
        (tmp_path / name / "test.jsonl").write_text("".join(json.dumps({"id": i}) + "\n" for i in ids))
        file_ids += ids
        stored = rng.permutation(len(ids))                            # the cache holds its rows in another order
        code = np.array([len(file_ids) - len(ids) + k for k in stored], np.float32)
        X = np.broadcast_to(code[:, None, None], (len(ids), L, d)).copy()   # each row's features name its row
        caches[name] = SimpleNamespace(X=X, y=(code % 2).astype(np.int64), ids=np.array(ids)[stored])

    monkeypatch.setattr("siren.pipeline.cache.load_features", lambda folder: caches[Path(folder).parent.parent.name])
    reps, y, g = A.split_reps(tmp_path, tmp_path / "cache", "test")

    perm = np.random.RandomState(42).permutation(len(file_ids))     # the authors' shuffle of the concatenation
    got = np.array([rep[0][A.POOLING][0] for rep in reps])
    np.testing.assert_array_equal(got, perm)                          # row i is file row perm[i] ...
    assert all(np.all(rep[l][A.POOLING] == got[i]) for i, rep in enumerate(reps) for l in range(L))
    np.testing.assert_array_equal(y, perm % 2)                        # ... with its own label
    sizes = np.array([4 + gi for gi in range(len(A.DATASETS))])
    np.testing.assert_array_equal(g, np.repeat(np.arange(len(A.DATASETS)), sizes)[perm])   # and dataset
