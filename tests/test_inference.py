"""Predictor / inference graph and the predict, evaluate and demo commands."""

import json

import numpy as np
import pytest

from conftest import tiny_model_config
from solo_tf.config import LabelsConfig, PostprocessConfig
from solo_tf.model import SOLO


def _model(variant="solov2"):
    return SOLO(tiny_model_config(variant, image_size=(64, 64), num_classes=6),
                labels_config=LabelsConfig(class_names=list("abcdef")))


def test_letterbox_keeps_aspect_and_pads():
    from solo_tf.inference import letterbox

    image = np.full((50, 100, 3), 200, np.uint8)
    canvas, valid, scale = letterbox(image, (64, 64))
    assert canvas.shape == (64, 64, 3) and valid == (32, 64) and scale == pytest.approx(0.64)
    assert np.allclose(canvas[:32], 200) and np.all(canvas[32:] == 0)
    with pytest.raises(ValueError, match="RGB"):
        letterbox(np.zeros((10, 10)), (64, 64))


@pytest.mark.parametrize("variant", ["solov2", "solo", "decoupled_solo"])
def test_predictor_returns_masks_at_original_size(variant):
    from solo_tf.inference import Predictor

    # score_thr 0 keeps every candidate of an untrained model, so masks must come back
    predictor = Predictor(_model(variant), PostprocessConfig(score_thr=0.0, update_thr=0.0, max_per_img=5))
    images = [np.random.RandomState(0).randint(0, 255, (45, 70, 3), np.uint8),
              np.random.RandomState(1).randint(0, 255, (90, 33, 3), np.uint8)]
    out = predictor.predict(images)
    assert len(out) == 2
    for inst, im in zip(out, images):
        n = len(inst["scores"])
        assert inst["masks"].shape == (n,) + im.shape[:2] and inst["masks"].dtype == bool
        assert inst["boxes"].shape == (n, 4) and len(inst["labels"]) == n
        assert np.all(np.diff(inst["scores"]) <= 1e-6)
        assert set(inst["labels"]) <= set("abcdef")


def test_inference_model_saves_and_reloads(tmp_path):
    import keras
    from keras import ops

    from solo_tf.inference import build_inference_model

    infer = build_inference_model(_model(), PostprocessConfig(score_thr=0.0, max_per_img=7))
    x = np.random.RandomState(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    a = infer.predict_on_batch(x)
    assert a["detection_masks"].shape == (2, 7, 64, 64) and a["num_detections"].shape == (2,)
    infer.save(tmp_path / "infer.keras")
    b = keras.saving.load_model(tmp_path / "infer.keras").predict_on_batch(x)
    for k in a:
        np.testing.assert_allclose(ops.convert_to_numpy(a[k]), ops.convert_to_numpy(b[k]), atol=1e-6)


def test_predict_command_writes_overlays_and_coco_json(tmp_path, capsys):
    from PIL import Image

    from solo_tf.cli import main

    model_path = tmp_path / "m" / "model.keras"
    model_path.parent.mkdir()
    _model().save(model_path)
    img = tmp_path / "a.png"
    Image.fromarray(np.random.RandomState(0).randint(0, 255, (40, 52, 3), np.uint8)).save(img)
    out = tmp_path / "pred"
    assert main(["predict", "--model", str(model_path), str(img), "--out", str(out), "--score-thr", "0"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert summary["pictures"] == [str(out / "a_pred.png")]
    with Image.open(out / "a_pred.png") as im:
        assert im.size == (52, 40)
    results = json.loads((out / "predictions.json").read_text())
    assert isinstance(results, list) and len(results) == summary["detections"]
    for r in results:
        assert r["segmentation"]["size"] == [40, 52] and "counts" in r["segmentation"]


def test_predict_command_names_a_bad_image(tmp_path, capsys):
    from solo_tf.cli import main

    model_path = tmp_path / "model.keras"
    _model().save(model_path)
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    assert main(["predict", "--model", str(model_path), str(bad), "--out", str(tmp_path / "o")]) == 1
    assert "broken.png" in capsys.readouterr().err
    assert main(["predict", "--model", str(tmp_path / "missing.keras"), str(bad), "--out", "o"]) == 1
    assert "missing.keras" in capsys.readouterr().err


def test_evaluate_command_prints_and_writes_metrics(tmp_path, capsys):
    from solo_tf.cli import main
    from solo_tf.config import Config, DataConfig, ShapesSourceConfig, TrainConfig

    model = _model()
    run = tmp_path / "run"
    run.mkdir()
    model.save(run / "model.keras")
    Config(name="t", model=model.model_config, data=DataConfig(shapes=ShapesSourceConfig(num_train=4, num_val=3, image_size=(64, 64))),
           train=TrainConfig(batch_size=2)).to_yaml(run / "config.yaml")
    assert main(["evaluate", "--model", str(run / "model.keras")]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) >= {"AP", "AP50", "AP75", "APs", "APm", "APl"}
    assert metrics["num_images"] == 3
    assert json.loads((run / "eval" / "metrics.json").read_text())["AP"] == metrics["AP"]


@pytest.mark.slow
def test_demo_full_budget_reaches_target_ap(tmp_path):
    """The README's main job at its default budget (about 10 minutes on a 2-core CPU)."""
    from solo_tf.cli import run_demo

    summary = run_demo(tmp_path / "demo")
    assert summary["mask_ap"] >= 0.5, summary


def test_demo_short_run_prints_summary_and_writes_pictures(tmp_path, capsys):
    from PIL import Image

    from solo_tf.cli import main

    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--minutes", "0.4"]) == 0
    summary = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(summary) >= {"mask_ap", "mask_ap50", "train_seconds", "model", "pictures"}
    assert 0.0 <= summary["mask_ap"] <= 1.0 and 0.0 <= summary["mask_ap50"] <= 1.0
    assert summary["model"] == str(out / "model.keras") and (out / "model.keras").is_file()
    names = {p.split("/")[-1] for p in summary["pictures"]}
    assert {"target_grids.png", "training_curves.png", "prediction_0.png"} <= names
    for p in summary["pictures"]:
        with Image.open(p) as im:
            assert im.size[0] > 0 and im.size[1] > 0
    assert (out / "metrics.json").is_file() and (out / "history.csv").is_file()
