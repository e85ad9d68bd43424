"""The one preprocessing path: letterbox an image onto the network canvas, and back.

Training (the ``tf.data`` pipeline), :class:`solo_tf.inference.Predictor` and the exported
graphs all call :func:`letterbox`, so an image reaches the network as the same tensor
whichever way it comes in. The ImageNet normalisation is not here: it is a layer of the
model (``model.py``), so the network takes RGB 0-255.

Letterbox: the image is scaled by ``scale`` (keeping its aspect ratio), resized bilinearly
(antialiased when it shrinks) to the valid size ``(h', w') = (round(h * scale), round(w * scale))``,
clipped to 0-255 and placed top-left on a zero canvas of ``canvas_size`` (H, W). ``scale``
is the largest that fits the canvas, or, for multi-scale training, the one that makes the
short side ``short_side`` (capped by ``max_long_side`` and by the canvas). The inverse maps
canvas coordinates back to the image per axis: ``x0 = x * w / w'``, ``y0 = y * h / h'``
(exactly the resize's own mapping, which ``scale`` alone is not: ``w'`` is rounded).

The geometry is integer arithmetic on exact fractions (``scale = num / den``; rounding
half to even), so TensorFlow, JAX and plain Python agree on ``(h', w')`` to the pixel for
every image size: float32 and float64 would round some sizes differently.

Backends: the code is Keras backend ops (``keras.ops``' own implementations). Inside a
TensorFlow graph (a ``tf.data`` map, a ``tf.function`` serving signature) it runs on Keras'
TensorFlow backend whatever ``keras.backend.backend()`` is, as Keras' own preprocessing
layers do (``DataLayer``): ``tf.data`` cannot run JAX ops, and there the image size may be
dynamic. Elsewhere (eager, e.g. ``Predictor``) it runs on the configured backend with
static shapes. TensorFlow is never imported here.
"""

from __future__ import annotations

import sys
from typing import Any, NamedTuple

import keras
import numpy as np

# Largest side accepted (image, canvas, short/long side): products of two stay exact in int64,
# and far above any image solo-tf is meant for.
MAX_SIDE = 1 << 20


class Letterbox(NamedTuple):
    """What :func:`letterbox` returns.

    ``canvas``: (H, W, C) or (B, H, W, C) float32 0-255, the resized image top-left, zeros
    beyond. ``valid_size``: (h', w') of the resized image on the canvas. ``scale``: the
    resize factor (h' / h and w' / w up to rounding). Inside a TF graph with a dynamic
    image size, ``valid_size`` holds int32 scalar tensors and ``scale`` is a float32
    scalar tensor; otherwise they are Python ints and a Python float.
    """

    canvas: Any
    valid_size: tuple
    scale: Any


class _KerasOps:
    """The array functions letterbox needs, from ``keras.ops`` (any backend, eager or in the
    TensorFlow backend's graphs)."""

    cast = staticmethod(keras.ops.cast)
    shape = staticmethod(keras.ops.shape)
    cond = staticmethod(keras.ops.cond)
    resize = staticmethod(keras.ops.image.resize)
    logical_or = staticmethod(keras.ops.logical_or)
    clip = staticmethod(keras.ops.clip)
    pad = staticmethod(keras.ops.pad)
    reshape = staticmethod(keras.ops.reshape)
    stack = staticmethod(keras.ops.stack)
    minimum = staticmethod(keras.ops.minimum)
    maximum = staticmethod(keras.ops.maximum)
    zeros = staticmethod(keras.ops.zeros)
    transpose = staticmethod(keras.ops.transpose)


class _TFGraphOps:
    """The same functions on TensorFlow tensors, for a ``tf.data`` / ``tf.function`` graph:
    under JAX ``keras.ops`` would hand the graph's tensors to JAX, and its ``cond`` is a
    Keras operation that cannot branch on a graph tensor. Each is the TensorFlow call Keras'
    own TensorFlow backend makes for it."""

    def __init__(self, tf):
        self.tf = tf

    def cast(self, x, dtype):
        return self.tf.cast(x, dtype)

    def shape(self, x):
        x = self.tf.convert_to_tensor(x)
        dynamic = self.tf.shape(x)
        return tuple(d if d is not None else dynamic[i] for i, d in enumerate(x.shape.as_list()))

    def cond(self, pred, true_fn, false_fn):
        return self.tf.cond(pred, true_fn, false_fn)

    def resize(self, x, size, interpolation="bilinear", antialias=False, data_format="channels_last"):
        if data_format != "channels_last":
            raise ValueError("letterbox resizes channels_last images only")
        return self.tf.image.resize(x, size, method=interpolation, antialias=antialias)

    def logical_or(self, a, b):
        return self.tf.logical_or(a, b)

    def clip(self, x, lo, hi):
        return self.tf.clip_by_value(x, lo, hi)

    def pad(self, x, pad_width):
        return self.tf.pad(x, pad_width)

    def reshape(self, x, shape):
        return self.tf.reshape(x, shape)

    def stack(self, xs, axis=0):
        return self.tf.stack(xs, axis=axis)

    def minimum(self, a, b):
        return self.tf.minimum(a, b)

    def maximum(self, a, b):
        return self.tf.maximum(a, b)

    def zeros(self, shape, dtype="float32"):
        return self.tf.zeros(shape, dtype)

    def transpose(self, x, axes):
        return self.tf.transpose(x, axes)


def _in_graph() -> bool:
    """Inside a TensorFlow graph (a ``tf.data`` map, a ``tf.function``). TensorFlow is only
    asked when something has imported it already: this module never imports it."""
    tf = sys.modules.get("tensorflow")
    return tf is not None and tf.inside_function()


def _backend():
    """The array functions to run on: TensorFlow's inside a TF graph (whatever backend Keras
    runs: the graph's tensors are TensorFlow's), else ``keras.ops``."""
    if _in_graph():
        return _TFGraphOps(sys.modules["tensorflow"])
    return _KerasOps


def _as_int(v):
    """``v`` as a Python int when it is known now (a number, or an eager tensor), else ``v``."""
    if isinstance(v, (int, np.integer)):
        return int(v)
    if _in_graph():
        return v
    return int(np.asarray(v))


def _round_half_even_div(n, d, select):
    """round(n / d), halves to even (as Python's ``round``), for integers n >= 0, d > 0."""
    q = n // d
    r2 = 2 * (n - q * d)
    return select((r2 > d) | ((r2 == d) & (q % 2 == 1)), q + 1, q)


def letterbox_geometry(image_size, canvas_size, short_side=None, max_long_side=None):
    """Valid size and scale of an image letterboxed onto the canvas (no pixels touched).

    Args:
        image_size: (h, w) of the image: ints, or int scalar tensors inside a TF graph.
        canvas_size: (H, W) ints, the canvas.
        short_side: None (the largest scale that fits the canvas), or the short side to
            scale to (int or int scalar tensor; multi-scale training draws it). The canvas
            still caps it.
        max_long_side: an optional cap on the long side (int).

    Returns:
        ``((h', w'), scale)``: ``scale = min(H/h, W/w, short_side/min(h, w),
        max_long_side/max(h, w))`` (the terms given), ``h' = round(h * scale)`` and
        ``w' = round(w * scale)`` clipped to [1, H] and [1, W]. Python ints and a float
        when every input is known now; int32 / float32 scalar tensors otherwise.
    """
    H, W = (int(v) for v in canvas_size)
    if H <= 0 or W <= 0 or max(H, W) > MAX_SIDE:
        raise ValueError(f"letterbox: canvas_size must be positive (at most {MAX_SIDE}), got {canvas_size}")
    h, w = (_as_int(v) for v in image_size)
    short = None if short_side is None else _as_int(short_side)
    long = None if max_long_side is None else _as_int(max_long_side)
    static = all(isinstance(v, int) for v in (h, w, short, long) if v is not None)
    if static:
        if h <= 0 or w <= 0 or max(h, w) > MAX_SIDE:
            raise ValueError(f"letterbox: image height and width must be in 1..{MAX_SIDE}, got {h} x {w}")
        for name, v in (("short_side", short), ("max_long_side", long)):
            if v is not None and not 0 < v <= MAX_SIDE:
                raise ValueError(f"letterbox: {name} must be in 1..{MAX_SIDE}, got {v}")
        as_int = np.int64
    else:
        b = _backend()

        def as_int(v):
            return b.cast(v, "int64")

    def select(cond, a, c):
        # arithmetic, not ops.where: Keras' dtype promotion would narrow int64 under JAX
        return c + (a - c) * as_int(cond)

    def smaller(a, c):
        return select(a < c, a, c)

    def larger(a, c):
        return select(a < c, c, a)

    h, w = as_int(h), as_int(w)
    # scale = num / den, the smallest of the candidate fractions (compared exactly: p/q < n/d
    # <=> p*d < n*q for positive integers)
    candidates = [(as_int(H), h), (as_int(W), w)]
    if short is not None:
        candidates.append((as_int(short), smaller(h, w)))
    if long is not None:
        candidates.append((as_int(long), larger(h, w)))
    num, den = candidates[0]
    for p, q in candidates[1:]:
        less = p * den < num * q
        num, den = select(less, p, num), select(less, q, den)
    one = as_int(1)
    nh = smaller(larger(_round_half_even_div(h * num, den, select), one), as_int(H))
    nw = smaller(larger(_round_half_even_div(w * num, den, select), one), as_int(W))
    if static:
        return (int(nh), int(nw)), float(num) / float(den)
    cast = b.cast
    scale = cast(cast(num, "float64") / cast(den, "float64"), "float32")
    return (cast(nh, "int32"), cast(nw, "int32")), scale


def letterbox(images, canvas_size, short_side=None, max_long_side=None) -> Letterbox:
    """Resize to fit the canvas keeping the aspect ratio, then pad bottom/right with zeros.

    Args:
        images: (h, w, C) or (B, h, w, C), uint8 or float, values 0-255. Any number of
            channels: RGB, or RGB with 0/1 instance masks stacked after it (the pipeline
            resizes an image and its masks as one tensor, so both get the same geometry).
            Inside a TF graph h, w (and B, C) may be dynamic; a batch shares one h, w.
        canvas_size: (H, W) ints, the network input size.
        short_side, max_long_side: see :func:`letterbox_geometry` (multi-scale training).

    Returns:
        :class:`Letterbox` ``(canvas, valid_size, scale)``: canvas (..., H, W, C) float32 with
        static H, W (C static when the input's is), every value clipped to 0-255.
    """
    b = _backend()
    shape = b.shape(images)
    if len(shape) not in (3, 4):
        raise ValueError(f"letterbox: expected an image (h, w, C) or a batch (B, h, w, C), got shape {tuple(shape)}")
    H, W = (int(v) for v in canvas_size)
    (nh, nw), scale = letterbox_geometry(shape[-3:-1], (H, W), short_side, max_long_side)
    x = b.cast(images, "float32")

    def resize(antialias):
        return lambda: b.resize(x, (nh, nw), interpolation="bilinear", antialias=antialias,
                                      data_format="channels_last")

    # Antialiasing only when the image shrinks: enlarging, the antialiased kernel is plain
    # bilinear (equal to float rounding) and ~5x slower on CPU.
    h, w = shape[-3], shape[-2]
    if all(isinstance(v, (int, np.integer)) for v in (h, w, nh, nw)):
        x = resize(nh < h or nw < w)()
    else:
        shrinks = b.logical_or(b.cast(nh, "int32") < b.cast(h, "int32"),
                                     b.cast(nw, "int32") < b.cast(w, "int32"))
        x = b.cond(shrinks, resize(True), resize(False))
    x = b.clip(x, 0.0, 255.0)
    pad = [[0, H - nh], [0, W - nw], [0, 0]]
    x = b.pad(x, [[0, 0]] * (len(shape) - 3) + pad)
    # The pad amounts may be dynamic: restate the canvas's static shape.
    channels = shape[-1] if isinstance(shape[-1], int) else -1
    if len(shape) == 3:
        x = b.reshape(x, (H, W, channels))
    else:  # one -1 at most: a dynamic batch is -1 unless the channels are dynamic too
        batch = shape[0] if isinstance(shape[0], int) or channels == -1 else -1
        x = b.reshape(x, (batch, H, W, channels))
    return Letterbox(x, (nh, nw), scale)


# --- the inverse: canvas -> original image ---------------------------------------------------
def boxes_to_image(boxes, valid_size, image_size):
    """Boxes on the canvas -> the same boxes in the original image's pixels.

    Args:
        boxes: (..., 4) float x1 y1 x2 y2 in canvas pixels (x2, y2 exclusive).
        valid_size: (h', w') from :func:`letterbox`.
        image_size: (h, w) of the original image.

    Returns:
        (..., 4) float32: x scaled by w / w', y by h / h' (the resize's exact mapping),
        clipped to the image ([0, w] x [0, h]).
    """
    b = _backend()
    f = lambda v: b.cast(v, "float32")  # noqa: E731
    (nh, nw), (h, w) = valid_size, image_size
    sx, sy = f(w) / f(nw), f(h) / f(nh)
    factor = b.stack([sx, sy, sx, sy])
    limit = b.stack([f(w), f(h), f(w), f(h)])
    return b.minimum(b.maximum(f(boxes) * factor, 0.0), limit)


def masks_to_image(masks, valid_size, image_size, canvas_size=None):
    """Soft masks on the canvas -> soft masks over the original image (threshold them after).

    Args:
        masks: (K, m_h, m_w) or (B, K, m_h, m_w) float, covering the whole canvas at any
            stride (the decoder's stride-4 masks, or full-size ones).
        valid_size: (h', w') from :func:`letterbox` (a batch shares it).
        image_size: (h, w) of the original image.
        canvas_size: (H, W) the masks cover; default (m_h, m_w) (full-size masks).

    Returns:
        (..., K, h, w) float32: masks upsampled to the canvas (if strided), cropped to the
        valid region and resized to the image, bilinear with half-pixel centres and no
        antialiasing (``decoder.postprocess_image``'s resize).
    """
    b = _backend()
    shape = b.shape(masks)
    if len(shape) not in (3, 4):
        raise ValueError(f"masks_to_image: expected masks (K, h, w) or (B, K, h, w), got shape {tuple(shape)}")
    (nh, nw), (h, w) = valid_size, image_size
    H, W = (int(v) for v in (canvas_size or shape[-2:]))
    if isinstance(shape[-3], int) and shape[-3] == 0:  # no detections: resize rejects 0 channels
        return b.zeros((*shape[:-2], _as_int(h), _as_int(w)), "float32")
    perm = (1, 2, 0) if len(shape) == 3 else (0, 2, 3, 1)
    x = b.transpose(b.cast(masks, "float32"), perm)  # (..., m_h, m_w, K)
    resize = lambda v, size: b.resize(  # noqa: E731
        v, size, interpolation="bilinear", antialias=False, data_format="channels_last")
    if (shape[-2], shape[-1]) != (H, W):
        x = resize(x, (H, W))
    x = resize(x[..., :nh, :nw, :], (h, w))
    return b.transpose(x, (2, 0, 1) if len(shape) == 3 else (0, 3, 1, 2))
