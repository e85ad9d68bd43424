"""Inference: images of any size in, per-image instances out.

* :class:`SOLODecoder` wraps :func:`solo_tf.decoder.decode` as a Keras layer, so
  :func:`build_inference_model` is one functional graph (raw images -> fixed-size
  detections) that predicts, saves and exports as it is.
* :func:`instances_from_detections` is the one per-image post-processing path: a batch of
  fixed-size detections on the canvas + each image's letterbox geometry -> each image's
  instances at its original size. :class:`Predictor`, the demo and
  :func:`solo_tf.evaluation.evaluate_dataset` all go through it.
* :class:`Predictor` letterboxes images of any size into the model's canvas, runs that
  graph in batches, and maps the masks back to each original image.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence

import keras
import numpy as np
from keras import layers, ops

from solo_tf import preprocess
from solo_tf.config import ModelConfig, PostprocessConfig, section_from_dict
from solo_tf.decoder import decode, postprocess_image


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLODecoder(layers.Layer):
    """Raw head outputs (dict) -> ``detection_masks`` (B, K, H, W), ``detection_scores``
    (B, K), ``detection_classes`` (B, K), ``detection_boxes`` (B, K, 4),
    ``num_detections`` (B,), K = ``postprocess.max_per_img``."""

    def __init__(self, model_config, postprocess_config=None, **kwargs):
        super().__init__(**kwargs)
        self.model_config = (
            model_config if isinstance(model_config, ModelConfig) else section_from_dict(ModelConfig, model_config, "model")
        )
        pc = postprocess_config if postprocess_config is not None else PostprocessConfig()
        self.postprocess_config = (
            pc if isinstance(pc, PostprocessConfig) else section_from_dict(PostprocessConfig, pc, "postprocess")
        )

    def call(self, outputs):
        return decode(outputs, self.model_config, self.postprocess_config)

    def get_config(self):
        config = super().get_config()
        config.update(
            model_config=dataclasses.asdict(self.model_config),
            postprocess_config=dataclasses.asdict(self.postprocess_config),
        )
        return config


def build_inference_model(model, postprocess_config=None) -> keras.Model:
    """One graph: images (B, H, W, 3) RGB 0-255 -> fixed-size detections."""
    h, w = model.model_config.image_size
    images = keras.Input(shape=(h, w, 3), name="images")
    detections = SOLODecoder(model.model_config, postprocess_config, name="decoder")(model(images))
    return keras.Model(images, detections, name=f"{model.name}_inference")


def letterbox(image, image_size):
    """Fit one image into the canvas keeping its aspect ratio: :func:`solo_tf.preprocess.letterbox`
    (the training pipeline's resize), on the host.

    Args:
        image: (h, w, 3) uint8 or float RGB.
        image_size: (H, W) canvas.

    Returns:
        canvas (H, W, 3) float32 numpy 0-255 padded bottom/right, valid size (h', w'), scale.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image of shape (h, w, 3), got {image.shape}")
    canvas, valid, scale = preprocess.letterbox(image, image_size)
    return ops.convert_to_numpy(canvas).astype(np.float32, copy=False), valid, scale


def instances_from_detections(detections: Mapping, valid_sizes, orig_sizes, mask_thr: float = 0.5,
                              class_names: Sequence[str] | None = None) -> list[dict]:
    """Fixed-size detections of a batch -> each image's instances at its original size.

    The one per-image post-processing path (host side, numpy): for image b, the filled
    slots' soft masks are cropped to the resized image's region of the canvas, resized to
    the original size and thresholded (:func:`solo_tf.decoder.postprocess_image`).

    Args:
        detections: batched outputs of :func:`build_inference_model` /
            :func:`solo_tf.decoder.decode` (numpy or tensors): ``detection_masks``
            (B, K, H, W) soft masks on the canvas, ``detection_scores`` (B, K),
            ``detection_classes`` (B, K), ``num_detections`` (B,).
        valid_sizes: (B, 2) (h', w') of each resized image inside the canvas (top-left),
            as :func:`letterbox` and the pipeline's ``meta["valid_size"]`` give it.
        orig_sizes: (B, 2) (h0, w0) of each original image.
        mask_thr: threshold on the resized soft masks.
        class_names: optional names by class; adds ``labels`` to each result.

    Returns:
        list of B dicts: ``masks`` (m, h0, w0) bool, ``scores`` (m,) float32 descending,
        ``classes`` (m,) int32, ``boxes`` (m, 4) float32 x1 y1 x2 y2 in original pixels
        (x2, y2 exclusive), and ``labels`` (m,) names when ``class_names`` is given.
    """
    dets = {k: np.asarray(ops.convert_to_numpy(v)) for k, v in detections.items()}
    batch = dets["detection_masks"].shape[0]
    valid_sizes, orig_sizes = np.asarray(valid_sizes).reshape(-1, 2), np.asarray(orig_sizes).reshape(-1, 2)
    if len(valid_sizes) != batch or len(orig_sizes) != batch:
        raise ValueError(f"instances_from_detections: {batch} images but {len(valid_sizes)} valid sizes and "
                         f"{len(orig_sizes)} original sizes")
    out = []
    for b in range(batch):
        inst = postprocess_image({k: v[b] for k, v in dets.items()}, valid_sizes[b], orig_sizes[b], mask_thr=mask_thr)
        if class_names is not None:
            inst["labels"] = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in inst["classes"].tolist()]
        out.append(inst)
    return out


class Predictor:
    """Run a trained model on images of any size.

    Args:
        model: a :class:`solo_tf.model.SOLO` or a path to a ``.keras`` file.
        postprocess_config: decoder settings (default: the ones saved with the model).
        batch_size: images per forward pass.

    ``predict(images)`` returns one dict per image: ``masks`` (n, h, w) bool at the
    original size, ``scores`` (n,), ``classes`` (n,) int, ``labels`` (n,) class names,
    ``boxes`` (n, 4) x1 y1 x2 y2 in original pixels.
    """

    def __init__(self, model, postprocess_config=None, batch_size=4):
        if isinstance(model, (str, os.PathLike)):
            from solo_tf.io import load_model

            model = load_model(model)
        self.model = model
        self.postprocess_config = postprocess_config or model.postprocess_config
        self.batch_size = int(batch_size)
        self.inference_model = build_inference_model(model, self.postprocess_config)
        self.class_names = model.labels_config.names(model.model_config.num_classes)

    def predict(self, images):
        """Images (a list of (h, w, 3) RGB arrays of any sizes, or one array) -> one dict
        of instances per image (see the class docstring)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        results = []
        for start in range(0, len(images), self.batch_size):
            chunk = images[start : start + self.batch_size]
            boxed = [letterbox(im, self.model.model_config.image_size) for im in chunk]
            results += self.predict_canvases(
                np.stack([b[0] for b in boxed]), [b[1] for b in boxed], [np.asarray(im).shape[:2] for im in chunk]
            )
        return results

    __call__ = predict

    def predict_canvases(self, canvases, valid_sizes, orig_sizes=None):
        """Already letterboxed canvases (B, H, W, 3) RGB 0-255 (the pipeline's images with
        its ``meta``) -> one dict of instances per image at ``orig_sizes`` (default: the
        valid sizes, i.e. the resized image itself)."""
        dets = self.inference_model.predict_on_batch(np.asarray(canvases, np.float32))
        return instances_from_detections(
            dets, valid_sizes, valid_sizes if orig_sizes is None else orig_sizes,
            mask_thr=self.postprocess_config.mask_thr, class_names=self.class_names,
        )
