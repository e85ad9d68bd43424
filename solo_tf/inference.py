"""Inference: images of any size in, per-image instances out.

* :class:`SOLODecoder` wraps :func:`solo_tf.decoder.decode` as a Keras layer, so
  :func:`build_inference_model` is one functional graph (raw images -> fixed-size
  detections) that predicts, saves and exports as it is.
* :func:`instances_from_detections` is the one per-image post-processing path: a batch of
  fixed-size detections on the canvas + each image's letterbox geometry -> each image's
  instances at its original size. :class:`Predictor`, the demo and
  :func:`solo_tf.evaluation.evaluate_dataset` all go through it.
* :class:`Predictor` letterboxes images of any size into the model's canvas (of their
  orientation, with ``model.portrait_canvas``), runs that graph in batches, and maps the
  masks back to each original image.
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

    def __init__(self, model_config, postprocess_config=None, full_size_masks=True, **kwargs):
        super().__init__(**kwargs)
        self.full_size_masks = bool(full_size_masks)
        self.model_config = (
            model_config if isinstance(model_config, ModelConfig) else section_from_dict(ModelConfig, model_config, "model")
        )
        pc = postprocess_config if postprocess_config is not None else PostprocessConfig()
        self.postprocess_config = (
            pc if isinstance(pc, PostprocessConfig) else section_from_dict(PostprocessConfig, pc, "postprocess")
        )

    def call(self, outputs):
        return decode(outputs, self.model_config, self.postprocess_config, full_size_masks=self.full_size_masks)

    def get_config(self):
        config = super().get_config()
        config.update(
            model_config=dataclasses.asdict(self.model_config),
            postprocess_config=dataclasses.asdict(self.postprocess_config),
            full_size_masks=self.full_size_masks,
        )
        return config


def build_inference_model(model, postprocess_config=None, canvas=None, full_size_masks=True) -> keras.Model:
    """One graph: images (B, H, W, 3) RGB 0-255 -> fixed-size detections.

    ``canvas`` (H, W): one of ``model.canvases`` (default ``model.image_size``; the
    transposed canvas of a model with ``model.portrait_canvas``). ``full_size_masks=False``:
    ``detection_masks`` stay at stride 4, (B, K, H/4, W/4) (:func:`instances_from_detections`
    upsamples the filled slots alone)."""
    canvas = tuple(int(v) for v in (model.canvases[0] if canvas is None else canvas))
    graph = model.graph_for(canvas)  # raises for a canvas the model does not have
    images = keras.Input(shape=(*canvas, 3), name="images")
    config = dataclasses.replace(model.model_config, image_size=canvas)
    detections = SOLODecoder(config, postprocess_config, full_size_masks, name="decoder")(graph(images))
    suffix = "" if canvas == tuple(model.canvases[0]) else f"_{canvas[0]}x{canvas[1]}"
    return keras.Model(images, detections, name=f"{model.name}_inference{suffix}")


class InferenceModels:
    """:func:`build_inference_model` of each of a model's canvases, built when first asked
    for: ``models.predict_on_batch(canvases)`` runs the graph of the batch's canvas. The
    graphs keep the masks at stride 4 (``full_size_masks=False``; the host upsamples the
    filled slots alone, :func:`instances_from_detections`)."""

    def __init__(self, model, postprocess_config=None, full_size_masks=False):
        self.model = model
        self.postprocess_config = postprocess_config
        self.full_size_masks = full_size_masks
        self._built = {}

    def __getitem__(self, canvas):
        canvas = tuple(int(v) for v in canvas)
        if canvas not in self._built:
            self._built[canvas] = build_inference_model(self.model, self.postprocess_config, canvas,
                                                        full_size_masks=self.full_size_masks)
        return self._built[canvas]

    def predict_on_batch(self, canvases):
        canvases = np.asarray(canvases, np.float32)
        return self[canvases.shape[1:3]].predict_on_batch(canvases)


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
                              class_names: Sequence[str] | None = None, canvas_size=None) -> list[dict]:
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
        canvas_size: (H, W) of the canvas, needed when ``detection_masks`` are at stride 4
            (``full_size_masks=False``): the filled slots are upsampled here.

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
        inst = postprocess_image({k: v[b] for k, v in dets.items()}, valid_sizes[b], orig_sizes[b], mask_thr=mask_thr,
                                 canvas_size=canvas_size)
        if class_names is not None:
            inst["labels"] = [class_names[c] if 0 <= c < len(class_names) else str(c) for c in inst["classes"].tolist()]
        out.append(inst)
    return out


class Predictor:
    """Run a trained model on images of any size.

    Args:
        model: a :class:`solo_tf.model.SOLO`, a path to a ``.keras`` file, or a zoo name
            (``solo-tf models``; downloaded and converted on first use).
        postprocess_config: decoder settings (default: the ones saved with the model).
        batch_size: images per forward pass.

    ``predict(images)`` returns one dict per image: ``masks`` (n, h, w) bool at the
    original size, ``scores`` (n,), ``classes`` (n,) int, ``labels`` (n,) class names,
    ``boxes`` (n, 4) x1 y1 x2 y2 in original pixels.
    """

    def __init__(self, model, postprocess_config=None, batch_size=4):
        if isinstance(model, (str, os.PathLike)):
            from solo_tf.io import load_model
            from solo_tf.zoo import resolve_model

            model = load_model(resolve_model(model))  # a zoo name: its cached .keras
        self.model = model
        self.postprocess_config = postprocess_config or model.postprocess_config
        self.batch_size = int(batch_size)
        self.inference_models = InferenceModels(model, self.postprocess_config)
        self.class_names = model.labels_config.names(model.model_config.num_classes)

    @property
    def inference_model(self):
        """The inference graph of the model's canvas ``model.image_size``."""
        return self.inference_models[self.model.canvases[0]]

    def predict(self, images):
        """Images (a list of (h, w, 3) RGB arrays of any sizes, or one array) -> one dict
        of instances per image (see the class docstring). Each image is letterboxed onto
        the canvas of its orientation (:meth:`~solo_tf.config.ModelConfig.canvas_for`)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        by_canvas = {}  # canvas -> indices of the images letterboxed onto it, in order
        for i, im in enumerate(images):
            by_canvas.setdefault(self.model.model_config.canvas_for(*np.asarray(im).shape[:2]), []).append(i)
        results = [None] * len(images)
        for canvas, indices in by_canvas.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                boxed = [letterbox(images[i], canvas) for i in chunk]
                found = self.predict_canvases(
                    np.stack([b[0] for b in boxed]), [b[1] for b in boxed], [np.asarray(images[i]).shape[:2] for i in chunk]
                )
                for i, inst in zip(chunk, found):
                    results[i] = inst
        return results

    __call__ = predict

    def predict_canvases(self, canvases, valid_sizes, orig_sizes=None):
        """Already letterboxed canvases (B, H, W, 3) RGB 0-255 (the pipeline's images with
        its ``meta``) -> one dict of instances per image at ``orig_sizes`` (default: the
        valid sizes, i.e. the resized image itself)."""
        canvases = np.asarray(canvases, np.float32)
        dets = self.inference_models.predict_on_batch(canvases)
        return instances_from_detections(
            dets, valid_sizes, valid_sizes if orig_sizes is None else orig_sizes,
            mask_thr=self.postprocess_config.mask_thr, class_names=self.class_names, canvas_size=canvases.shape[1:3],
        )
