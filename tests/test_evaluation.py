"""COCO mask AP: perfect and empty predictions, GT rebuilt from targets, the dataset loop."""

import json

import numpy as np
import pytest

from conftest import tiny_model_config
from solo_tf.config import PostprocessConfig
from solo_tf.evaluation import (
    build_coco_gt,
    coco_mask_ap,
    evaluate_dataset,
    format_metrics,
    gt_from_targets,
    to_coco_results,
)


def _gt_images():
    rng = np.random.RandomState(0)
    images = []
    for iid in (3, 7):
        h, w = 50, 70
        masks = np.zeros((3, h, w), bool)
        classes = np.array([0, 2, 1])
        for m in masks:
            y, x = rng.randint(0, 30), rng.randint(0, 45)
            m[y : y + rng.randint(8, 20), x : x + rng.randint(8, 25)] = True
        images.append({"image_id": iid, "masks": masks, "classes": classes})
    return images


def test_ground_truth_as_predictions_gives_ap_one():
    images = _gt_images()
    gt = build_coco_gt(images)
    results = []
    for im in images:
        results += to_coco_results(im["image_id"], im["masks"], im["classes"], np.linspace(0.9, 0.5, 3))
    metrics = coco_mask_ap(gt, results)
    assert metrics["AP"] == pytest.approx(1.0) and metrics["AP50"] == pytest.approx(1.0)
    assert metrics["AP75"] == pytest.approx(1.0)
    assert "AP50" in format_metrics(metrics)


def test_wrong_class_or_empty_predictions_give_zero():
    images = _gt_images()
    gt = build_coco_gt(images, category_ids=[1, 2, 3])
    assert coco_mask_ap(gt, [])["AP"] == 0.0
    shifted = []
    for im in images:
        shifted += to_coco_results(im["image_id"], im["masks"], (im["classes"] + 1) % 3, [0.9, 0.8, 0.7],
                                   category_ids=[1, 2, 3])
    assert coco_mask_ap(gt, shifted)["AP"] == 0.0


def test_category_mapping_is_applied():
    images = _gt_images()
    gt = build_coco_gt(images, category_ids=[10, 20, 30])
    assert sorted(gt.getCatIds()) == [10, 20, 30]
    res = to_coco_results(3, images[0]["masks"], images[0]["classes"], [0.9, 0.8, 0.7], category_ids=[10, 20, 30])
    assert [r["category_id"] for r in res] == [10, 30, 20]
    with pytest.raises(ValueError, match="category_ids"):
        to_coco_results(3, images[0]["masks"], [5, 0, 0], [1, 1, 1], category_ids=[10, 20, 30])


def test_gt_from_targets_is_at_the_original_size():
    # A 60 x 90 image letterboxed into 64 x 96 (scale 1.0667 -> valid 64 x 96); stride-4 target.
    y_masks = np.zeros((4, 16, 24), np.uint8)
    y_masks[0, 4:8, 6:12] = 1
    y_classes = np.array([1, -1, -1, -1])
    masks, classes = gt_from_targets(y_masks, y_classes, (64, 96), (60, 90))
    assert masks.shape == (1, 60, 90) and classes.tolist() == [1]
    ys, xs = np.nonzero(masks[0])
    assert abs(ys.min() - 16 * 60 / 64) <= 1 and abs(xs.max() + 1 - 48 * 90 / 96) <= 1


class _Oracle:
    """Predicts the ground truth of the batch it is given (looked up by the image content)."""

    def __init__(self, table, k=4):
        self.table, self.k = table, k

    def predict_on_batch(self, images):
        out = {"detection_masks": [], "detection_scores": [], "detection_classes": [], "num_detections": []}
        for im in images:
            masks, classes = self.table[int(im[0, 0, 0])]
            n = len(classes)
            canvas = np.zeros((self.k, 64, 64), np.float32)
            canvas[:n] = np.repeat(np.repeat(masks, 4, 1), 4, 2)
            out["detection_masks"].append(canvas)
            out["detection_scores"].append(np.pad(np.full(n, 0.9, np.float32), (0, self.k - n)))
            out["detection_classes"].append(np.pad(classes, (0, self.k - n), constant_values=-1))
            out["num_detections"].append(n)
        return {k: np.stack(v) for k, v in out.items()}


def _batches():
    rng = np.random.RandomState(1)
    table, batches = {}, []
    for b in range(2):
        images = np.zeros((2, 64, 64, 3), np.float32)
        masks = np.zeros((2, 3, 16, 16), np.uint8)
        classes = np.full((2, 3), -1, np.int32)
        for i in range(2):
            key = 2 * b + i
            images[i, 0, 0, 0] = key
            for j in range(2):
                y, x = rng.randint(0, 10), rng.randint(0, 10)
                masks[i, j, y : y + 5, x : x + 6] = 1
                classes[i, j] = rng.randint(0, 3)
            table[key] = (masks[i, :2].astype(np.float32), classes[i, :2])
        meta = {"image_id": np.array([10 + 2 * b, 11 + 2 * b]), "orig_size": np.array([[56, 61], [64, 64]]),
                "valid_size": np.array([[60, 64], [64, 64]]), "scale": np.ones(2, np.float32)}
        batches.append((images, {"masks": masks, "classes": classes}, meta))
    return table, batches


def test_evaluate_dataset_oracle_scores_one(tmp_path):
    table, batches = _batches()
    cfg = tiny_model_config("solov2", image_size=(64, 64))
    report = evaluate_dataset(_Oracle(table), batches, cfg, PostprocessConfig(),
                              results_path=tmp_path / "res.json", metrics_path=tmp_path / "m.json")
    assert report["AP"] == pytest.approx(1.0)
    assert report["num_images"] == 4 and report["num_detections"] == 8
    res = json.loads((tmp_path / "res.json").read_text())
    assert len(res) == 8 and {r["image_id"] for r in res} == {10, 11, 12, 13}
    assert json.loads((tmp_path / "m.json").read_text())["AP"] == pytest.approx(1.0)
    assert not list(tmp_path.glob("*.tmp"))


def test_evaluate_dataset_with_untrained_model_runs():
    from solo_tf.model import build_model

    _, batches = _batches()
    cfg = tiny_model_config("solov2", image_size=(64, 64))
    report = evaluate_dataset(build_model(cfg), batches[:1], cfg, PostprocessConfig(max_per_img=10))
    assert report["num_images"] == 2 and 0.0 <= report["AP"] <= 1.0


def test_evaluate_dataset_rejects_batches_without_meta():
    cfg = tiny_model_config("solov2", image_size=(64, 64))
    with pytest.raises(ValueError, match="with_meta"):
        evaluate_dataset(_Oracle({}), [(np.zeros((1, 64, 64, 3)), {})], cfg, PostprocessConfig())
