"""TorchSGD: the reference's torch.optim.SGD update (coupled L2 before momentum), checked
against updates computed by hand with numpy."""

import keras
import numpy as np
import pytest

from solo_tf.config import TrainConfig
from solo_tf.training import TorchSGD, WarmupStepDecay, make_optimizer

N, D, K = 6, 4, 3  # samples, inputs, outputs


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(N, D)).astype("float32")
    y = rng.normal(size=(N, K)).astype("float32")
    w0 = rng.normal(size=(D, K)).astype("float32")
    b0 = rng.normal(size=(K,)).astype("float32")
    return x, y, w0, b0


def _linear_model(w0, b0):
    inputs = keras.Input((D,))
    model = keras.Model(inputs, keras.layers.Dense(K, name="dense")(inputs))
    model.get_layer("dense").set_weights([w0, b0])
    return model


def _mse_grads(x, y, w, b):
    """d/dw, d/db of mean((x w + b - y)^2) over all N*K entries."""
    r = x @ w + b - y
    return 2.0 * x.T @ r / r.size, 2.0 * r.sum(0) / r.size


def _torch_sgd(params, grads_fn, lrs, momentum, wd, nesterov=False, clipnorm=None, decay_mask=None):
    """torch.optim.SGD by hand (float64): d = g + wd*w; buf = d at step 1, momentum*buf + d
    after; w -= lr*buf (nesterov: lr*(d + momentum*buf)). Clipping scales g before."""
    params = [p.astype(np.float64) for p in params]
    bufs = [None] * len(params)
    decay_mask = decay_mask or [True] * len(params)
    for lr in lrs:
        grads = grads_fn(*params)
        if clipnorm is not None:
            norm = np.sqrt(sum(float((g * g).sum()) for g in grads))
            grads = [g * min(1.0, clipnorm / norm) for g in grads]
        for i, (p, g) in enumerate(zip(params, grads)):
            d = g + wd * p if decay_mask[i] else g
            bufs[i] = d.copy() if bufs[i] is None else momentum * bufs[i] + d
            step = d + momentum * bufs[i] if nesterov else bufs[i]
            params[i] = p - lr * step
    return params


def _fit(optimizer, steps):
    x, y, w0, b0 = _data()
    model = _linear_model(w0, b0)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(x, y, batch_size=N, epochs=steps, shuffle=False, verbose=0)
    return [keras.ops.convert_to_numpy(v) for v in model.get_layer("dense").weights]


def _expected(lrs, **kw):
    x, y, w0, b0 = _data()
    return _torch_sgd([w0, b0], lambda w, b: _mse_grads(x, y, w, b), lrs, **kw)


@pytest.mark.parametrize("steps", [1, 2])
def test_fit_steps_equal_the_torch_update(steps):
    """Large wd so the coupled term is a visible part of every update."""
    got = _fit(TorchSGD(learning_rate=0.1, momentum=0.9, weight_decay=0.05), steps)
    want = _expected([0.1] * steps, momentum=0.9, wd=0.05)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_first_step_is_lr_times_gradient_plus_l2():
    x, y, w0, b0 = _data()
    gw, gb = _mse_grads(x, y, w0.astype(np.float64), b0.astype(np.float64))
    got_w, got_b = _fit(TorchSGD(learning_rate=0.1, momentum=0.9, weight_decay=0.05), 1)
    np.testing.assert_allclose(got_w, w0 - 0.1 * (gw + 0.05 * w0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(got_b, b0 - 0.1 * (gb + 0.05 * b0), rtol=1e-5, atol=1e-6)


def test_schedule_lr_applies_to_the_whole_buffer():
    """Warm-up changes lr every step; torch multiplies the buffer by the current lr."""
    schedule = WarmupStepDecay(0.1, warmup_iters=2, warmup_ratio=0.25)
    lrs = [float(keras.ops.convert_to_numpy(schedule(s))) for s in range(3)]
    assert lrs[0] < lrs[1] < lrs[2]
    got = _fit(TorchSGD(learning_rate=schedule, momentum=0.9, weight_decay=0.05), 3)
    want = _expected(lrs, momentum=0.9, wd=0.05)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_clipping_acts_before_the_decay_and_nesterov():
    opt = TorchSGD(learning_rate=0.1, momentum=0.9, weight_decay=0.05, global_clipnorm=0.2, nesterov=True)
    got = _fit(opt, 2)
    want = _expected([0.1, 0.1], momentum=0.9, wd=0.05, clipnorm=0.2, nesterov=True)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_excluded_variables_get_no_decay():
    opt = TorchSGD(learning_rate=0.1, momentum=0.9, weight_decay=0.05)
    opt.exclude_from_weight_decay(var_names=["bias"])
    got = _fit(opt, 2)
    want = _expected([0.1, 0.1], momentum=0.9, wd=0.05, decay_mask=[True, False])
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)


def test_no_decay_constant_lr_equals_keras_sgd():
    ours = _fit(TorchSGD(learning_rate=0.1, momentum=0.9), 3)
    keras_sgd = _fit(keras.optimizers.SGD(learning_rate=0.1, momentum=0.9), 3)
    for a, b in zip(ours, keras_sgd):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_coupled_decay_differs_from_keras_decoupled_decay():
    ours = _fit(TorchSGD(learning_rate=0.1, momentum=0.9, weight_decay=0.05), 2)
    keras_sgd = _fit(keras.optimizers.SGD(learning_rate=0.1, momentum=0.9, weight_decay=0.05), 2)
    assert not np.allclose(ours[0], keras_sgd[0], rtol=1e-5, atol=1e-6)


def test_make_optimizer_sgd_is_coupled_adamw_is_decoupled():
    sgd = make_optimizer(TrainConfig(batch_size=8, epochs=36), steps_per_epoch=10)
    assert isinstance(sgd, TorchSGD) and sgd.weight_decay == pytest.approx(1e-4) and sgd.momentum == 0.9
    adamw = make_optimizer(TrainConfig(batch_size=8, epochs=36, optimizer="adamw"), steps_per_epoch=10)
    assert type(adamw) is keras.optimizers.AdamW and adamw.weight_decay == pytest.approx(1e-4)


def test_serialization_round_trip():
    opt = TorchSGD(learning_rate=0.02, momentum=0.9, weight_decay=1e-4, global_clipnorm=35.0, nesterov=True)
    back = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert type(back) is TorchSGD
    cfg, back_cfg = opt.get_config(), back.get_config()
    for key in ("learning_rate", "momentum", "weight_decay", "global_clipnorm", "nesterov"):
        assert back_cfg[key] == pytest.approx(cfg[key]), key
