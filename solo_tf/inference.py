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
  masks back to each original image. :meth:`Predictor.stream` does the same for what a
  person points it at (files, folders, globs, videos, cameras, streams;
  :mod:`solo_tf.media`), one frame at a time, decoding ahead in a reader thread.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping, Sequence

import keras
import numpy as np
from keras import ops

from solo_tf import preprocess
from solo_tf.decoder import SOLODecoder, postprocess_image
from solo_tf.saving import load_model
from solo_tf.zoo import resolve_model


def build_inference_model(model, postprocess_config=None, canvas=None, full_size_masks=True,
                          raw_outputs=False) -> keras.Model:
    """One graph: images (B, H, W, 3) RGB 0-255 -> fixed-size detections; the one way to
    put a network on a canvas (Predictor, evaluation and every export format build theirs here).

    ``canvas`` (H, W): default ``model.image_size``; one of ``model.canvases`` (the
    transposed canvas of a model with ``model.portrait_canvas``) runs that canvas's graph;
    any other (positive multiples of 32) a graph of the model's own layers on it, every
    weight shared (:meth:`solo_tf.model.SOLO.graph_on`). ``full_size_masks=False``:
    ``detection_masks`` stay at stride 4, (B, K, H/4, W/4) (:func:`instances_from_detections`
    upsamples the filled slots alone). ``raw_outputs=True``: the raw head outputs, no
    decoder (``postprocess_config`` and ``full_size_masks`` unused)."""
    canvas = tuple(int(v) for v in (model.canvases[0] if canvas is None else canvas))
    graph = model.graph_on(canvas)
    images = keras.Input(shape=(*canvas, 3), name="images")
    suffix = "" if canvas == tuple(model.canvases[0]) else f"_{canvas[0]}x{canvas[1]}"
    if raw_outputs:
        return keras.Model(images, graph(images), name=f"{model.name}_raw{suffix}")
    config = model.variant.with_canvas(canvas).model_config
    detections = SOLODecoder(config, postprocess_config, full_size_masks, name="decoder")(graph(images))
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


@dataclasses.dataclass
class FrameResult:
    """One frame of :meth:`Predictor.stream`.

    ``name``: its source as named (the image or video path, ``camera 0``, the URL);
    ``frame_index``: its number in its video (None for an image file); ``image``: the
    (h, w, 3) uint8 RGB frame; ``instances``: as :meth:`Predictor.predict` gives them;
    ``source``: the :class:`solo_tf.media.Source` (``kind``, ``stem``, ``frames``);
    ``fps``: the video's frame rate (None for an image file, or unknown)."""

    name: str
    frame_index: int | None
    image: np.ndarray
    instances: dict
    source: object
    fps: float | None = None


@dataclasses.dataclass
class _Batch:  # frames letterboxed onto one canvas for the network (made in the reader thread)
    frames: list
    pixels: np.ndarray  # (n, H, W, 3) float32
    valid_sizes: list


class Predictor:
    """Run a trained model on images of any size.

    Args:
        model: a :class:`solo_tf.model.SOLO`, a path to a ``.keras`` file, or a zoo name
            (``solo-tf models``; downloaded and converted on first use).
        postprocess_config: decoder settings (default: the ones saved with the model).
        batch_size: images per forward pass.
        image_size: (H, W) network canvas to letterbox onto instead of the model's
            ``image_size`` (positive multiples of 32; with the model's ``portrait_canvas``,
            its transpose for images oriented the other way): a zoo model's default is its
            published test scale, this runs another. The weights are the model's own.

    ``predict(images)`` returns one dict per image: ``masks`` (n, h, w) bool at the
    original size, ``scores`` (n,), ``classes`` (n,) int, ``labels`` (n,) class names,
    ``boxes`` (n, 4) x1 y1 x2 y2 in original pixels. ``stream(source)`` yields one
    :class:`FrameResult` per frame of files, folders, globs, videos, cameras or streams.
    """

    def __init__(self, model, postprocess_config=None, batch_size=4, image_size=None):
        if isinstance(model, (str, os.PathLike)):
            model = load_model(resolve_model(model))  # a zoo name: its cached .keras
        self.model = model
        # the canvases images are letterboxed onto (ModelConfig.canvas_for)
        self.canvas_config = model.model_config
        if image_size is not None:
            self.canvas_config = dataclasses.replace(model.model_config, image_size=tuple(int(v) for v in image_size))
            self.canvas_config.validate()
        self.postprocess_config = postprocess_config or model.postprocess_config
        self.batch_size = int(batch_size)
        self.inference_models = InferenceModels(model, self.postprocess_config)
        self.class_names = model.labels_config.names(model.model_config.num_classes)

    @property
    def inference_model(self):
        """The inference graph of the first canvas (``image_size``, else the model's)."""
        return self.inference_models[self.canvas_config.canvases[0]]

    def predict(self, images):
        """Images (a list of (h, w, 3) RGB arrays of any sizes, or one array) -> one dict
        of instances per image (see the class docstring). Each image is letterboxed onto
        the canvas of its orientation (:meth:`~solo_tf.config.ModelConfig.canvas_for`, of
        ``image_size`` when given)."""
        if isinstance(images, np.ndarray) and images.ndim == 3:
            images = [images]
        images = [np.asarray(im) for im in images]
        for i, im in enumerate(images):
            if im.ndim != 3 or im.shape[-1] != 3:
                raise ValueError(f"image {i}: expected an RGB image of shape (h, w, 3), got {im.shape}")
        by_canvas = {}  # canvas -> indices of the images letterboxed onto it, in order
        for i, im in enumerate(images):
            by_canvas.setdefault(self.canvas_config.canvas_for(*im.shape[:2]), []).append(i)
        results = [None] * len(images)
        for canvas, indices in by_canvas.items():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                # the training pipeline's resize (solo_tf.preprocess.letterbox), on the host
                boxed = [preprocess.letterbox(images[i], canvas) for i in chunk]
                found = self.predict_canvases(
                    np.stack([ops.convert_to_numpy(b.canvas) for b in boxed]), [b.valid_size for b in boxed],
                    [images[i].shape[:2] for i in chunk],
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

    def stream(self, source, *, skipped=None, progress=False, prefetch=None) -> Iterator[FrameResult]:
        """Instances for every frame of what ``source`` names, one :class:`FrameResult` at a
        time, in order; nothing holds more than a few batches of frames.

        Args:
            source: one or a list of: image files, folders, globs, video files, a camera
                index, a stream URL (:func:`solo_tf.media.expand_sources`).
            skipped: a :class:`solo_tf.media.SkipLog` that collects what could not be read
                (named, with a reason; the run goes on). Default: one that prints each
                skip to stderr.
            progress: a tqdm progress bar on stderr (True), none (False), or one only when
                stderr is a terminal (None). Its total is known for files and for videos
                whose header gives a frame count.
            prefetch: frames decoded and letterboxed ahead, in a reader thread, while the
                network runs (default ``2 * batch_size``; whole batches).

        Frames go through the network ``batch_size`` at a time; a batch holds frames of one
        canvas (one orientation), so it is cut short where the canvas changes; for a camera
        or stream it is also cut short whenever the network would otherwise wait (latency
        over batching). Sources that do not exist raise ``FileNotFoundError`` now, before any
        frame is read; the frames are read as the result is iterated. Leaving the loop
        (``break``, Ctrl-C) stops the reader.
        """
        from solo_tf import media
        from solo_tf.console import log_line

        if skipped is None:
            skipped = media.SkipLog(log=lambda line: log_line(f"solo-tf: {line}"))
        sources = media.expand_sources(source, skipped)
        ahead = int(prefetch) if prefetch else 2 * self.batch_size
        return self._stream(sources, skipped, progress, ahead)

    def _stream(self, sources, skipped, progress, ahead):
        from tqdm.auto import tqdm

        from solo_tf import media

        bar = tqdm(total=media.count_frames(sources), unit="frame", disable=None if progress is None else not progress,
                   dynamic_ncols=True, leave=False)
        # batches are formed and letterboxed in the reader thread, ahead of the network
        batches = media.Prefetch(size=max(1, ahead // self.batch_size))
        batches.start(self._batches(media.read_frames(sources, skipped), batches))
        try:
            for batch in batches:
                yield from self._run_batch(batch, bar)
        finally:
            batches.close()
            bar.close()

    def _batches(self, frames, prefetch):
        """Frames -> :class:`_Batch` of up to ``batch_size`` frames of one canvas. A batch is
        cut short where the canvas changes, at the end, and for a camera or stream whenever
        the network is waiting (``prefetch`` is empty): latency over batching."""
        pending, canvas = [], None
        for frame in frames:
            size = tuple(self.canvas_config.canvas_for(*frame.image.shape[:2]))
            if pending and size != canvas:
                yield self._letterboxed(pending, canvas)
                pending = []
            pending.append(frame)
            canvas = size
            if len(pending) == self.batch_size or (frame.source.live and not prefetch.ready()):
                yield self._letterboxed(pending, canvas)
                pending = []
        if pending:
            yield self._letterboxed(pending, canvas)

    @staticmethod
    def _letterboxed(frames, canvas):
        # one letterbox call per run of same-size frames (a video's, a folder of one size)
        pixels = np.empty((len(frames), *canvas, 3), np.float32)
        valid_sizes, i = [], 0
        while i < len(frames):
            shape = frames[i].image.shape
            j = i + 1
            while j < len(frames) and frames[j].image.shape == shape:
                j += 1
            boxed = preprocess.letterbox(np.stack([f.image for f in frames[i:j]]), canvas)
            pixels[i:j] = ops.convert_to_numpy(boxed.canvas)
            valid_sizes += [tuple(int(v) for v in boxed.valid_size)] * (j - i)
            i = j
        return _Batch(frames, pixels, valid_sizes)

    def _run_batch(self, batch, bar):
        # A short batch (the last one, a canvas change, a live source) is padded with blank
        # canvases to batch_size: one batch shape, so the graph is traced once, not again.
        n, pixels = len(batch.frames), batch.pixels
        if n < self.batch_size:
            pixels = np.concatenate([pixels, np.zeros((self.batch_size - n, *pixels.shape[1:]), np.float32)])
        dets = self.inference_models.predict_on_batch(pixels)
        dets = {k: np.asarray(ops.convert_to_numpy(v))[:n] for k, v in dets.items()}
        found = instances_from_detections(
            dets, batch.valid_sizes, [f.image.shape[:2] for f in batch.frames], mask_thr=self.postprocess_config.mask_thr,
            class_names=self.class_names, canvas_size=pixels.shape[1:3],
        )
        for f, instances in zip(batch.frames, found):
            bar.update(1)
            yield FrameResult(f.source.name, f.index, f.image, instances, f.source, f.fps)
