"""head.py: the runtime's layout, folded standardisation, determinism, small batches."""

import numpy as np
import pytest
import torch
from torch import nn

from siren.mlp import MLPHead, predict_proba_head
from siren.pipeline.head import ensemble_heads, fit_head, fold_standardisation


def toy(n=240, k=12, seed=0):
    rng = np.random.default_rng(seed)
    X = (rng.standard_normal((n, k)) * rng.uniform(0.1, 30, k) + rng.normal(0, 10, k))
    y = ((X[:, 0] - X[:, 0].mean()) / X[:, 0].std() + (X[:, 1] - X[:, 1].mean()) / X[:, 1].std()
         > 0.3).astype(np.int64)
    g = np.arange(n) % 2
    return X.astype(np.float32), y, g


def test_state_dict_layout():
    m = MLPHead(10, [64, 32, 16], [0.2, 0.0, 0.5])
    kinds = [type(x) for x in m.network]
    assert kinds == [nn.Linear, nn.ReLU, nn.Dropout, nn.Linear, nn.ReLU,
                     nn.Linear, nn.ReLU, nn.Dropout, nn.Linear]
    sd = m.state_dict()
    assert list(sd) == ["network.0.weight", "network.0.bias", "network.3.weight",
                        "network.3.bias", "network.5.weight", "network.5.bias",
                        "network.8.weight", "network.8.bias"]
    assert sd["network.0.weight"].shape == (64, 10)
    assert sd["network.8.weight"].shape == (2, 16)
    # a head trained by fit_head loads strictly into a freshly built one
    X, y, _ = toy()
    trained, _ = fit_head(X, y, layer_dims=[32, 16], dropout_rates=[0.3, 0.2], lr=1e-3,
                          seed=0, max_epochs=2)
    fresh = MLPHead(X.shape[1], [32, 16], [0.3, 0.2])
    fresh.load_state_dict(trained.state_dict(), strict=True)
    assert [type(x) for x in trained.network] == [type(x) for x in fresh.network]


def test_folded_standardisation_equals_standardise_then_model():
    rng = np.random.default_rng(1)
    m = MLPHead(5, [8, 4], [0.0, 0.0]).eval()
    X = rng.normal(50, 20, (7, 5)).astype(np.float32)
    mean, std = X.mean(0), X.std(0) + 0.5
    with torch.no_grad():
        ref = m(torch.from_numpy((X - mean) / std))
        fold_standardisation(m, mean, std)
        got = m(torch.from_numpy(X))
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)


def test_fit_head_learns_and_takes_raw_features():
    X, y, g = toy(400)
    model, hist = fit_head(X[:300], y[:300], layer_dims=[32, 16], dropout_rates=[0.2, 0.2],
                           lr=3e-3, seed=0, max_epochs=60, patience=10, batch_size=32,
                           X_val=X[300:], y_val=y[300:], groups_val=g[300:])
    p = predict_proba_head(model, X[300:])
    assert p.shape == (100,) and p.dtype == np.float32
    assert hist["best_val_f1"] > 0.85
    # the restored best state is the one that scored best_val_f1 (raw features in)
    from siren.metrics import mean_group_macro_f1
    assert mean_group_macro_f1(y[300:], (p >= 0.5).astype(int), g[300:]) == \
        pytest.approx(hist["best_val_f1"])
    assert hist["best_val_f1"] == max(hist["val_f1"])
    assert len(hist["val_f1"]) <= hist["best_epoch"] + 10


def test_deterministic_and_leaves_global_rng_alone():
    X, y, g = toy(120)
    state = torch.random.get_rng_state()
    kw = dict(layer_dims=[16, 8], dropout_rates=[0.5, 0.3], lr=1e-3, max_epochs=4,
              batch_size=16, X_val=X[:40], y_val=y[:40], groups_val=g[:40], patience=100)
    a, _ = fit_head(X, y, seed=7, **kw)
    b, _ = fit_head(X, y, seed=7, **kw)
    c, _ = fit_head(X, y, seed=8, **kw)
    assert torch.equal(torch.random.get_rng_state(), state)

    def raw(m):
        return b"".join(k.encode() + v.numpy().tobytes() for k, v in m.state_dict().items())

    assert raw(a) == raw(b)
    assert raw(a) != raw(c)


def test_batch_of_one():
    X, y, g = toy(9)
    model, _ = fit_head(X, y, layer_dims=[8, 8], dropout_rates=[0.2, 0.2], lr=1e-3, seed=0,
                        max_epochs=2, batch_size=1, X_val=X[:1], y_val=y[:1], groups_val=g[:1])
    assert predict_proba_head(model, X[:1]).shape == (1,)
    assert predict_proba_head(model, X[0]).shape == (1,)


def test_on_epoch_exception_propagates():
    X, y, g = toy(60)

    class Stop(Exception):
        pass

    seen = []

    def cb(epoch, score):
        seen.append(epoch)
        if epoch == 2:
            raise Stop

    with pytest.raises(Stop):
        fit_head(X, y, layer_dims=[8, 8], dropout_rates=[0.2, 0.2], lr=1e-3, seed=0,
                 max_epochs=10, X_val=X, y_val=y, groups_val=g, on_epoch=cb)
    assert seen == [1, 2]


def test_ensemble_heads_is_the_mean_of_the_logits():
    X, y, _ = toy(90)
    heads = [fit_head(X, y, layer_dims=[24, 16, 8], dropout_rates=[0.3, 0.0, 0.2], lr=3e-3,
                      seed=s, max_epochs=3, batch_size=32)[0] for s in range(3)]
    heads[1].network[0].weight.data.mul_(1.5)      # make the members clearly different
    ens = ensemble_heads(heads)
    assert ens.layer_dims == [72, 48, 24] and ens.dropout_rates == [0.3, 0.0, 0.2]
    # the runtime's layout: it loads strictly into a freshly built head of those sizes
    MLPHead(X.shape[1], [72, 48, 24], [0.3, 0.0, 0.2]).load_state_dict(ens.state_dict())
    Xt = torch.from_numpy(X)
    with torch.no_grad():
        want = torch.stack([h(Xt) for h in heads]).mean(dim=0)
        got = ens(Xt)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError):
        ensemble_heads([heads[0], MLPHead(X.shape[1], [8, 8], [0.1, 0.1])])


def _unfold(model, mean, std):
    """The first Linear before fold_standardisation: W = W' * std, b = b' + W' @ mean."""
    first = model.network[0]
    W = first.weight.detach().double()
    return (W * torch.as_tensor(std, dtype=torch.float64)[None, :],
            first.bias.detach().double() + W @ torch.as_tensor(mean, dtype=torch.float64))


def test_column_scale_multiplies_standardised_inputs_and_is_folded():
    X, y, g = toy(200)
    kw = dict(layer_dims=[16, 8], dropout_rates=[0.2, 0.2], lr=1e-3, seed=3, max_epochs=3)
    plain, hp = fit_head(X, y, **kw)
    ones, h1 = fit_head(X, y, column_scale=np.ones(X.shape[1]), **kw)
    # all-ones is exactly no scaling
    for (k, a), b in zip(plain.state_dict().items(), ones.state_dict().values()):
        assert torch.equal(a, b), k
    scale = np.linspace(0.1, 1.0, X.shape[1])
    scaled, hs = fit_head(X, y, column_scale=scale, **kw)
    # the effective divisor is std / scale, and the returned head still takes raw features:
    # unfolding with that divisor gives back a first layer that sees scale * standardised x
    np.testing.assert_allclose(hs["std"], hp["std"] / scale, rtol=1e-6)
    W, b = _unfold(scaled, hs["mean"], hs["std"])
    z = (X - hs["mean"]) / hp["std"] * scale                     # scale * standardised x
    with torch.no_grad():
        first = torch.from_numpy(z).double() @ W.T + b
        import copy
        twin = copy.deepcopy(scaled).double()        # .double() converts in place: on a copy
        ref = twin.network[1:](first).float()
        got = twin(torch.from_numpy(X).double()).float()
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-4)
    assert not np.allclose(predict_proba_head(scaled, X), predict_proba_head(plain, X))
    with pytest.raises(ValueError, match="column_scale"):
        fit_head(X, y, column_scale=np.zeros(X.shape[1]), **kw)


def test_bf16_autocast_is_deterministic_and_learns():
    X, y, g = toy(400)
    kw = dict(layer_dims=[32, 16], dropout_rates=[0.2, 0.2], lr=3e-3, seed=0, max_epochs=40,
              patience=10, batch_size=32, X_val=X[300:], y_val=y[300:], groups_val=g[300:])
    a, ha = fit_head(X[:300], y[:300], bf16=True, **kw)
    b, _ = fit_head(X[:300], y[:300], bf16=True, **kw)
    for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
        assert va.dtype == torch.float32 and torch.equal(va, vb), k    # weights stay fp32
    f, hf = fit_head(X[:300], y[:300], bf16=False, **kw)
    assert ha["best_val_f1"] > 0.85 and abs(ha["best_val_f1"] - hf["best_val_f1"]) < 0.05


def test_bf16_inputs_are_the_autocast_cast_of_the_float32_standardisation():
    """fit_head reads a batch's rows standardised in float32 and, under bf16, cast to bf16: the
    same numbers autocast's first Linear would have made from float32 rows, also when the
    rows are a fold's (`rows`) and the float32 work goes in pieces."""
    from siren.pipeline.head import _Standardised, _standard_stats

    X, _, _ = toy(300, k=7)
    rows = np.random.default_rng(0).permutation(300)[:200]
    mean, std = _standard_stats(X, rows=rows)
    f32 = _Standardised(X, rows, mean, std, torch.float32)
    b16 = _Standardised(X, rows, mean, std, torch.bfloat16)
    idx = np.array([5, 0, 199, 17, 17])
    assert f32.take(idx).dtype == torch.float32 and b16.take(idx).dtype == torch.bfloat16
    whole32 = f32.take(slice(0, 200), piece_rows=64)
    np.testing.assert_allclose(whole32.numpy(), (X[rows] - mean) / std, rtol=1e-5, atol=1e-5)
    assert torch.equal(b16.take(slice(0, 200), piece_rows=64), whole32.to(torch.bfloat16))
    assert torch.equal(f32.take(idx, piece_rows=2), whole32[idx])
    assert len(f32) == 200 and len(_Standardised(X, None, mean, std, torch.float32)) == 300


@pytest.mark.parametrize("bf16", [False, True])
def test_trained_head_holds_no_gradients(bf16):
    """Fold heads are kept for the ensemble: a kept head must not hold its last step's gradients."""
    X, y, g = toy(200)
    model, _ = fit_head(X[:150], y[:150], layer_dims=[16], dropout_rates=[0.1], lr=1e-2, seed=0, max_epochs=3,
                        batch_size=32, X_val=X[150:], y_val=y[150:], groups_val=g[150:], bf16=bf16)
    assert all(p.grad is None for p in model.parameters())


def test_rows_train_on_a_fold_exactly_as_on_its_copy():
    """fit_head(X, y, rows=tr, val_rows=va) (the head search's fold, read in chunks) is the
    same fit as fit_head on the copied rows X[tr], X[va]."""
    X, y, g = toy(300)
    order = np.random.default_rng(1).permutation(300)
    tr, va = np.sort(order[:200]), np.sort(order[200:])
    kw = dict(layer_dims=[16, 8], dropout_rates=[0.2, 0.2], lr=3e-3, seed=4, max_epochs=8, patience=3,
              batch_size=32)
    a, ha = fit_head(X, y, rows=tr, X_val=X, y_val=y, groups_val=g, val_rows=va, **kw)
    b, hb = fit_head(X[tr], y[tr], X_val=X[va], y_val=y[va], groups_val=g[va], **kw)
    assert ha["val_f1"] == hb["val_f1"]
    for va_, vb_ in zip(a.state_dict().values(), b.state_dict().values()):
        assert torch.equal(va_, vb_)


def test_dataset_label_balance_equals_label_balance_when_cells_are_equal():
    """With every (dataset, label) cell the same size, both balances weigh every row alike."""
    X, _, _ = toy(240)
    y = np.tile([0, 1], 120).astype(np.int64)
    g = np.repeat([0, 1], 120)
    kw = dict(layer_dims=[16], dropout_rates=[0.1], lr=3e-3, seed=2, max_epochs=4, batch_size=40)
    a, ha = fit_head(X, y, **kw)
    b, hb = fit_head(X, y, groups=g, balance="dataset_label", **kw)
    np.testing.assert_allclose(ha["train_loss"], hb["train_loss"], rtol=1e-5)
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5)


def test_unbalanced_loss_weighs_every_row_alike():
    """balance="none": with equal classes it is the label-balanced loss (class weights all 1);
    with 1 harmful row in 4 the first epoch's loss is the plain mean cross-entropy, which
    differs from the balanced one."""
    X, _, _ = toy(240)
    kw = dict(layer_dims=[16], dropout_rates=[0.1], lr=3e-3, seed=2, max_epochs=3, batch_size=40)
    y_even = np.tile([0, 1], 120).astype(np.int64)
    a, ha = fit_head(X, y_even, **kw)
    b, hb = fit_head(X, y_even, balance="none", **kw)
    np.testing.assert_allclose(ha["train_loss"], hb["train_loss"], rtol=1e-5)
    for va, vb in zip(a.state_dict().values(), b.state_dict().values()):
        torch.testing.assert_close(va, vb, rtol=1e-4, atol=1e-5)
    y_skew = (np.arange(240) % 4 == 0).astype(np.int64)
    _, h_label = fit_head(X, y_skew, **kw)
    _, h_none = fit_head(X, y_skew, balance="none", **kw)
    assert abs(h_label["train_loss"][0] - h_none["train_loss"][0]) > 1e-3
    # With lr 0 the weights never move (AdamW's decay is lr * wd), so the first epoch's loss is
    # the loss of the initial head on every row: for "none", the plain mean cross-entropy.
    kw0 = {**kw, "dropout_rates": [0.0], "max_epochs": 1, "lr": 0.0}
    m, h0 = fit_head(X, y_skew, balance="none", **kw0)
    _, h0_label = fit_head(X, y_skew, **kw0)
    with torch.no_grad():
        plain = torch.nn.functional.cross_entropy(m(torch.from_numpy(X.astype(np.float32))),
                                                  torch.from_numpy(y_skew)).item()
    assert h0["train_loss"][0] == pytest.approx(plain, rel=1e-5)
    assert abs(h0_label["train_loss"][0] - plain) > 1e-3


def test_dataset_label_balance_needs_groups_and_a_known_name():
    X, y, g = toy(60)
    kw = dict(layer_dims=[8], dropout_rates=[0.1], lr=1e-3, seed=0, max_epochs=1)
    with pytest.raises(ValueError, match="groups"):
        fit_head(X, y, balance="dataset_label", **kw)
    with pytest.raises(ValueError, match="balance"):
        fit_head(X, y, groups=g, balance="datasets", **kw)


def test_stop_on_loss_keeps_the_epoch_of_lowest_validation_loss():
    """stop_on="loss": the kept state is the epoch with the lowest label-balanced validation
    cross-entropy; the history's best_val_f1 is that epoch's F1, not the best F1."""
    X, y, g = toy(400)
    kw = dict(layer_dims=[32, 16], dropout_rates=[0.2, 0.2], lr=3e-3, seed=0, max_epochs=25,
              patience=100, batch_size=32, X_val=X[300:], y_val=y[300:], groups_val=g[300:])
    losses = []

    def record(model):
        counts = np.bincount(y[:300], minlength=2)
        w = torch.tensor(300 / (2.0 * counts), dtype=torch.float32)
        logits = torch.as_tensor(np.log(np.clip(np.stack([1 - predict_proba_head(model, X[300:]),
                                                          predict_proba_head(model, X[300:])], 1), 1e-12, 1)))
        return float(nn.functional.cross_entropy(logits, torch.from_numpy(y[300:]), weight=w))

    model, h = fit_head(X[:300], y[:300], stop_on="loss", **kw)
    best = h["best_epoch"]
    assert 1 <= best <= 25 and len(h["val_f1"]) == 25
    assert h["best_val_f1"] == h["val_f1"][best - 1]
    assert best != fit_head(X[:300], y[:300], **kw)[1]["best_epoch"]   # here F1 keeps another epoch
    for e in (best - 1, best + 1):           # the kept epoch has a lower loss than its neighbours
        if 1 <= e <= 25:
            other, _ = fit_head(X[:300], y[:300], **{**kw, "max_epochs": e, "X_val": None, "y_val": None})
            losses.append((e, record(other)))
    kept = record(model)
    assert all(kept <= loss + 1e-6 for _, loss in losses), (kept, losses)
    with pytest.raises(ValueError, match="stop_on"):
        fit_head(X[:300], y[:300], stop_on="auc", **kw)


def test_ema_returns_the_moving_average_of_the_weights():
    """ema=d: after step t the kept weights are avg_t = d_t avg_(t-1) + (1 - d_t) raw_t with
    d_t = min(d, (1 + t) / (10 + t)), avg_0 = the initial weights. One step per epoch here
    (batch >= rows), so raw_t is what a plain fit of t epochs returns (the same seeded run)."""
    from siren.mlp import logits_of
    from siren.metrics import mean_group_macro_f1

    X, y, g = toy(300)
    kw = dict(layer_dims=[16, 8], dropout_rates=[0.1, 0.0], lr=1e-2, seed=3, batch_size=512)
    E, d = 6, 0.7
    raws = [fit_head(X, y, max_epochs=t, **kw)[0].state_dict() for t in range(E + 1)]  # t = 0: the initial head
    avg = {k: v.double() for k, v in raws[0].items()}
    for t in range(1, E + 1):
        dt = min(d, (1 + t) / (10 + t))
        avg = {k: dt * avg[k] + (1 - dt) * raws[t][k].double() for k in avg}
    got = fit_head(X, y, max_epochs=E, ema=d, **kw)[0].state_dict()
    for k in avg:       # the folded first layer is affine in (W, b): it commutes with the average
        torch.testing.assert_close(got[k].double(), avg[k], rtol=1e-5, atol=1e-5)
    assert not torch.allclose(got["network.0.weight"], raws[E]["network.0.weight"], atol=1e-3)

    # With validation, the averaged weights are what is scored and kept: the returned head's
    # F1 on the validation rows is the recorded best.
    Xv, yv, gv = toy(200, seed=1)
    model, h = fit_head(X, y, max_epochs=30, patience=30, ema=0.9, X_val=Xv, y_val=yv, groups_val=gv,
                        **{**kw, "batch_size": 32})
    pred = logits_of(model, torch.from_numpy(Xv)).argmax(1).numpy()
    assert mean_group_macro_f1(yv, pred, gv) == pytest.approx(h["best_val_f1"], abs=1e-9)
    assert h["best_val_f1"] == max(h["val_f1"])
    with pytest.raises(ValueError, match="ema"):
        fit_head(X, y, max_epochs=1, ema=1.0, **kw)


def test_input_dropout_zeroes_a_share_of_the_training_inputs_only(monkeypatch):
    """input_dropout=p: each training batch's standardised inputs reach the first Linear with
    about a share p zeroed and the rest scaled by 1 / (1 - p); validation reads them whole;
    p = 0 draws nothing, so the head is the one trained without the option."""
    import siren.pipeline.head as head_mod

    seen = []       # (training?, the first Linear's input)

    class Recording(MLPHead):
        def forward(self, x):
            seen.append((self.training, x.detach().clone()))
            return super().forward(x)

    monkeypatch.setattr(head_mod, "MLPHead", Recording)
    X, y, g = toy(300, k=40)
    kw = dict(layer_dims=[16], dropout_rates=[0.0], lr=1e-2, seed=5, batch_size=512, max_epochs=2,
              X_val=X[:100], y_val=y[:100], groups_val=g[:100])
    plain, _ = fit_head(X, y, **kw)
    inputs_plain = [x for _, x in seen]
    seen.clear()
    zero, _ = fit_head(X, y, input_dropout=0.0, **kw)
    assert all(torch.equal(a, b) for a, b in zip(inputs_plain, [x for _, x in seen]))
    for k, v in plain.state_dict().items():
        assert torch.equal(v, zero.state_dict()[k])

    seen.clear()
    p = 0.5
    dropped, _ = fit_head(X, y, input_dropout=p, **kw)
    train_in = [x for t, x in seen if t]
    val_in = [x for t, x in seen if not t]
    clean_train = [x for t, x in zip([t for t, _ in seen], inputs_plain) if t]
    assert len(train_in) == 2 and len(val_in) == 2                     # one batch per epoch here
    for got, clean in zip(train_in, clean_train):
        zeroed = got == 0
        assert 0.45 < zeroed.float().mean().item() < 0.55
        torch.testing.assert_close(got[~zeroed], clean[~zeroed] / (1 - p))
    assert not torch.equal(train_in[0], train_in[1])                    # a fresh mask each step
    torch.testing.assert_close(val_in[0], inputs_plain[1])            # validation: not dropped
    # the same seed gives the same head; the option changes it
    again, _ = fit_head(X, y, input_dropout=p, **kw)
    for k, v in dropped.state_dict().items():
        assert torch.equal(v, again.state_dict()[k])
    assert not torch.equal(dropped.state_dict()["network.0.weight"], plain.state_dict()["network.0.weight"])
    with pytest.raises(ValueError, match="input_dropout"):
        fit_head(X, y, input_dropout=1.0, **kw)


def test_bf16_fit_casts_into_kept_buffers_with_autocasts_numbers(monkeypatch):
    """A bf16 fit writes the first Linear's weight casts into tensors kept for the whole fit
    (siren.pipeline.head._CastOnceLinear); the head, its history and the restored best state
    are bit for bit those of plain autocast, and the returned head is a plain Linear stack."""
    import siren.pipeline.head as head_mod

    X, y, g = toy(400, k=48)
    kw = dict(layer_dims=[64, 32], dropout_rates=[0.3, 0.2], lr=5e-3, seed=11, batch_size=64, max_epochs=6,
              patience=3, bf16=True, X_val=X[300:], y_val=y[300:], groups_val=g[300:], rows=np.arange(300))
    steps = []
    real_to_master = head_mod._CastOnceLinear.to_master

    def counting(self):
        steps.append(self.w16.grad is not None)
        real_to_master(self)

    monkeypatch.setattr(head_mod._CastOnceLinear, "to_master", counting)
    kept, h_kept = fit_head(X, y, **kw)
    assert len(steps) == 5 * len(h_kept["val_f1"]) and all(steps)       # 300 rows / 64: 5 steps an epoch
    monkeypatch.setattr(head_mod, "_CAST_INTO_KEPT_BUFFERS", False)
    steps.clear()
    plain, h_plain = fit_head(X, y, **kw)
    assert steps == []                                                  # the plain autocast path
    assert h_kept["val_f1"] == h_plain["val_f1"] and h_kept["train_loss"] == h_plain["train_loss"]
    assert h_kept["best_epoch"] == h_plain["best_epoch"]
    for k, v in plain.state_dict().items():
        assert torch.equal(v, kept.state_dict()[k]), k
    assert [type(m) for m in kept.network] == [type(m) for m in plain.network]
    assert type(kept.network[0]) is nn.Linear


def test_validation_in_row_pieces_gives_the_logits_of_one_product():
    """fit_head validates _VAL_ROWS rows per product (a bounded buffer whatever the rows): under
    bf16 autocast (oneDNN) the same logits bit for bit as one product of all rows; in float32
    the same to the last bits, and the same predicted classes."""
    from siren.mlp import logits_of
    from siren.pipeline.head import _VAL_ROWS, _Standardised

    rng = np.random.default_rng(0)
    X = rng.standard_normal((2 * _VAL_ROWS + 300, 96)).astype(np.float16)
    rows = np.sort(rng.choice(len(X), size=2 * _VAL_ROWS + 100, replace=False))
    torch.manual_seed(0)
    net = MLPHead(96, [128, 64], [0.1, 0.1]).eval()
    mean, std = X.astype(np.float64).mean(0), X.astype(np.float64).std(0)
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        Xv = _Standardised(X, rows, mean, std, torch.bfloat16)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(logits_of(net, Xv, chunk_rows=_VAL_ROWS), logits_of(net, Xv, chunk_rows=4096))
    Xv = _Standardised(X, rows, mean, std, torch.float32)
    whole, pieces = logits_of(net, Xv, chunk_rows=4096), logits_of(net, Xv, chunk_rows=_VAL_ROWS)
    torch.testing.assert_close(pieces, whole, rtol=1e-6, atol=1e-6)
    assert torch.equal(pieces.argmax(1), whole.argmax(1))


def test_fit_head_returns_the_best_epochs_weights_not_the_last():
    """The best epoch's state is kept in one copy that later improvements overwrite in place."""
    X, y, g = toy(400, k=24)
    kw = dict(layer_dims=[32, 16], dropout_rates=[0.2, 0.2], lr=1e-2, seed=5, batch_size=64,
              X_val=X[300:], y_val=y[300:], groups_val=g[300:], rows=np.arange(300), patience=50)
    model, hist = fit_head(X, y, max_epochs=30, **kw)
    best = hist["best_epoch"]
    # improved several times (the kept copy was overwritten), then got worse: the last epoch is not the best
    assert best == 8 and len(hist["val_f1"]) == 30 and hist["val_f1"][-1] < hist["best_val_f1"]
    # the same training without validation, stopped at the best epoch: its last weights
    no_val = {k: v for k, v in kw.items() if k not in ("X_val", "y_val", "groups_val")}
    again, _ = fit_head(X, y, max_epochs=best, **no_val)
    for k, v in again.state_dict().items():
        assert torch.equal(v, model.state_dict()[k]), k
