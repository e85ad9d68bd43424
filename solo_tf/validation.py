"""Validation AP during training: the :class:`ValidationAP` callback (``train.val_every``).

Every ``every`` epochs (and after the last) it runs the model's inference graph on the
validation split, scores it with COCOeval (:func:`solo_tf.evaluation.evaluate_dataset`) and
puts ``val_mask_AP``, ``val_mask_AP50`` and ``val_box_AP`` into the epoch's logs, where
the CSVLogger (``history.csv``) and TensorBoard callbacks after it pick them up; epochs
without a validation run log NaN, so every row of ``history.csv`` has the columns. The best
epoch by mask AP is saved as ``best.keras`` beside the run's ``model.keras``.

It also watches for the class-confusion trap (a model that learns masks but whose classes
never match the ground truth: WXinlong/SOLO#159): validation AP stuck at zero while the
training loss falls is said in the log, with what the detections look like.
"""

from __future__ import annotations

import math
from pathlib import Path

import keras
import numpy as np

from solo_tf.console import log_line
from solo_tf.evaluation import evaluate_dataset
from solo_tf.inference import InferenceModels
from solo_tf.saving import save_model

COLUMNS = {"val_mask_AP": "AP", "val_mask_AP50": "AP50", "val_box_AP": "box_AP"}  # log key -> report key


class ValidationAP(keras.callbacks.Callback):
    """COCO mask and box AP on the validation split every ``every`` epochs.

    Args:
        dataset: batches ``(images, y, meta)`` of the validation split
            (:func:`solo_tf.data.pipeline.prepare` with ``with_meta=True``); iterated anew
            at every evaluation.
        coco_gt: the pycocotools COCO ground truth of those images.
        postprocess: the decoder settings (:class:`solo_tf.config.PostprocessConfig`).
        every: evaluate after epochs ``every``, ``2 * every``, ... and after the last one.
        best_path: where the best model by mask AP is saved (None: not saved).
        category_ids, class_names: the model's class -> dataset id map and names.
        log: a function taking one line of text (default stderr).
    """

    def __init__(self, dataset, coco_gt, postprocess, every=1, best_path=None, category_ids=None,
                 class_names=None, log=None):
        super().__init__()
        if int(every) < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        self.dataset = dataset
        self.coco_gt = coco_gt
        self.postprocess = postprocess
        self.every = int(every)
        self.best_path = None if best_path is None else Path(best_path)
        self.category_ids = category_ids
        self.class_names = class_names
        self.log = log or log_line
        self.best_ap = -math.inf
        self.best_epoch = None
        self.evaluations = []  # (epoch (1-based), mask AP, training loss, report)
        self._graphs = None
        self._warned = False

    def _due(self, epoch):
        last = (self.params or {}).get("epochs")
        return (epoch + 1) % self.every == 0 or (last is not None and epoch + 1 == last)

    def on_epoch_end(self, epoch, logs=None):
        logs = logs if logs is not None else {}
        if not self._due(epoch):
            logs.update({k: float("nan") for k in COLUMNS})
            return
        if self._graphs is None:  # one inference graph per canvas, sharing the training weights
            self._graphs = InferenceModels(self.model, self.postprocess)
        report = evaluate_dataset(self._graphs, self.dataset, self.model.model_config, self.postprocess,
                                  category_ids=self.category_ids, class_names=self.class_names,
                                  coco_gt=self.coco_gt)
        logs.update({k: float(report[v]) for k, v in COLUMNS.items()})
        ap = float(report["AP"])
        self.evaluations.append((epoch + 1, ap, logs.get("loss"), report))
        line = (f"  validation (epoch {epoch + 1}, {report['num_images']} images): mask AP {100 * ap:.1f}, "
                f"AP50 {100 * report['AP50']:.1f}, box AP {100 * report['box_AP']:.1f}")
        if ap > self.best_ap:
            self.best_ap, self.best_epoch = ap, epoch + 1
            if self.best_path is not None:
                save_model(self.model, self.best_path)
                line += f"; best so far -> {self.best_path.name}"
        self.log(line)
        self._check_class_confusion(report)

    def _check_class_confusion(self, report):
        """Say so when mask AP stays at zero over two or more evaluations while the loss fell."""
        if self._warned or len(self.evaluations) < 2:
            return
        aps = [a for _, a, _, _ in self.evaluations]
        losses = [loss for _, _, loss, _ in self.evaluations if loss is not None and np.isfinite(loss)]
        if max(aps) > 1e-4 or len(losses) < 2 or not losses[-1] < 0.9 * losses[0]:
            return
        self._warned = True
        confusion = np.asarray(report["confusion"]["matrix"])
        labels = report["confusion"]["labels"]
        predicted = confusion[:, :-1].sum(axis=0)  # detections (score >= the matrix's threshold) by class
        truth = confusion[:-1, :].sum(axis=1)
        what = (f"{report['num_detections']} detections; classes predicted (score >= "
                f"{report['confusion']['score_thr']:g}): "
                + (", ".join(f"{labels[c]} {int(n)}" for c, n in enumerate(predicted) if n) or "none")
                + "; in the ground truth: " + ", ".join(f"{labels[c]} {int(n)}" for c, n in enumerate(truth) if n))
        self.log(f"[solo-tf] warning: validation mask AP is 0 after {len(aps)} evaluations while the training "
                 f"loss fell from {losses[0]:.3f} to {losses[-1]:.3f}. The masks may be learned while the "
                 f"classes never match: check model.num_classes and the data's category ids / class names "
                 f"against the model's ({what}).")
