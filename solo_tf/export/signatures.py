"""The exported graphs as plain functions (TensorFlow; traced by the format writers).

* :func:`canvas_function`: images on the canvas (B, H, W, 3) -> the exported dict; the graph
  of the fixed-canvas formats (TFLite, ONNX).
* :func:`serving_functions`: the two SavedModel signatures, ``serving_default`` (uint8 images
  of any size, letterboxed inside the graph) and ``image_bytes`` (encoded JPEG/PNG strings),
  with detections mapped back to each image's pixels.

Both run the graph of :func:`solo_tf.inference.build_inference_model` (the network and the
decoder on the export's canvas). Outputs: :mod:`solo_tf.export`'s module doc.
"""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from solo_tf.decoder import MASK_STRIDE  # noqa: E402
from solo_tf.export.files import model_labels  # noqa: E402
from solo_tf.inference import build_inference_model  # noqa: E402


def _class_table(model):
    """(C,) int32 numpy: the id reported for each 0-based class (made a constant inside the
    traced graph: a tensor captured from outside would become an extra graph input)."""
    _, ids = model_labels(model)
    n = int(model.model_config.num_classes)
    return np.asarray(ids if ids else range(n), np.int32)


def _finish(dets, table, mask_thr):
    """Decoder output -> the exported dict: uint8 masks, dataset class ids."""
    classes = tf.cast(dets["detection_classes"], tf.int32)
    ids = tf.gather(tf.constant(table), tf.maximum(classes, 0))
    return {
        "detection_masks": tf.cast(dets["detection_masks"] > mask_thr, tf.uint8),
        "detection_scores": tf.cast(dets["detection_scores"], tf.float32),
        "detection_classes": tf.where(classes >= 0, ids, -1),
        "detection_boxes": tf.cast(dets["detection_boxes"], tf.float32),
        "num_detections": tf.cast(dets["num_detections"], tf.int32),
    }


def _named(raw):
    """Raw head outputs under their own names (the exported graph's output names)."""
    return {k: tf.identity(v, name=k) for k, v in raw.items()}


def canvas_function(model, options):
    """images on the canvas (B, H, W, 3) -> exported dict (detections or raw logits).

    The graph of the fixed-canvas formats. Boxes and masks are in canvas pixels.

    Args:
        model: a :class:`solo_tf.model.SOLO`.
        options: :class:`solo_tf.export.ExportOptions`.
    """
    graph = build_inference_model(model, options.postprocess, options.canvas_for(model),
                                  full_size_masks=options.full_size_masks, raw_outputs=options.raw_outputs)
    table = _class_table(model)
    mask_thr = float(options.postprocess.mask_thr)

    def run(images):
        out = graph(tf.cast(images, tf.float32), training=False)
        return _named(out) if options.raw_outputs else _finish(out, table, mask_thr)

    return run


def serving_functions(model, options):
    """The two SavedModel signatures as plain functions (traced by the caller).

    Both letterbox inside the graph with :func:`solo_tf.preprocess.letterbox` (the training
    pipeline's and Predictor's own preprocessing) and map detections back with
    :func:`solo_tf.preprocess.boxes_to_image` / :func:`~solo_tf.preprocess.masks_to_image`.

    Returns:
        dict ``serving_default``: images (B, h0, w0, 3) uint8 -> dict;
        ``image_bytes``: (B,) encoded JPEG/PNG strings -> dict. Outputs: the module doc.
    """
    from solo_tf.preprocess import letterbox

    canvas_hw = options.canvas_for(model)
    # stride-4 soft masks: the full-size ones are made per image, in its own pixels
    graph = build_inference_model(model, options.postprocess, canvas_hw, full_size_masks=False,
                                  raw_outputs=options.raw_outputs)
    table = _class_table(model)
    mask_thr = float(options.postprocess.mask_thr)

    def on_canvas(canvases):
        """(B, H, W, 3) float32 -> raw logits, or detections with stride-4 soft masks."""
        out = graph(canvases, training=False)
        if options.raw_outputs:
            return _named(out)
        return dict(_finish(out, table, mask_thr), soft_masks=out["detection_masks"])

    def serving_default(images):
        # the signature checks the dtype; a wrong rank or channel count would otherwise
        # surface as an obscure error deep in the resize: fail here, naming the shape
        images = tf.ensure_shape(images, (None, None, None, 3))
        batch = tf.shape(images)[0]
        image_hw = tf.shape(images)[1:3]
        canvas, valid, _ = letterbox(images, canvas_hw)
        out = _to_images(on_canvas(canvas), valid, (image_hw[0], image_hw[1]), canvas_hw, options)
        out.update(_letterbox_outputs(tf.tile(tf.stack(valid)[None], [batch, 1]), tf.tile(image_hw[None], [batch, 1])))
        return out

    def decode_one(encoded):
        image = tf.io.decode_image(encoded, channels=3, dtype=tf.uint8, expand_animations=False)
        canvas, valid, _ = letterbox(image, canvas_hw)
        return canvas, tf.stack(valid), tf.shape(image)[:2]

    def image_bytes(encoded):
        encoded = tf.ensure_shape(encoded, (None,))
        canvases, valids, sizes = tf.map_fn(
            decode_one, encoded,
            fn_output_signature=(tf.TensorSpec((*canvas_hw, 3), tf.float32), tf.TensorSpec((2,), tf.int32),
                                 tf.TensorSpec((2,), tf.int32)),
        )
        dets = on_canvas(canvases)  # one batched forward pass for images of any sizes
        if options.raw_outputs:
            out = dict(dets)
        else:
            out = _per_image(dets, valids, sizes, canvas_hw, options)
        out.update(_letterbox_outputs(valids, sizes))
        return out

    return {"serving_default": serving_default, "image_bytes": image_bytes}


def _letterbox_outputs(valids, sizes):
    """``letterbox_scale`` (B, 2) (h'/h0, w'/w0), ``letterbox_offset`` (B, 2) zeros (the
    image sits top-left), ``image_size`` (B, 2) (h0, w0): canvas (y, x) = image (y, x) *
    scale + offset, exactly the resize's own mapping."""
    scale = tf.cast(valids, tf.float32) / tf.cast(sizes, tf.float32)
    return {"letterbox_scale": scale, "letterbox_offset": tf.zeros_like(scale), "image_size": sizes}


def _to_images(dets, valid, image_hw, canvas_hw, options):
    """Detections of a batch sharing one letterbox -> boxes (and full-size masks) in the
    image's pixels. ``valid`` (h', w') and ``image_hw`` (h0, w0) are scalar pairs."""
    from solo_tf.preprocess import boxes_to_image, masks_to_image

    if options.raw_outputs:
        return dict(dets)
    out = {k: v for k, v in dets.items() if k != "soft_masks"}
    if options.full_size_masks:
        soft = masks_to_image(dets["soft_masks"], valid, image_hw, canvas_size=canvas_hw)  # (B, K, h0, w0)
        binary = soft > float(options.postprocess.mask_thr)
        out["detection_masks"] = tf.cast(binary, tf.uint8)
        # tight boxes of the image-size masks, as Predictor reports them
        out["detection_boxes"] = _tight_boxes(binary)
    else:
        out["detection_boxes"] = boxes_to_image(dets["detection_boxes"], valid, image_hw)
    return out


def _tight_boxes(masks):
    """Tight boxes of binary masks of a dynamic size (``decoder.masks_to_boxes`` needs a
    static one). masks (B, K, h, w) bool -> (B, K, 4) float32 x1 y1 x2 y2 (x2, y2
    exclusive), zeros for an empty mask."""
    h = tf.cast(tf.shape(masks)[-2], tf.float32)
    w = tf.cast(tf.shape(masks)[-1], tf.float32)
    cols = tf.reduce_any(masks, axis=-2)  # (B, K, w)
    rows = tf.reduce_any(masks, axis=-1)  # (B, K, h)
    xs = tf.range(w, dtype=tf.float32)
    ys = tf.range(h, dtype=tf.float32)
    boxes = tf.stack([
        tf.reduce_min(tf.where(cols, xs, w), axis=-1), tf.reduce_min(tf.where(rows, ys, h), axis=-1),
        tf.reduce_max(tf.where(cols, xs + 1.0, 0.0), axis=-1), tf.reduce_max(tf.where(rows, ys + 1.0, 0.0), axis=-1),
    ], axis=-1)
    return tf.where(tf.reduce_any(cols, axis=-1, keepdims=True), boxes, 0.0)


def _per_image(dets, valids, sizes, canvas_hw, options):
    """Images of different sizes (``image_bytes``): map each one's detections to its own
    pixels. Full-size masks are zero-padded to the largest image of the batch
    (``image_size`` says how much of each is real)."""
    max_hw = tf.reduce_max(sizes, axis=0)

    def one(args):
        d, valid, hw = args
        d = {k: v[None] for k, v in d.items()}
        out = _to_images(d, (valid[0], valid[1]), (hw[0], hw[1]), canvas_hw, options)
        out = {k: v[0] for k, v in out.items()}
        if options.full_size_masks:
            out["detection_masks"] = tf.pad(out["detection_masks"], [[0, 0], [0, max_hw[0] - hw[0]],
                                                                      [0, max_hw[1] - hw[1]]])
        return out

    k = int(options.postprocess.max_per_img)
    h, w = canvas_hw
    mask_shape = (k, None, None) if options.full_size_masks else (k, h // MASK_STRIDE, w // MASK_STRIDE)
    signature = {
        "detection_masks": tf.TensorSpec(mask_shape, tf.uint8),
        "detection_scores": tf.TensorSpec((k,), tf.float32),
        "detection_classes": tf.TensorSpec((k,), tf.int32),
        "detection_boxes": tf.TensorSpec((k, 4), tf.float32),
        "num_detections": tf.TensorSpec((), tf.int32),
    }
    return tf.map_fn(one, (dets, valids, sizes), fn_output_signature=signature)
