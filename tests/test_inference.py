"""Predictor / inference graph and the predict, evaluate and demo commands."""

import json

import numpy as np
import pytest

from conftest import tiny_model_config
from solo_tf.config import LabelsConfig, PostprocessConfig
from solo_tf.model import SOLO
from solo_tf.preprocess import letterbox


def _model(variant="solov2"):
    return SOLO(tiny_model_config(variant, image_size=(64, 64), num_classes=6),
                labels_config=LabelsConfig(class_names=list("abcdef")))


def test_letterbox_keeps_aspect_and_pads():
    from solo_tf.inference import Predictor

    image = np.full((50, 100, 3), 200, np.uint8)
    canvas, valid, scale = letterbox(image, (64, 64))
    canvas = np.asarray(canvas)
    assert canvas.shape == (64, 64, 3) and valid == (32, 64) and scale == pytest.approx(0.64)
    assert np.allclose(canvas[:32], 200) and np.all(canvas[32:] == 0)
    with pytest.raises(ValueError, match="image 1: expected an RGB image"):
        Predictor(_model("solov2")).predict([image, np.zeros((10, 10))])


def test_instances_from_detections_maps_each_image_back_to_its_size():
    """The one post-processing path: per image, filled slots only, cropped to the resized
    image's region, resized to the original size, with boxes and names."""
    from solo_tf.inference import instances_from_detections

    masks = np.zeros((2, 3, 64, 64), np.float32)
    masks[0, 0, 0:16, 0:32] = 1.0  # image 0: valid region 32 x 64 (original 50 x 100)
    masks[0, 1, 16:32, 32:64] = 0.9
    masks[1, 0, 0:64, 0:32] = 1.0  # image 1: the whole 64 x 64 canvas is the image
    dets = {"detection_masks": masks, "detection_scores": np.array([[0.9, 0.6, 0.0], [0.8, 0.0, 0.0]], np.float32),
            "detection_classes": np.array([[2, 0, -1], [1, -1, -1]], np.int32), "num_detections": np.array([2, 1])}
    out = instances_from_detections(dets, [(32, 64), (64, 64)], [(50, 100), (64, 64)], class_names=["a", "b", "c"])
    assert [len(o["scores"]) for o in out] == [2, 1]
    assert out[0]["masks"].shape == (2, 50, 100) and out[1]["masks"].shape == (1, 64, 64)
    assert out[0]["labels"] == ["c", "a"] and out[1]["labels"] == ["b"]
    # the top-left half of the valid region, at the original size (scale 100/64 = 50/32)
    np.testing.assert_allclose(out[0]["boxes"][0], [0, 0, 50, 25], atol=1)
    np.testing.assert_allclose(out[0]["boxes"][1], [50, 25, 100, 50], atol=1)
    np.testing.assert_array_equal(out[1]["boxes"][0], [0, 0, 32, 64])
    with pytest.raises(ValueError, match="2 images"):
        instances_from_detections(dets, [(32, 64)], [(50, 100)])


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


def test_predictor_upsampling_the_filled_slots_on_the_host_equals_full_size_masks():
    """Predictor keeps the graph's masks at stride 4 and upsamples only the filled slots, only
    where the image is: the same instances as K full-size masks from the graph."""
    from solo_tf.inference import Predictor, build_inference_model, instances_from_detections

    post = PostprocessConfig(score_thr=0.0, update_thr=0.0, max_per_img=6, mask_thr=0.5)
    model = _model("solov2")  # untrained, only SOLOv2's masks survive the decoder's area filter
    predictor = Predictor(model, post)
    image = np.random.RandomState(2).randint(0, 255, (45, 70, 3), np.uint8)
    got = predictor.predict([image])[0]
    assert predictor.inference_model.output["detection_masks"].shape[2:] == (16, 16)  # stride 4
    canvas, valid, _ = letterbox(image, (64, 64))
    full = build_inference_model(model, post).predict_on_batch(np.asarray(canvas)[None])
    assert full["detection_masks"].shape[2:] == (64, 64)
    want = instances_from_detections(full, [valid], [image.shape[:2]], mask_thr=0.5)[0]
    assert len(want["scores"]) == len(got["scores"]) > 0
    np.testing.assert_array_equal(got["classes"], want["classes"])
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-6)
    assert (got["masks"] == want["masks"]).mean() > 0.999  # float rounding at the threshold only
    assert got["masks"].any()



def test_predictor_runs_another_canvas_with_the_same_weights():
    """image_size: images letterboxed onto that canvas and the model's weights run on its
    graph (a zoo model at another test scale); a size that is no multiple of 32 is refused."""
    from solo_tf.config import ConfigError
    from solo_tf.inference import Predictor, build_inference_model, instances_from_detections

    post = PostprocessConfig(score_thr=0.0, update_thr=0.0, max_per_img=6, mask_thr=0.5)
    model = _model("solov2")
    predictor = Predictor(model, post, image_size=(96, 128))
    image = np.random.RandomState(3).randint(0, 255, (45, 70, 3), np.uint8)
    got = predictor.predict([image])[0]
    assert predictor.inference_model.output["detection_masks"].shape[2:] == (24, 32)
    canvas, valid, _ = letterbox(image, (96, 128))
    dets = build_inference_model(model, post, (96, 128), full_size_masks=False).predict_on_batch(
        np.asarray(canvas, np.float32)[None])
    want = instances_from_detections(dets, [valid], [image.shape[:2]], mask_thr=0.5, canvas_size=(96, 128))[0]
    assert len(got["scores"]) == len(want["scores"]) > 0
    np.testing.assert_allclose(got["scores"], want["scores"], atol=1e-6)
    np.testing.assert_array_equal(got["masks"], want["masks"])
    assert got["masks"].shape[1:] == (45, 70)
    with pytest.raises(ConfigError, match="multiples of 32"):
        Predictor(model, post, image_size=(100, 128))

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
    from solo_tf.visualize import zoom_for

    with Image.open(out / "a_pred.png") as im:
        assert im.size[0] == 52 * zoom_for(40, 52) and im.size[1] > 40 * zoom_for(40, 52)
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


def test_evaluate_command_prints_and_writes_metrics(tmp_path, capsys, monkeypatch):
    from solo_tf.cli import main
    from solo_tf.config import Config, DataConfig, TrainConfig
    from solo_tf.data.shapes import ShapesSourceConfig

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

    # at another canvas (a zoo model at another test scale): the images and the graph are 96x96
    import solo_tf.inference as inference

    canvases = []
    build = inference.build_inference_model
    monkeypatch.setattr(inference, "build_inference_model",
                        lambda m, post, canvas=None, **kw: canvases.append(tuple(canvas)) or build(m, post, canvas, **kw))
    assert main(["evaluate", "--model", str(run / "model.keras"), "--image-size", "96", "96",
                 "--out", str(tmp_path / "eval96")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["num_images"] == 3
    assert canvases == [(96, 96)]
    assert main(["evaluate", "--model", str(run / "model.keras"), "--image-size", "90", "96"]) == 2  # a config error
    assert "multiples of 32" in capsys.readouterr().err


@pytest.mark.slow
def test_demo_full_budget_reaches_target_ap(tmp_path):
    """The README's main job with its defaults (a fixed 2500 steps; minutes on a 2-core CPU)."""
    from solo_tf.tasks import demo

    summary = demo(tmp_path / "demo")
    assert summary["mask_ap"] >= 0.5, summary


def test_demo_with_a_time_budget_writes_its_pictures(tmp_path):
    """`solo-tf demo --minutes` (the budgeted path) end to end on a small generated set."""
    from PIL import Image

    from solo_tf.cli import build_parser
    from solo_tf.tasks import demo

    args = build_parser().parse_args(["demo", "--out", str(tmp_path / "x"), "--minutes", "0.4"])
    assert (args.minutes, args.steps) == (0.4, None)
    out = tmp_path / "demo"
    summary = demo(out, minutes=0.4, num_train=64, num_val=4, verbose=0)
    json.dumps(summary)  # what the command prints
    assert set(summary) >= {"mask_ap", "mask_ap50", "steps", "train_seconds", "model", "pictures"}
    assert 0.0 <= summary["mask_ap"] <= 1.0 and 0.0 <= summary["mask_ap50"] <= 1.0 and summary["steps"] > 0
    assert summary["model"] == str(out / "model.keras") and (out / "model.keras").is_file()
    names = {p.split("/")[-1] for p in summary["pictures"]}
    assert {"target_grids.png", "training_curves.png", "prediction_0.png"} <= names
    for p in summary["pictures"]:
        with Image.open(p) as im:
            assert im.size[0] > 0 and im.size[1] > 0
    assert json.loads((out / "metrics.json").read_text())["num_images"] == 4
    assert "lr" in (out / "history.csv").read_text().splitlines()[0].split(",")
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["latest.weights.h5"]
