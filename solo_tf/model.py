"""The SOLO keras.Model: wiring, ``compute_loss`` and serialization.

One functional graph per variant: images (B, H, W, 3) RGB 0-255 in, the raw head outputs
out (a dict; the variant (:mod:`solo_tf.variants`) builds the heads). ``model.compile(optimizer)``
+ ``model.fit(ds)`` trains it: ``compute_loss`` calls the model's :class:`SOLOLoss`
(grid targets in-graph, or the grids the tf.data pipeline computed, then the focal and Dice
losses). The progress bar shows ``loss``, ``focal_loss`` and ``dice_loss``.
"""

from __future__ import annotations

import dataclasses

import keras
from keras import layers, ops

from solo_tf.backbones import (
    backbone_input_normalization,
    build_backbone,
    freeze_backbone,
)
from solo_tf.config import (
    CONFIG_VERSION,
    LabelsConfig,
    LossConfig,
    PostprocessConfig,
    as_section,
    migrate,
)
from solo_tf.decoder import MASK_STRIDE
from solo_tf.distribute import is_multi_worker, num_replicas
from solo_tf.fpn import FeaturePyramid
from solo_tf.losses import SOLOLoss
from solo_tf.variants import check_model_config, get_variant


def _apply(parts, variant, images):
    """The network on ``images`` of ``variant``'s canvas, from the layers in ``parts``."""
    pyramid = parts["fpn"](parts["backbone"](parts["normalize"](images)))
    raw = variant.apply_heads(parts["heads"], pyramid)
    return {k: layer(raw[k]) for k, layer in parts["outputs"].items()}


class _CanvasGraphs:
    """The graphs (and losses) of a model's further canvases, by canvas (H, W), and the
    layers (``parts``) and variant they are built from.

    A plain object, so Keras does not track the graphs as sub-models: their layers and
    weights are the model's own, saved once under the model's graph."""

    def __init__(self, parts, variant):
        self.parts, self.variant = parts, variant
        self.graphs, self.losses = {}, {}

    def build(self, canvas, name):
        """The model's layers on a canvas (H, W): a functional graph sharing every weight."""
        images = keras.Input(shape=(*canvas, 3), name="images")
        return keras.Model(images, _apply(self.parts, self.variant.with_canvas(canvas), images), name=name)

    def add(self, canvas, graph, loss):
        self.graphs[tuple(canvas)] = graph
        self.losses[tuple(canvas)] = loss


def _static_hw(x, axes=(1, 2)):
    """(h, w) of ``x`` along ``axes`` when both are known while tracing, else None."""
    hw = tuple(x.shape[a] for a in axes)
    return None if any(v is None for v in hw) else tuple(int(v) for v in hw)


@keras.saving.register_keras_serializable(package="solo_tf")
class SOLO(keras.Model):
    """SOLO / Decoupled SOLO / SOLOv2 instance segmentation model.

    Args:
        model_config: a :class:`solo_tf.config.ModelConfig` (or its dict form): architecture.
        loss_config: a :class:`solo_tf.config.LossConfig` (default: the paper's weights).
        labels_config: a :class:`solo_tf.config.LabelsConfig`: class names and dataset
            category ids, saved with the model.
        postprocess_config: a :class:`solo_tf.config.PostprocessConfig`: the decoder
            settings inference uses by default, saved with the model.

    Inputs: images (B, H, W, 3) float RGB 0-255, (H, W) = ``model_config.image_size``;
    normalisation (ImageNet mean/std) is inside the model.

    Outputs (dict of logits), level l:
        ``category_{l}`` (B, S, S, C) for every variant, and
        SOLOv2: ``kernel_{l}`` (B, S, S, E), ``mask_feature`` (B, H/4, W/4, E);
        SOLO: ``mask_{l}`` (B, 2H/stride, 2W/stride, S^2);
        Decoupled SOLO: ``mask_x_{l}``, ``mask_y_{l}`` (B, 2H/stride, 2W/stride, S).

    Ground truth ``y`` for ``fit``: dict ``classes`` (B, N) int (-1 padding), ``boxes``
    (B, N, 4), ``masks`` (B, N, H/4, W/4) 0/1, ``centers`` (B, N, 2) (x, y); optionally
    ``grid_category_{l}`` / ``grid_owner_{l}`` (B, S, S) computed by the pipeline.
    """

    def __init__(self, model_config, loss_config=None, labels_config=None, postprocess_config=None, **kwargs):
        cfg = check_model_config(model_config)
        loss_cfg = as_section(LossConfig, loss_config, "loss")
        loss_cfg.validate()
        labels_cfg = as_section(LabelsConfig, labels_config, "labels")
        labels_cfg.validate(cfg.num_classes)
        post_cfg = as_section(PostprocessConfig, postprocess_config, "postprocess")
        post_cfg.validate()
        h, w = cfg.image_size
        variant = get_variant(cfg)

        canvases = cfg.canvases  # (H, W), and (W, H) with model.portrait_canvas

        # --- layers: created once; every canvas's graph applies the same ones ---
        mean, std = backbone_input_normalization(cfg.backbone)  # what the backbone's weights expect
        parts = {"normalize": layers.Normalization(mean=mean, variance=[v * v for v in std], axis=-1, name="normalize")}
        # a backbone serving two canvases takes any size (each graph still has static shapes)
        backbone_shape = (h, w, 3) if len(canvases) == 1 else (None, None, 3)
        parts["backbone"] = build_backbone(cfg.backbone, backbone_shape, weights=cfg.backbone_weights)
        # the graph of any other canvas applies it too (graph_on: export at another size)
        parts["backbone"].input_spec = layers.InputSpec(ndim=4, axes={-1: 3})
        # the reference's norm_eval / frozen_stages (on by default for a pretrained backbone)
        freeze_backbone(parts["backbone"], cfg.effective_norm_eval, cfg.effective_frozen_stages)
        parts["fpn"] = FeaturePyramid(cfg.fpn_channels, name="fpn")
        parts["heads"] = variant.build_heads()
        parts["outputs"] = {k: layers.Identity(name=k, dtype="float32") for k in sorted(variant.output_names())}

        # --- functional graph of the canvas (H, W) ---
        images = keras.Input(shape=(h, w, 3), name="images")
        super().__init__(inputs=images, outputs=_apply(parts, variant, images), **kwargs)
        # the transposed canvas: the same layers on a second input, a graph kept out of
        # Keras' tracking (its weights are this model's; it is rebuilt from the config on load)
        self._canvas_graphs = _CanvasGraphs(parts, variant)
        for canvas in canvases[1:]:
            graph = self._canvas_graphs.build(canvas, name=f"{self.name}_{canvas[0]}x{canvas[1]}")
            loss = SOLOLoss(variant.with_canvas(canvas).model_config, loss_cfg, name="solo_loss_t")
            self._canvas_graphs.add(canvas, graph, loss)
        if len(canvases) > 1:
            self.input_spec = keras.layers.InputSpec(ndim=4, axes={-1: 3})

        # --- config, loss and loss trackers ---
        self.variant = variant
        self.model_config = cfg
        self.loss_config = loss_cfg
        self.labels_config = labels_cfg
        self.postprocess_config = post_cfg
        self.solo_loss = SOLOLoss(cfg, loss_cfg, name="solo_loss")
        self.focal_loss_tracker = keras.metrics.Mean(name="focal_loss")
        self.dice_loss_tracker = keras.metrics.Mean(name="dice_loss")
        # positives without a Dice slot (loss.max_positives), summed over the epoch
        self.dice_overflow_tracker = keras.metrics.Sum(name="dice_overflow")

    # --- canvases ---------------------------------------------------------------------------
    @property
    def canvases(self):
        """The model's static input canvases (H, W): ``model.image_size``, then the transposed
        one with ``model.portrait_canvas`` (:attr:`solo_tf.config.ModelConfig.canvases`)."""
        return self.model_config.canvases

    def graph_for(self, canvas):
        """The functional graph of one canvas (H, W): the model itself for
        ``model.image_size``, a graph sharing all its weights for the transposed canvas."""
        canvas = tuple(int(v) for v in canvas)
        if canvas == tuple(self.canvases[0]):
            return self
        if canvas in self._canvas_graphs.graphs:
            return self._canvas_graphs.graphs[canvas]
        raise ValueError(f"{self.name}: no graph for a {canvas[0]}x{canvas[1]} canvas; the model's canvases are "
                         f"{[f'{a}x{b}' for a, b in self.canvases]} (model.image_size, model.portrait_canvas)")

    def graph_on(self, canvas):
        """The network on any canvas (H, W), positive multiples of 32: :meth:`graph_for` one
        of the model's canvases; for another, a new graph of the model's own layers (every
        weight shared, nothing copied, nothing saved with the model). Through
        :func:`solo_tf.inference.build_inference_model`, export's ``image_size``."""
        canvas = tuple(int(v) for v in canvas)
        if canvas in {tuple(c) for c in self.canvases}:
            return self.graph_for(canvas)
        return self._canvas_graphs.build(canvas, name=f"{self.name}_{canvas[0]}x{canvas[1]}")

    def _loss_for(self, canvas):
        return self.solo_loss if canvas == tuple(self.canvases[0]) else self._canvas_graphs.losses[canvas]

    def call(self, inputs, training=None, mask=None):
        if len(self.canvases) == 1:
            return super().call(inputs, training=training, mask=mask)
        hw = _static_hw(inputs)
        if hw is not None:
            if hw == tuple(self.canvases[0]):
                return super().call(inputs, training=training, mask=mask)
            return self.graph_for(hw)(inputs, training=training)
        # A batch of either canvas whose size is known only at run time (a TensorFlow graph
        # traced for an orientation-grouped dataset): both graphs, one runs.
        (h, w), other = self.canvases

        def main():
            return super(SOLO, self).call(ops.reshape(inputs, (-1, h, w, 3)), training=training, mask=mask)

        def transposed():
            return self.graph_for(other)(ops.reshape(inputs, (-1, *other, 3)), training=training)

        return ops.cond(ops.shape(inputs)[1] == h, main, transposed)

    def compute_output_spec(self, inputs, training=None, mask=None):
        hw = _static_hw(inputs)
        if hw is not None and hw != tuple(self.canvases[0]) and len(self.canvases) > 1:
            return self.graph_for(hw).compute_output_spec(inputs, training=training)
        return super().compute_output_spec(inputs, training=training, mask=mask)

    def _loss_terms(self, y, y_pred):
        """:meth:`SOLOLoss.terms` of the batch's canvas (told by the stride-4 mask targets)."""
        if len(self.canvases) == 1:
            return self.solo_loss.terms(y, y_pred)
        hw = _static_hw(y["masks"], (2, 3))
        if hw is not None:
            return self._loss_for((hw[0] * MASK_STRIDE, hw[1] * MASK_STRIDE)).terms(y, y_pred)
        # canvas known only at run time (see call): the loss of each, one runs

        def terms_on(canvas):
            def fn():
                shapes = {k: tuple(v.shape[1:]) for k, v in self.graph_for(canvas).output.items()}
                pred = {k: ops.reshape(v, (-1, *shapes[k])) for k, v in y_pred.items()}
                masks = ops.reshape(y["masks"], (-1, y["masks"].shape[1], canvas[0] // MASK_STRIDE,
                                                 canvas[1] // MASK_STRIDE))
                return self._loss_for(canvas).terms(dict(y, masks=masks), pred)
            return fn

        main, other = self.canvases
        return ops.cond(ops.shape(y["masks"])[2] == main[0] // MASK_STRIDE, terms_on(main), terms_on(other))

    # ------------------------------------------------------------------------------------
    def get_config(self):
        model = dataclasses.asdict(self.model_config)
        if self.model_config.pretrained:
            # the saved weights replace the initial ones; keep the freezing those implied
            model["norm_eval"] = self.model_config.effective_norm_eval
            model["frozen_stages"] = self.model_config.effective_frozen_stages
            model["backbone_weights"] = None
            model["init_weights"] = None  # loaded once by solo_tf.tasks.train; the saved weights hold it
        return {
            "config_version": CONFIG_VERSION,
            "model_config": model,
            "loss_config": dataclasses.asdict(self.loss_config),
            "labels_config": dataclasses.asdict(self.labels_config),
            "postprocess_config": dataclasses.asdict(self.postprocess_config),
            "name": self.name,
            "trainable": self.trainable,
        }

    @classmethod
    def from_config(cls, config):
        """Rebuild from :meth:`get_config`; configs of older versions are migrated first
        (version 1 kept loss weights, labels and max_instances inside ``model_config``)."""
        config = dict(config)
        version = config.pop("config_version", 1)
        sections = migrate(
            {"version": version, "model": config.pop("model_config"), "loss": config.pop("loss_config", None),
             "labels": config.pop("labels_config", None)},
            "saved model config",
        )
        return cls(
            sections["model"], sections.get("loss"), sections.get("labels"),
            config.pop("postprocess_config", None), **config,
        )

    # ------------------------------------------------------------------------------------
    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        terms = self._loss_terms(y, y_pred)
        focal, dice = terms["focal"], terms["dice"]
        # under tf.distribute each replica holds its share of the global loss and the
        # trackers' sums are read across replicas: scale the shares so the mean is the whole
        replicas = float(num_replicas())
        self.focal_loss_tracker.update_state(focal * replicas)
        self.dice_loss_tracker.update_state(dice * replicas)
        self.dice_overflow_tracker.update_state(terms["overflow"])
        total = focal + dice
        if self.losses:
            total = total + ops.sum(ops.stack([ops.cast(v, "float32") for v in self.losses]))
        return total

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight=sample_weight)
        if is_multi_worker():
            # Keras 3.15 reduces each step's logs across workers with reduce("MEAN", axis=0),
            # which fails for scalars under MultiWorkerMirroredStrategy: give it (1,) values
            # (the mean over axis 0 is the same number)
            logs = {k: ops.reshape(v, (1,)) for k, v in logs.items()}
        return logs

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        # Keras' TensorFlow trainer, under a tf.distribute strategy, reduces the first batch
        # across replicas to build what is still unbuilt. Under MultiWorkerMirroredStrategy
        # with one device per worker that reduce fails (Keras 3.15 / TF 2.21: "Attempt to
        # convert a value (PerReplica...)"). The graph is built at construction and
        # solo_tf.tasks.train builds the optimizer inside the strategy's scope, so when
        # both are built there is nothing to build and the reduce is skipped.
        if self.built and self.optimizer is not None and self.optimizer.built:
            return None
        return super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)


def build_model(config) -> SOLO:
    """Build a :class:`SOLO` from a whole :class:`solo_tf.config.Config` (all its model-side
    sections) or from a ModelConfig / its dict form (default loss, labels, post-processing)."""
    if hasattr(config, "model"):
        return SOLO(config.model, config.loss, config.labels, config.postprocess)
    return SOLO(config)
