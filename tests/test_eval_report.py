"""Evaluation people can act on: box AP beside mask AP, per-class AP, the PR and confusion
pictures, the worst and best images; validation AP during training with best.keras kept;
--set overrides."""

import csv
import json

import numpy as np
import pytest

from conftest import TINY_CANVAS, TINY_CATEGORY_IDS, TINY_CLASS_NAMES, tiny_model_config
from solo_tf.config import Config, ConfigError, DataConfig, TrainConfig
from solo_tf.data.shapes import ShapesSourceConfig


def _shapes_config(num_val=6, **train):
    return Config(
        name="tiny_eval",
        model=tiny_model_config("solov2", image_size=TINY_CANVAS, num_classes=len(TINY_CLASS_NAMES)),
        data=DataConfig(max_instances=6, flip=False, shapes=ShapesSourceConfig(
            num_train=8, num_val=num_val, image_size=TINY_CANVAS, max_objects=3, object_size=(0.3, 0.6))),
        train=TrainConfig(**dict(dict(epochs=2, batch_size=4, warmup_iters=2, decay_epochs=(1,)), **train)),
    )


# --- matching predictions to ground truth ----------------------------------------------------------
def _square(h, w, y0, x0, size):
    m = np.zeros((h, w), np.uint8)
    m[y0:y0 + size, x0:x0 + size] = 1
    return m


def test_match_instances_counts_matches_confusions_misses_and_false_positives():
    from solo_tf.evaluation import _coco_dt, build_coco_gt, match_instances, to_coco_results

    h = w = 40
    a, b, c = _square(h, w, 0, 0, 10), _square(h, w, 20, 20, 10), _square(h, w, 0, 25, 8)
    gt = build_coco_gt([{"image_id": 1, "masks": np.stack([a, b, c]), "classes": np.array([0, 1, 1])},
                        {"image_id": 2, "masks": np.zeros((0, h, w)), "classes": np.zeros(0), "height": h,
                         "width": w}], category_ids=[5, 7])
    results = (to_coco_results(1, np.stack([a, b, _square(h, w, 30, 0, 6), a]), [0, 0, 1, 1], [0.9, 0.8, 0.7, 0.2],
                               category_ids=[5, 7])  # a right; b as the wrong class; a false positive; below 0.3
               + to_coco_results(2, _square(h, w, 5, 5, 5)[None], [1], [0.95], category_ids=[5, 7]))
    out = match_instances(gt, _coco_dt(gt, results), 2, category_ids=[5, 7], iou_thr=0.5, score_thr=0.3)
    # rows ground truth (class 0, class 1, background), columns prediction
    np.testing.assert_array_equal(out["matrix"], [[1, 0, 0],    # a found as class 0
                                                  [1, 0, 1],    # b found as class 0; c missed
                                                  [0, 2, 0]])   # two false positives of class 1
    assert out["per_image"][1] == {"tp": 1, "fp": 2, "fn": 2, "f1": pytest.approx(1 / 3), "objects": 3}
    assert out["per_image"][2] == {"tp": 0, "fp": 1, "fn": 0, "f1": 0.0, "objects": 0}


# --- evaluate: the report, the pictures -------------------------------------------------------------
def test_evaluate_reports_box_ap_per_class_and_draws_the_pictures(tiny_trained, tmp_path, capsys):
    """Through the CLI on a saved tiny trained model: metrics.json holds mask and box AP, the
    per-class table (names, dataset ids, ground-truth counts), the PR curves and the
    confusion matrix; the pictures are written."""
    from solo_tf.cli import main
    from solo_tf.data.pipeline import load_source
    from solo_tf.saving import save_model

    model, _ = tiny_trained("solov2")
    folder = tmp_path / "m"
    save_model(model, folder / "model.keras")
    cfg = _shapes_config()
    cfg.to_yaml(folder / "config.yaml")
    assert main(["evaluate", "--model", str(folder / "model.keras"), "--pictures", "2"]) == 0
    out = capsys.readouterr()
    printed = json.loads(out.out.strip().splitlines()[-1])
    assert {"AP", "AP50", "box_AP", "box_AP50", "box_APl"} <= set(printed) and printed["num_images"] == 6
    assert all(name in out.err for name in TINY_CLASS_NAMES)  # the per-class table, printed

    metrics = json.loads((folder / "eval" / "metrics.json").read_text())
    assert 0.0 <= metrics["box_AP"] <= 1.0 and metrics["AP"] > 0.0  # the trained model finds shapes
    per_class = metrics["per_class"]
    assert [r["name"] for r in per_class] == TINY_CLASS_NAMES
    assert [r["category_id"] for r in per_class] == TINY_CATEGORY_IDS
    cfg.labels.category_ids = TINY_CATEGORY_IDS
    objects = sum(int((r["classes"] >= 0).sum()) for r in load_source(cfg, "val").records.as_numpy_iterator())
    assert sum(r["gt_instances"] for r in per_class) == objects
    assert all(r["AP"] == -1.0 for r in per_class if r["gt_instances"] == 0)
    matrix = np.asarray(metrics["confusion"]["matrix"])
    assert matrix.shape == (7, 7) and metrics["confusion"]["labels"][-1] == "background"
    assert matrix[:-1].sum() == objects  # every ground-truth object is matched or missed once
    pr = np.asarray(metrics["pr"]["precision"])
    assert pr.shape == (10, 101) and metrics["pr"]["iou_thresholds"][0] == pytest.approx(0.5)
    # the mean of the IoU-0.50 curve is AP50 (COCO's own definition, over the classes with GT)
    assert pr[0][pr[0] > -1].mean() == pytest.approx(metrics["AP50"], abs=1e-6)

    names = sorted(p.name for p in (folder / "eval").glob("*.png"))
    assert names == ["best_0.png", "best_1.png", "confusion_matrix.png", "pr_curves.png", "worst_0.png", "worst_1.png"]
    f1 = sorted(v["f1"] for v in metrics["per_image"].values() if v["objects"])
    assert f1[0] <= f1[-1]


# --- validation AP during training ------------------------------------------------------------------
def test_training_logs_validation_ap_and_keeps_the_best_epoch(tmp_path):
    import keras

    from solo_tf.saving import load_model
    from solo_tf.tasks import train

    snapshots = {}

    class Snapshot(keras.callbacks.Callback):  # after the run's own callbacks: the weights ValidationAP saw
        def on_epoch_end(self, epoch, logs=None):
            snapshots[epoch + 1] = [np.array(w) for w in self.model.get_weights()]

    cfg = _shapes_config(num_val=4, epochs=3, val_every=1, optimizer="adamw", base_lr=0.02)
    run = train(cfg, tmp_path / "run", steps_per_epoch=2, verbose=0, callbacks=[Snapshot()])
    with open(tmp_path / "run" / "history.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 3 and {"val_mask_AP", "val_mask_AP50", "val_box_AP"} <= set(rows[0])
    aps = [float(r["val_mask_AP"]) for r in rows]
    assert all(0.0 <= a <= 1.0 for a in aps)
    best_epoch = int(np.argmax(aps)) + 1  # the first epoch of the highest AP
    best = load_model(tmp_path / "run" / "best.keras")
    for got, want in zip(best.get_weights(), snapshots[best_epoch]):
        np.testing.assert_array_equal(got, want)
    assert (tmp_path / "run" / "results.png").is_file()
    assert run.history["val_mask_AP"] == pytest.approx(aps)


def test_val_every_skips_epochs_and_the_class_confusion_trap_is_reported():
    from solo_tf.validation import ValidationAP

    cb = ValidationAP(dataset=None, coco_gt=None, postprocess=None, every=2)
    cb.set_params({"epochs": 5})
    assert [cb._due(e) for e in range(5)] == [False, True, False, True, True]  # every 2nd, and the last
    logs = {}
    cb.on_epoch_end(0, logs)  # not due: the columns are there, empty
    assert set(logs) == {"val_mask_AP", "val_mask_AP50", "val_box_AP"} and all(np.isnan(v) for v in logs.values())

    lines = []
    cb.log = lines.append
    report = {"num_detections": 12, "confusion": {"labels": ["a", "b", "background"], "score_thr": 0.3,
                                                   "matrix": [[0, 0, 3], [0, 0, 2], [0, 7, 0]]}}
    cb.evaluations = [(2, 0.0, 2.0, report)]
    cb._check_class_confusion(report)
    assert lines == []  # one evaluation proves nothing
    cb.evaluations.append((4, 0.0, 1.2, report))
    cb._check_class_confusion(report)
    assert len(lines) == 1 and "validation mask AP is 0 after 2 evaluations" in lines[0]
    assert "from 2.000 to 1.200" in lines[0] and "b 7" in lines[0] and "a 3, b 2" in lines[0]


# --- --set -------------------------------------------------------------------------------------------
def test_set_overrides_reach_the_config_and_are_checked(tmp_path, capsys):
    from solo_tf.cli import main
    from solo_tf.config import apply_overrides, load_config

    cfg = load_config("solov2_light_r18")
    got = apply_overrides(cfg, ["train.base_lr=0.005", "model.image_size=[512, 768]", "postprocess.kernel=linear"])
    assert (got.train.base_lr, got.model.image_size, got.postprocess.kernel) == (0.005, (512, 768), "linear")
    assert cfg.train.base_lr == 0.01  # the caller's config is not changed
    for bad, match in (("train.base_lrr=1", "unknown key 'train.base_lrr'; valid keys: epochs"),
                       ("train.base_lr=fast", "train.base_lr must be a number"),
                       ("model.image_size=[100, 100]", "model.image_size must be positive multiples of 32"),
                       ("train.epochs", "expected KEY=VALUE")):
        with pytest.raises(ConfigError, match=match):
            apply_overrides(cfg, [bad])

    path = tmp_path / "tiny.yaml"
    _shapes_config().to_yaml(path)
    out = tmp_path / "run"
    assert main(["train", "--config", str(path), "--out", str(out), "--set", "train.epochs=1",
                 "train.base_lr=0.02", "data.shapes.num_train=4"]) == 0
    saved = Config.from_yaml(out / "config.yaml")
    assert (saved.train.epochs, saved.train.base_lr, saved.data.shapes.num_train) == (1, 0.02, 4)
    assert len((out / "history.csv").read_text().splitlines()) == 2
    assert main(["train", "--config", str(path), "--set", "train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err
