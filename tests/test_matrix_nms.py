"""Matrix NMS: golden parity, hand-computed decays for both kernels, fixed-size slots."""

import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO, golden_dir
from solo_tf.matrix_nms import matrix_nms

NMS_CASES = sorted(golden_dir().glob("matrix_nms_*.npz"))


def _np(out):
    from keras import ops

    return {k: ops.convert_to_numpy(v) for k, v in out.items()}


def _strip_case():
    """Masks on a 1 x 10 strip, given out of score order.

    A [0,4) class 0 .9; B [2,6) class 0 .8; C [0,4) class 1 .7; D [4,8) class 0 .6;
    E [0,6) class 0 .5. IoU: AB 1/3, BD 1/3, AE 2/3, BE 2/3, DE 1/4, AD 0; C overlaps only
    other classes.
    """
    spans = {"A": (0, 4), "B": (2, 6), "C": (0, 4), "D": (4, 8), "E": (0, 6)}
    meta = {"A": (0, 0.9), "B": (0, 0.8), "C": (1, 0.7), "D": (0, 0.6), "E": (0, 0.5)}
    names = ["D", "A", "E", "C", "B"]  # input order
    masks = np.zeros((5, 1, 10), np.uint8)
    for i, nm in enumerate(names):
        lo, hi = spans[nm]
        masks[i, 0, lo:hi] = 1
    labels = np.array([meta[nm][0] for nm in names], np.int32)
    scores = np.array([meta[nm][1] for nm in names], np.float32)
    return names, masks, labels, scores


def test_gaussian_hand_case():
    names, masks, labels, scores = _strip_case()
    g = lambda x: np.exp(-2.0 * x * x)  # noqa: E731
    # comp: A 0, B 1/3, C 0, D 1/3 (B above it), E 2/3.
    expected = {
        "A": 0.9,
        "B": 0.8 * g(1 / 3),
        "C": 0.7,
        "D": 0.6 * min(g(0) / g(0), g(1 / 3) / g(1 / 3)),  # compensated: B already decayed
        "E": 0.5 * min(g(2 / 3), g(2 / 3) / g(1 / 3), g(1 / 4) / g(1 / 3)),
    }
    out = _np(matrix_nms(masks, labels, scores, kernel="gaussian", sigma=2.0, max_num=8))
    order = sorted(expected, key=lambda k: -expected[k])
    assert out["num"] == 5
    np.testing.assert_allclose(out["scores"][:5], [expected[k] for k in order], atol=1e-6)
    assert [names[i] for i in out["keep_inds"][:5]] == order
    np.testing.assert_array_equal(out["labels"][:5], labels[out["keep_inds"][:5]])
    # Slots past the count are empty.
    np.testing.assert_array_equal(out["scores"][5:], 0)
    np.testing.assert_array_equal(out["labels"][5:], -1)
    np.testing.assert_array_equal(out["keep_inds"][5:], -1)


def test_linear_hand_case():
    names, masks, labels, scores = _strip_case()
    f = lambda x: 1.0 - x  # noqa: E731
    expected = {
        "A": 0.9,
        "B": 0.8 * f(1 / 3),
        "C": 0.7,
        "D": 0.6 * min(1.0, f(1 / 3) / f(1 / 3)),
        "E": 0.5 * min(f(2 / 3), f(2 / 3) / f(1 / 3), f(1 / 4) / f(1 / 3)),
    }
    out = _np(matrix_nms(masks.reshape(5, -1), labels, scores, kernel="linear", max_num=5))
    order = sorted(expected, key=lambda k: -expected[k])
    np.testing.assert_allclose(out["scores"], [expected[k] for k in order], atol=1e-6)
    assert [names[i] for i in out["keep_inds"]] == order


def test_filter_thr_and_max_num():
    names, masks, labels, scores = _strip_case()
    out = _np(matrix_nms(masks, labels, scores, kernel="linear", filter_thr=0.3, max_num=10))
    # E decays to 0.5 * (1 - 2/3) = 1/6 (< 0.3): dropped; the rest stay above 0.3.
    assert out["num"] == 4
    assert "E" not in [names[i] for i in out["keep_inds"][:4]]
    out = _np(matrix_nms(masks, labels, scores, kernel="linear", max_num=2))
    assert out["num"] == 2 and [names[i] for i in out["keep_inds"]] == ["A", "C"]


def test_valid_flags_exclude_padding():
    names, masks, labels, scores = _strip_case()
    valid = np.array([nm != "A" for nm in names])
    out = _np(matrix_nms(masks, labels, scores, valid=valid, kernel="gaussian", max_num=8))
    kept = [names[i] for i in out["keep_inds"][: out["num"]]]
    assert out["num"] == 4 and "A" not in kept
    # Without A, B is the top of its class and is not decayed.
    b = kept.index("B")
    np.testing.assert_allclose(out["scores"][b], 0.8, atol=1e-6)


def test_batched_equals_single():
    rs = np.random.RandomState(3)
    masks = rs.rand(2, 12, 8, 8) > 0.5
    labels = rs.randint(0, 2, (2, 12)).astype(np.int32)
    scores = rs.rand(2, 12).astype(np.float32)
    batched = _np(matrix_nms(masks, labels, scores, max_num=6, filter_thr=0.1))
    for b in range(2):
        one = _np(matrix_nms(masks[b], labels[b], scores[b], max_num=6, filter_thr=0.1))
        for k in one:
            np.testing.assert_allclose(batched[k][b], one[k], atol=1e-6)


def test_empty_input_gives_empty_slots():
    out = _np(matrix_nms(np.zeros((0, 4, 4)), np.zeros((0,), np.int32), np.zeros((0,)), max_num=3))
    assert out["num"] == 0 and out["scores"].shape == (3,)
    np.testing.assert_array_equal(out["keep_inds"], -1)


def test_bad_kernel_raises():
    with pytest.raises(ValueError, match="kernel"):
        matrix_nms(np.zeros((1, 2, 2)), np.zeros((1,), np.int32), np.ones((1,)), kernel="box")


def test_jax_backend_matches_golden():
    """Every golden case through ``jax.jit`` (as Keras runs JAX graphs; op-by-op dispatch
    took 46 s for the same cases)."""
    code = (
        "import functools, json, sys, jax, numpy as np\n"
        "from solo_tf.matrix_nms import matrix_nms\n"
        "bad = []\n"
        "for p in sys.argv[1:]:\n"
        "    d = np.load(p); prm = json.loads(str(d['params']))\n"
        "    masks = d['masks']; n = masks.shape[0]\n"
        "    max_num = prm.pop('max_num', -1)\n"
        "    slots = int(max_num) if max_num and max_num > 0 else max(n, 1)\n"
        "    nms = jax.jit(functools.partial(matrix_nms, max_num=slots, **prm))\n"
        "    out = nms(masks.reshape(n, int(np.prod(masks.shape[1:]))).astype(np.float32),\n"
        "              np.asarray(d['labels'], np.int32), np.asarray(d['scores'], np.float32))\n"
        "    m = int(out['num'])\n"
        "    s, l, k = (np.asarray(out[x])[:m] for x in ('scores', 'labels', 'keep_inds'))\n"
        "    ok = s.shape == d['out_scores'].shape and np.allclose(s, d['out_scores'], atol=1e-5, rtol=0)\n"
        "    ok = ok and (l == d['out_labels']).all() and (k == d['out_keep_inds']).all()\n"
        "    bad += [] if ok else [p]\n"
        "print('BAD', bad, 'of', len(sys.argv) - 1)\n"
        "sys.exit(1 if bad or len(sys.argv) < 2 else 0)\n"
    )
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3")
    res = subprocess.run([sys.executable, "-c", code, *map(str, NMS_CASES)], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
