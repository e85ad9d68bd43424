"""Export (SavedModel for TF Serving, TFLite with builtin ops only, ONNX) and the runners and
clients in export/, on tiny models trained for a few steps on the shapes data.

Default suite: the SOLOv2 conversion per format is shared by the SavedModel / TFLite / ONNX
tests through module-scoped fixtures; SOLO and Decoupled SOLO are checked for parity in all
three formats; fp16 and int8 (calibrated on the training source) against fp32; the three
MobileNetV3 presets' op check. The tiny models are trained once per session (conftest's
``tiny_trained``, shared with test_overfit.py). ``--runslow`` adds dynamic-range quantisation,
full-size masks, another canvas and the TFLite conversion of the serving graph.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import TINY_CANVAS, TINY_CATEGORY_IDS, TINY_CLASS_NAMES

REPO = Path(__file__).resolve().parents[1]
EXPORT_DIR = REPO / "export"
sys.path.insert(0, str(EXPORT_DIR))  # the deployment-side helpers the runners use

CANVAS = TINY_CANVAS
CLASS_NAMES = TINY_CLASS_NAMES
CATEGORY_IDS = TINY_CATEGORY_IDS


def _post():
    from solo_tf.config import PostprocessConfig

    return PostprocessConfig(nms_pre=100, max_per_img=20)


def sample_images(count=6, size=CANVAS, seed=0):
    """Shapes images (not the training ones) of ``size``, uint8."""
    from solo_tf.data.shapes import ShapesGenerator

    gen = ShapesGenerator(image_size=size, max_objects=3, seed=seed, min_size=0.3, max_size=0.6)
    return [gen.sample(1000 + i)["image"] for i in range(count)]


def keras_detections(model, canvases, post, full_size_masks=False):
    """What the exported graphs must reproduce: the Keras model + decoder on the canvases,
    masks binarised, classes as dataset ids."""
    from solo_tf.decoder import decode

    raw = model(np.asarray(canvases, np.float32), training=False)
    dets = {k: np.asarray(v) for k, v in decode(raw, model.model_config, post, full_size_masks).items()}
    dets["detection_masks"] = (dets["detection_masks"] > post.mask_thr).astype(np.uint8)
    cls = dets["detection_classes"]
    dets["detection_classes"] = np.where(cls >= 0, np.asarray(CATEGORY_IDS)[np.maximum(cls, 0)], -1)
    return dets


def per_image(outputs, i):
    return {k: np.asarray(v)[i] for k, v in outputs.items()}


def assert_parity(reference, outputs, post, what, borderline=0.0):
    """Same classes, scores within 1e-3, mask IoU >= 0.99 for every matched detection; one
    scored below ``max(update_thr, borderline)`` (+ 1e-3) may be missing on either side."""
    from solo_tf.parity import compare_detections

    n = len(reference["num_detections"])
    matched = 0
    for i in range(n):
        r = compare_detections(per_image(reference, i), per_image(outputs, i), score_tol=1e-3,
                               borderline=max(post.update_thr, borderline))
        assert r["unmatched"] == 0, (what, i, r)
        assert r["max_score_diff"] <= 1e-3 and r["min_mask_iou"] >= 0.99, (what, i, r)
        matched += r["matched"]
    assert matched >= 5, f"{what}: only {matched} detections: the parity check would be vacuous"


def run_tflite(path, canvases):
    from ai_edge_litert.interpreter import Interpreter

    runner = Interpreter(model_path=str(path), num_threads=2).get_signature_runner()
    outs = [runner(images=np.asarray(c)[None]) for c in canvases]
    return {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}


def run_onnx(path, canvases):
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"images": np.asarray(canvases)})))


def canvases_of(images):
    """uint8 canvases (letterboxed, rounded): the fixed-canvas formats' input."""
    from solo_tf.preprocess import letterbox

    return np.stack([np.round(np.asarray(letterbox(im, CANVAS)[0])).astype(np.uint8) for im in images])


# --- module fixtures: one model, one conversion per format ------------------------------------
@pytest.fixture(scope="module")
def trained(tiny_trained, tmp_path_factory):
    from solo_tf.saving import save_model

    model, _ = tiny_trained("solov2")
    path = tmp_path_factory.mktemp("model") / "model.keras"
    save_model(model, path)
    return model, path


@pytest.fixture(scope="module")
def saved_model(trained, tmp_path_factory):
    from solo_tf.export import export_model

    model, _ = trained
    return export_model(model, "saved_model", tmp_path_factory.mktemp("serving") / "solo", version=3)


@pytest.fixture(scope="module")
def loaded(saved_model):
    import tensorflow as tf

    return tf.saved_model.load(str(saved_model.path))


@pytest.fixture(scope="module")
def tflite_export(trained, tmp_path_factory):
    """Exported through the CLI (``solo-tf export``, in process), from model.keras."""
    from solo_tf import cli
    from solo_tf.export import ExportResult
    from solo_tf.export.tflite import tflite_ops

    _, path = trained
    out = tmp_path_factory.mktemp("tflite") / "solo.tflite"
    assert cli.main(["export", "--model", str(path), "--format", "tflite", "--out", str(out)]) == 0
    data = out.read_bytes()
    return ExportResult(out, "tflite", "none", len(data), [str(out)], tuple(tflite_ops(data)),
                        json.loads(out.with_name(out.name + ".json").read_text()))


@pytest.fixture(scope="module")
def onnx_export(trained, tmp_path_factory):
    from solo_tf.export import export_model

    model, _ = trained
    return export_model(model, "onnx", tmp_path_factory.mktemp("onnx") / "solo.onnx")


@pytest.fixture(scope="module")
def image_files(tmp_path_factory):
    """Two PNGs of sizes unlike the canvas and a JPEG."""
    from PIL import Image

    folder = tmp_path_factory.mktemp("images")
    paths = []
    for i, (size, ext) in enumerate([((90, 60), "png"), ((40, 100), "png"), ((72, 72), "jpg")]):
        path = folder / f"img{i}.{ext}"
        Image.fromarray(sample_images(1, size, seed=i)[0]).save(path, quality=95)
        paths.append(path)
    return paths


# --- SavedModel --------------------------------------------------------------------------------
def test_saved_model_layout_signatures_and_saved_model_cli(saved_model, loaded):
    import tensorflow as tf

    assert saved_model.path.name == "3" and (saved_model.path / "saved_model.pb").is_file()
    meta = json.loads((saved_model.path / "assets.extra" / "solo_export.json").read_text())
    assert meta["canvas"] == list(CANVAS) and meta["mask_stride"] == 4
    assert meta["category_ids"] == CATEGORY_IDS and meta["class_names"] == CLASS_NAMES
    assert meta["max_detections"] == 20  # the model's own post-processing
    assert set(loaded.signatures) == {"serving_default", "image_bytes"}
    _, images_spec = loaded.signatures["serving_default"].structured_input_signature
    assert images_spec["images"].dtype == tf.uint8 and images_spec["images"].shape.as_list() == [None, None, None, 3]
    _, bytes_spec = loaded.signatures["image_bytes"].structured_input_signature
    assert bytes_spec["image_bytes"].dtype == tf.string

    show = subprocess.run(["saved_model_cli", "show", "--dir", str(saved_model.path), "--all"],
                          capture_output=True, text=True, timeout=300)
    assert show.returncode == 0, show.stderr[-2000:]
    for text in ("signature_def['serving_default']", "signature_def['image_bytes']", "dtype: DT_UINT8",
                 "detection_masks", "num_detections", "letterbox_scale"):
        assert text in show.stdout, text
    image = Path(saved_model.path).parent / "probe.npy"
    np.save(image, np.zeros((1, 48, 80, 3), np.uint8))
    run = subprocess.run(["saved_model_cli", "run", "--dir", str(saved_model.path), "--tag_set", "serve",
                          "--signature_def", "serving_default", "--inputs", f"images={image}"],
                         capture_output=True, text=True, timeout=300)
    image.unlink()
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Result for output key image_size:\n[[48 80]]" in run.stdout
    assert "Result for output key detection_masks:" in run.stdout


def test_parity_keras_saved_model_tflite_onnx(trained, loaded, tflite_export, onnx_export):
    import tensorflow as tf

    model, _ = trained
    post = _post()
    canvases = canvases_of(sample_images())
    reference = keras_detections(model, canvases, post)
    # canvas-sized input: the in-graph letterbox is the identity, boxes stay canvas pixels
    served = {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=tf.constant(canvases)).items()}
    np.testing.assert_allclose(served["letterbox_scale"], 1.0)
    for name, outputs in [("saved_model", served), ("tflite", run_tflite(tflite_export.path, canvases)),
                          ("onnx", run_onnx(onnx_export.path, canvases))]:
        assert outputs["detection_masks"].dtype == np.uint8
        assert outputs["detection_masks"].shape == (len(canvases), 20, 16, 16), name
        assert_parity(reference, outputs, post, name)
        filled = outputs["detection_classes"][outputs["detection_classes"] >= 0]
        assert set(filled.tolist()) <= set(CATEGORY_IDS), name


def test_serving_default_any_size_returns_image_coordinates(trained, loaded):
    import tensorflow as tf

    from solo_tf.preprocess import boxes_to_image, letterbox

    model, _ = trained
    post = _post()
    for image in sample_images(2, (90, 60), seed=1) + sample_images(1, (40, 100), seed=2):
        served = {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=tf.constant(image[None])).items()}
        canvas, valid, _ = letterbox(image, CANVAS)
        reference = keras_detections(model, np.asarray(canvas)[None], post)
        np.testing.assert_array_equal(served["image_size"], [image.shape[:2]])
        np.testing.assert_allclose(served["letterbox_scale"][0], np.divide(valid, image.shape[:2]), rtol=1e-6)
        np.testing.assert_array_equal(served["letterbox_offset"], 0)
        np.testing.assert_array_equal(served["detection_classes"], reference["detection_classes"])
        np.testing.assert_allclose(served["detection_scores"], reference["detection_scores"], atol=1e-5)
        np.testing.assert_array_equal(served["detection_masks"], reference["detection_masks"])
        boxes = np.asarray(boxes_to_image(reference["detection_boxes"], valid, image.shape[:2]))
        np.testing.assert_allclose(served["detection_boxes"], boxes, atol=1e-3)
        assert np.all(served["detection_boxes"][..., 2] <= image.shape[1])
        assert np.all(served["detection_boxes"][..., 3] <= image.shape[0])


def test_image_bytes_matches_the_tensor_signature(loaded, image_files):
    import tensorflow as tf

    encoded = [p.read_bytes() for p in image_files]
    batch = {k: v.numpy() for k, v in loaded.signatures["image_bytes"](image_bytes=tf.constant(encoded)).items()}
    assert batch["detection_masks"].shape == (3, 20, 16, 16)
    for i, data in enumerate(encoded):
        pixels = tf.io.decode_image(data, channels=3, expand_animations=False).numpy()  # as the graph decodes
        single = {k: v.numpy() for k, v in loaded.signatures["serving_default"](images=tf.constant(pixels[None])).items()}
        np.testing.assert_array_equal(batch["image_size"][i], pixels.shape[:2])
        for key in single:
            np.testing.assert_allclose(batch[key][i], single[key][0], atol=1e-5, err_msg=f"{image_files[i].name} {key}")


def test_serving_signatures_reject_bad_input_clearly(loaded):
    import tensorflow as tf

    serve, by_bytes = loaded.signatures["serving_default"], loaded.signatures["image_bytes"]
    with pytest.raises(tf.errors.InvalidArgumentError, match="uint8"):
        serve(images=tf.zeros((1, 30, 40, 3), tf.float32))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Shape of tensor images \[30,40,3\]"):
        serve(images=tf.zeros((30, 40, 3), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"not compatible with expected shape \[\?,\?,\?,3\]"):
        serve(images=tf.zeros((1, 30, 40, 4), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="non-zero size"):
        serve(images=tf.zeros((1, 0, 40, 3), tf.uint8))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Unknown image file format"):
        by_bytes(image_bytes=tf.constant([b"not an image"]))
    with pytest.raises(tf.errors.InvalidArgumentError, match="Shape of tensor"):
        by_bytes(image_bytes=tf.constant([[b"a"]]))


def test_raw_outputs_export_the_head_logits(trained, tmp_path):
    import tensorflow as tf

    from solo_tf.export import export_model
    from solo_tf.preprocess import letterbox

    model, _ = trained
    result = export_model(model, "saved_model", tmp_path / "raw", raw_outputs=True)
    image = sample_images(1, (48, 80), seed=3)[0]
    out = {k: v.numpy() for k, v in tf.saved_model.load(str(result.path)).signatures["serving_default"](
        images=tf.constant(image[None])).items()}
    expected = {k: np.asarray(v) for k, v in model(np.asarray(letterbox(image, CANVAS)[0])[None]).items()}
    assert set(expected) <= set(out) and "detection_masks" not in out
    for key, value in expected.items():
        np.testing.assert_allclose(out[key], value, atol=1e-4, err_msg=key)
    np.testing.assert_array_equal(out["image_size"], [[48, 80]])
    assert result.metadata["raw_outputs"] is True


# --- TFLite: builtin ops only ------------------------------------------------------------------
def test_tflite_has_builtin_ops_only_and_the_check_names_a_flex_op(tflite_export):
    import tensorflow as tf

    from solo_tf.export import ExportError
    from solo_tf.export.tflite import check_builtin_ops, tflite_ops

    assert tflite_export.path.is_file() and tflite_export.quantize == "none"
    ops = set(tflite_ops(tflite_export.path.read_bytes()))
    assert {"CONV_2D", "TOPK_V2", "BATCH_MATMUL"} <= ops  # network, top-k, Matrix NMS IoU
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in ops)
    meta = json.loads(Path(str(tflite_export.path) + ".json").read_text())
    assert meta["ops"] == sorted(ops) and meta["format"] == "tflite"

    @tf.function(input_signature=[tf.TensorSpec((1, 8), tf.float32)])
    def cumprod(x):  # no TFLite builtin: converts only through SELECT_TF_OPS (Flex)
        return {"y": tf.math.cumprod(x, axis=1)}

    converter = tf.lite.TFLiteConverter.from_concrete_functions([cumprod.get_concrete_function()], cumprod)
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS, tf.lite.OpsSet.SELECT_TF_OPS]
    with pytest.raises(ExportError, match="FlexCumprod"):
        check_builtin_ops(converter.convert())


def test_conversion_needing_a_non_builtin_op_fails_naming_it(tmp_path):
    import tensorflow as tf

    from solo_tf.export import ExportError
    from solo_tf.export.tflite import convert_tflite

    module = tf.Module()
    module.f = tf.function(lambda x: {"y": tf.math.cumprod(x, axis=1)}, input_signature=[tf.TensorSpec((1, 8))])
    tf.saved_model.save(module, str(tmp_path / "sm"), signatures={"serving_default": module.f})
    with pytest.raises(ExportError, match=r"builtin ops only failed: op\(s\) with no TFLite builtin: tf\.Cumprod"):
        convert_tflite(tmp_path / "sm")


@pytest.mark.slow
def test_tflite_export_of_the_serving_graph_fails_naming_the_ops(saved_model):
    """A deliberately unsupported configuration: the TF Serving graph (any image size,
    in-graph antialiased letterbox, float64 geometry) has no builtin equivalent."""
    from solo_tf.export import ExportError
    from solo_tf.export.tflite import convert_tflite

    with pytest.raises(ExportError, match=r"builtin.*tf\.ScaleAndTranslate"):
        convert_tflite(saved_model.path)


def test_cli_export_uses_the_model_s_own_postprocessing(tflite_export):
    assert tflite_export.metadata["max_detections"] == 20 and tflite_export.metadata["postprocess"]["nms_pre"] == 100
    assert tflite_export.size_bytes == tflite_export.path.stat().st_size


# --- atomic writes and options -----------------------------------------------------------------
def test_failed_or_interrupted_export_leaves_nothing(trained, tmp_path, monkeypatch):
    import keras

    import solo_tf.export as export
    import solo_tf.export.tflite

    model, _ = trained

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt  # as a Ctrl-C in the middle of the conversion

    monkeypatch.setattr(solo_tf.export.tflite, "convert_tflite", interrupted)
    with pytest.raises(KeyboardInterrupt):
        export.export_model(model, "tflite", tmp_path / "m.tflite")
    assert list(tmp_path.iterdir()) == []

    def half_written(self, path, **kwargs):
        (Path(path) / "saved_model.pb").write_bytes(b"partial")
        raise OSError("disk full")

    # keras.export.ExportArchive() builds its backend's subclass: patch that one (and skip
    # the tracing, which this test does not need)
    archive = type(keras.export.ExportArchive())
    monkeypatch.setattr(archive, "add_endpoint", lambda self, *args, **kwargs: None)
    monkeypatch.setattr(archive, "write_out", half_written)
    with pytest.raises(OSError, match="disk full"):
        export.export_model(model, "saved_model", tmp_path / "serving", version=1)
    assert not (tmp_path / "serving" / "1").exists()
    assert [p.name for p in (tmp_path / "serving").iterdir()] == []


def test_existing_destination_and_bad_options_are_refused(trained, tmp_path):
    from solo_tf.export import ExportError, export_model

    model, path = trained
    (tmp_path / "taken.onnx").write_bytes(b"x")
    with pytest.raises(ExportError, match="already exists"):
        export_model(model, "onnx", tmp_path / "taken.onnx")
    assert (tmp_path / "taken.onnx").read_bytes() == b"x"
    (tmp_path / "sm" / "1").mkdir(parents=True)
    with pytest.raises(ExportError, match="already exists.*another version"):
        export_model(model, "saved_model", tmp_path / "sm", version=1)
    with pytest.raises(ExportError, match="format must be one of"):
        export_model(model, "coreml", tmp_path / "x")
    with pytest.raises(ExportError, match="TFLite only"):
        export_model(model, "onnx", tmp_path / "x.onnx", quantize="int8")
    with pytest.raises(ExportError, match="positive integer"):
        export_model(model, "saved_model", tmp_path / "v", version=0)
    with pytest.raises(ExportError, match="multiples of 32"):
        export_model(model, "tflite", tmp_path / "x.tflite", image_size=(100, 64))
    with pytest.raises(ExportError, match="calibrates on the model's training data"):
        export_model(model, "tflite", tmp_path / "x.tflite", quantize="int8")
    with pytest.raises(FileNotFoundError, match="model file not found"):
        export_model(tmp_path / "missing.keras", "tflite", tmp_path / "x.tflite")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sm", "taken.onnx"]


def test_another_canvas_shares_the_weights_and_equals_a_model_built_for_it(trained):
    """Export's ``image_size``: build_inference_model at a canvas the model was not built for
    applies the model's own layers (no weight copied) and gives what a model built for that
    canvas with the same weights gives."""
    import dataclasses

    from solo_tf.inference import build_inference_model
    from solo_tf.model import SOLO

    model, _ = trained
    wide = build_inference_model(model, canvas=(64, 96), raw_outputs=True)
    own = {id(w) for w in model.weights}
    assert len(wide.weights) == len(own) and {id(w) for w in wide.weights} == own
    built = SOLO(dataclasses.replace(model.model_config, image_size=(64, 96)))
    built.set_weights(model.get_weights())
    x = np.random.RandomState(0).uniform(0, 255, (2, 64, 96, 3)).astype("float32")
    got, want = wide.predict(x, verbose=0), built.predict(x, verbose=0)
    assert got["mask_feature"].shape == (2, 16, 24, 32) and sorted(got) == sorted(want)
    for k in want:
        np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-5, err_msg=k)
    with pytest.raises(ValueError, match="multiples of 32"):
        build_inference_model(model, canvas=(64, 100))


# --- the deployment side: export/ runners and clients -------------------------------------------
def _run_script(name, *args):
    proc = subprocess.run([sys.executable, str(EXPORT_DIR / name), *map(str, args)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _check_results(summary, image_files, runtime_outputs=None):
    from PIL import Image

    assert len(summary["results"]) == len(image_files)
    total = 0
    for entry, path in zip(summary["results"], image_files):
        with Image.open(entry["overlay"]) as im, Image.open(path) as src:
            assert im.size == src.size
        record = json.loads(Path(entry["json"]).read_text())
        h, w = record["image_size"]
        assert len(record["instances"]) == entry["detections"]
        for inst in record["instances"]:
            assert inst["class_id"] in CATEGORY_IDS and inst["label"] in CLASS_NAMES
            x1, y1, x2, y2 = inst["box"]
            assert 0 <= x1 <= x2 <= w and 0 <= y1 <= y2 <= h
            assert inst["mask_rle"]["size"] == [h, w] and sum(inst["mask_rle"]["counts"]) == h * w
        total += entry["detections"]
    assert total > 0


def test_litert_runner(tflite_export, image_files, tmp_path):
    summary = _run_script("litert_runner.py", tflite_export.path, *image_files, "--out", tmp_path / "out")
    _check_results(summary, image_files)
    assert len(summary["invoke_ms"]) == len(image_files)


def test_onnx_runner(onnx_export, image_files, tmp_path):
    summary = _run_script("onnx_runner.py", onnx_export.path, *image_files, "--out", tmp_path / "out")
    _check_results(summary, image_files)


def test_runner_results_match_the_exported_graph(tflite_export, tmp_path):
    """A canvas-sized image goes through unresized: the runner's JSON holds exactly the
    graph's detections, masks pasted at scale 1."""
    import tensorflow as tf
    from PIL import Image

    # the first held-out image the tiny model finds something in (it is 80 steps old)
    images = sample_images(8, CANVAS, seed=7)
    graphs = [per_image(run_tflite(tflite_export.path, image[None]), 0) for image in images]
    i = next((i for i, g in enumerate(graphs) if int(g["num_detections"]) > 0), None)
    assert i is not None, "the tiny model detects nothing in 8 images"
    image, graph = images[i], graphs[i]
    path = tmp_path / "canvas.png"
    Image.fromarray(image).save(path)
    summary = _run_script("litert_runner.py", tflite_export.path, path, "--out", tmp_path / "out")
    record = json.loads(Path(summary["results"][0]["json"]).read_text())
    n = int(graph["num_detections"])
    assert len(record["instances"]) == n > 0
    for k, inst in enumerate(record["instances"]):
        assert inst["class_id"] == graph["detection_classes"][k]
        assert inst["score"] == pytest.approx(float(graph["detection_scores"][k]), abs=1e-6)
        np.testing.assert_allclose(inst["box"], graph["detection_boxes"][k], atol=0.01)
        # at scale 1 the paste is the stride-4 mask upsampled x4 (bilinear, half-pixel
        # centres) and thresholded
        up = tf.image.resize(graph["detection_masks"][k][..., None].astype(np.float32), CANVAS, method="bilinear")
        np.testing.assert_array_equal(rle_decode(inst["mask_rle"]), up.numpy()[..., 0] > 0.5)


def rle_decode(rle):
    """Inverse of solo_client.rle_encode (column-major runs, zeros first)."""
    h, w = rle["size"]
    flat = np.concatenate([np.full(c, i % 2, bool) for i, c in enumerate(rle["counts"])])
    return flat.reshape(w, h).T


def test_rest_client_against_a_local_stub(saved_model, loaded, image_files, tmp_path):
    import serving_rest_client
    from serving_stubs import RestStub

    meta = saved_model.path / "assets.extra" / "solo_export.json"
    stub = RestStub(loaded)
    with stub as url:
        summary = serving_rest_client.run(url, image_files, tmp_path / "bytes", signature="image_bytes",
                                          metadata=meta, timeout=60)
        tensor = serving_rest_client.run(url, image_files[:2], tmp_path / "tensor", signature="serving_default",
                                         metadata=meta, timeout=60)
        with pytest.raises(RuntimeError, match="server answered 400"):
            serving_rest_client.post(url, {"signature_name": "nope", "inputs": {}}, timeout=30)
    assert stub.requests == 3  # one image_bytes batch, one request per image for tensors
    _check_results(summary, image_files)
    _check_results(tensor, image_files[:2])
    for a, b in zip(summary["results"][:2], tensor["results"]):  # PNG bytes == the decoded pixels
        ja, jb = (json.loads(Path(x["json"]).read_text())["instances"] for x in (a, b))
        assert [i["score"] for i in ja] == pytest.approx([i["score"] for i in jb], abs=1e-5)


def test_grpc_client_builds_a_correct_request_and_runs(saved_model, loaded, image_files, tmp_path):
    import tensorflow as tf

    import serving_grpc_client
    from serving_stubs import GrpcStub

    request = serving_grpc_client.build_request("solo", "image_bytes", encoded=[p.read_bytes() for p in image_files],
                                                version=3)
    assert request.model_spec.name == "solo" and request.model_spec.signature_name == "image_bytes"
    assert request.model_spec.version.value == 3
    proto = request.inputs["image_bytes"]
    assert proto.dtype == tf.string.as_datatype_enum and [d.size for d in proto.tensor_shape.dim] == [3]
    assert list(tf.make_ndarray(proto)) == [p.read_bytes() for p in image_files]
    from solo_client import read_image

    pixels = read_image(image_files[0])
    request = serving_grpc_client.build_request("solo", "serving_default", images=[pixels])
    proto = request.inputs["images"]
    assert proto.dtype == tf.uint8.as_datatype_enum
    np.testing.assert_array_equal(tf.make_ndarray(proto), pixels[None])

    stub = GrpcStub(loaded)
    with stub as target:
        summary = serving_grpc_client.run(target, "solo", image_files, tmp_path / "out",
                                          metadata=saved_model.path, timeout=60)
        with pytest.raises(RuntimeError, match="NOT_FOUND"):
            serving_grpc_client.predict(target, serving_grpc_client.build_request("other", "image_bytes",
                                                                                    encoded=[b"x"]), timeout=30)
    assert len(stub.requests) == 2 and stub.requests[0].model_spec.signature_name == "image_bytes"
    _check_results(summary, image_files)


# --- host-side helpers (numpy only) ------------------------------------------------------------
def test_paste_mask_maps_a_canvas_rectangle_back_to_the_image():
    from solo_client import letterbox, paste_mask

    image = np.zeros((150, 100, 3), np.uint8)
    canvas, scale, offset = letterbox(image, (64, 64))
    assert canvas.shape == (64, 64, 3) and scale == pytest.approx((64 / 150, 43 / 100))
    mask = np.zeros((16, 16), np.uint8)
    mask[3:10, 2:6] = 1  # canvas rows 12..40, cols 8..24
    pasted = paste_mask(mask, (150, 100), scale, offset)
    # image pixel (r, c) sits at canvas ((r + 0.5) * 64/150, (c + 0.5) * 43/100): rows 28..93
    # and cols 19..55 fall inside the rectangle
    expected = np.zeros((150, 100), bool)
    expected[28:94, 19:56] = True
    iou = (pasted & expected).sum() / (pasted | expected).sum()
    assert iou > 0.97, iou  # only the corners, rounded by the bilinear sampling, differ
    assert not pasted[:25].any() and not pasted[97:].any() and not pasted[:, 59:].any()


def test_rle_encode_round_trips():
    from solo_client import rle_encode

    mask = np.zeros((5, 4), bool)
    mask[1:3, 1] = True
    mask[4, 3] = True
    np.testing.assert_array_equal(rle_decode(rle_encode(mask)), mask)
    assert rle_encode(np.ones((2, 2), bool))["counts"] == [0, 4]


def test_compare_detections_matches_by_class_score_and_iou():
    from solo_tf.parity import compare_detections

    masks = np.zeros((3, 8, 8), np.uint8)
    masks[0, :4] = 1
    masks[1, 4:] = 1
    masks[2, :, :2] = 1
    a = {"detection_masks": masks, "detection_scores": np.array([0.9, 0.5, 0.0505]),
         "detection_classes": np.array([1, 2, 1]), "num_detections": np.array(3)}
    order = [1, 0, 2]
    b = {k: (v[order] if k != "num_detections" else v) for k, v in a.items()}
    assert compare_detections(a, b)["matched"] == 3 and compare_detections(a, b)["min_mask_iou"] == 1.0
    c = dict(a, detection_classes=np.array([1, 3, 1]))
    assert compare_detections(a, c)["unmatched"] == 2
    d = dict(a, num_detections=np.array(2))  # the 0.0505 one lies on the keep threshold 0.05
    assert compare_detections(a, d, borderline=0.05)["unmatched"] == 0
    assert compare_detections(a, d)["unmatched"] == 1


# --- the other variants, quantisation -----------------------------------------------------------
@pytest.mark.parametrize("variant", ["solo", "decoupled_solo"])
def test_parity_other_variants(variant, tiny_trained, tmp_path):
    """SOLO and Decoupled SOLO (trained tiny models): Keras vs reloaded SavedModel vs TFLite
    fp32 vs ONNX, as test_parity_keras_saved_model_tflite_onnx does for SOLOv2; every TFLite
    export also passes the builtin-op check."""
    import tensorflow as tf

    from solo_tf.export import export_model

    model, _ = tiny_trained(variant)
    post = _post()
    canvases = canvases_of(sample_images())
    reference = keras_detections(model, canvases, post)
    sm = export_model(model, "saved_model", tmp_path / "sm")
    served = tf.saved_model.load(str(sm.path)).signatures["serving_default"](images=tf.constant(canvases))
    assert_parity(reference, {k: v.numpy() for k, v in served.items()}, post, f"{variant} saved_model")
    tfl = export_model(model, "tflite", tmp_path / "m.tflite")
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in tfl.ops), tfl.ops
    assert_parity(reference, run_tflite(tfl.path, canvases), post, f"{variant} tflite")
    onx = export_model(model, "onnx", tmp_path / "m.onnx")
    assert_parity(reference, run_onnx(onx.path, canvases), post, f"{variant} onnx")


# Mean IoU of the quantised masks with the fp32 ones (every fp32 detection; 0 when missing).
# Chosen from measurements on this tiny model (64 px canvas, 16x16 masks, where one cell is
# 0.4% of the image): fp16 0.999, dynamic 0.97, int8 0.95 with the backbone and pyramid int8;
# with the heads and mask feature int8 too (the whole network): solov2 0.89, solo 0.97,
# decoupled_solo 0.9 (the demo model's detections scored >= 0.3: 0.99; bench_export --trained).
QUANT_MIN_IOU = {"fp16": 0.98, "dynamic": 0.9, "int8": 0.85}


def calibration_config(model):
    from solo_tf.config import Config, DataConfig
    from solo_tf.data.shapes import ShapesSourceConfig

    return Config(model=model.model_config, data=DataConfig(source="shapes", shapes=ShapesSourceConfig(
        num_train=32, image_size=CANVAS, max_objects=3, object_size=(0.3, 0.6))))


@pytest.mark.parametrize("quantize", ["fp16", "int8", "dynamic"])
def test_quantised_tflite_agrees_with_fp32(quantize, trained, tflite_export, tmp_path):
    """fp16 / int8 (calibrated on 32 images of the training config's source) / dynamic-range
    files store their weights in the lower precision and agree with fp32 on held-out images."""
    from ai_edge_litert.interpreter import Interpreter

    from solo_tf.export import export_model
    from solo_tf.parity import mask_agreement

    model, _ = trained
    canvases = canvases_of(sample_images(12))
    fp32 = run_tflite(tflite_export.path, canvases)
    result = export_model(model, "tflite", tmp_path / f"{quantize}.tflite", quantize=quantize,
                          calibration=32, config=calibration_config(model))
    # the weights are stored in the lower precision (on this tiny model graph constants, not
    # weights, dominate the file, so its size barely moves; on the mobile preset fp16 /
    # dynamic / int8 are 0.51x / 0.28x / 0.29x of fp32: benchmarks/bench_export.py)
    stored = {"fp16": np.float16, "dynamic": np.int8, "int8": np.int8}[quantize]
    details = Interpreter(model_path=str(result.path)).get_tensor_details()
    assert sum(d["dtype"] == stored for d in details) >= 8, (quantize, "weights not stored in", stored)
    out = run_tflite(result.path, canvases)
    agree = mask_agreement([per_image(fp32, i) for i in range(len(canvases))],
                           [per_image(out, i) for i in range(len(canvases))])
    assert agree["count"] >= 10 and agree["mean_iou"] >= QUANT_MIN_IOU[quantize], (quantize, agree)


@pytest.mark.parametrize("variant", ["solo", "decoupled_solo"])
def test_quantised_other_variants_agree_with_fp32(variant, tiny_trained, tmp_path):
    """int8 and dynamic exports of SOLO and Decoupled SOLO: builtin ops only (the export
    checks), run under LiteRT's default XNNPack delegate, masks agree with fp32."""
    from solo_tf.export import export_model
    from solo_tf.parity import mask_agreement

    model, _ = tiny_trained(variant)
    canvases = canvases_of(sample_images(12))
    fp32 = run_tflite(export_model(model, "tflite", tmp_path / "fp32.tflite").path, canvases)
    for quantize in ("int8", "dynamic"):
        result = export_model(model, "tflite", tmp_path / f"{quantize}.tflite", quantize=quantize,
                              calibration=32, config=calibration_config(model))
        assert not any(op.startswith("Flex") or op == "CUSTOM" for op in result.ops), result.ops
        out = run_tflite(result.path, canvases)
        agree = mask_agreement([per_image(fp32, i) for i in range(len(canvases))],
                               [per_image(out, i) for i in range(len(canvases))])
        assert agree["count"] >= 10 and agree["mean_iou"] >= QUANT_MIN_IOU[quantize], (variant, quantize, agree)


def _op_types(path):
    """(op type, input types, output types) of every op of a .tflite file, in order."""
    from ai_edge_litert import schema_py_generated as schema

    from solo_tf.export.tflite import _graph_ops

    data = Path(path).read_bytes()
    graph = schema.Model.GetRootAs(data, 0).Subgraphs(0)
    kind = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}

    def types(ids):
        return [kind[graph.Tensors(t).Type()] for t in ids if t >= 0]

    return [(op, types(ins), types(outs), names) for op, ins, outs, names, _ in _graph_ops(data)]


def test_mobile_preset_int8_and_dynamic_run_in_xnnpack(tmp_path):
    """The mobile preset (untrained; its op list does not depend on the weights): int8 and
    dynamic convert with builtin ops only and run under LiteRT's default XNNPack delegate
    (an int8 conv XNNPack cannot prepare would fail at the first invoke). int8 quantizes
    every conv but the stem, heads and mask feature included, keeps HARD_SWISH and the
    decoder in float; dynamic leaves no depthwise conv with int8 weights (no XNNPack kernel)."""
    from solo_tf.config import load_config
    from solo_tf.export import export_model
    from solo_tf.model import SOLO

    cfg = load_config("solov2_mobile_mnv3l_448")
    model = SOLO(cfg.model, postprocess_config=cfg.postprocess)
    rng = np.random.RandomState(0)
    calibration = [rng.randint(0, 255, (448, 448, 3)).astype(np.uint8) for _ in range(4)]
    canvas = rng.randint(0, 255, (1, 448, 448, 3)).astype(np.uint8)
    for quantize in ("int8", "dynamic"):
        result = export_model(model, "tflite", tmp_path / f"{quantize}.tflite", quantize=quantize,
                              calibration=calibration)
        assert not any(op.startswith("Flex") or op == "CUSTOM" for op in result.ops), result.ops
        out = run_tflite(result.path, canvas)
        assert out["detection_masks"].shape == (1, 30, 112, 112)
        ops = _op_types(result.path)
        if quantize == "int8":
            # float: the stem, and any conv XNNPack cannot prepare in int8 (the file's
            # description lists those; here degenerate ranges of the untrained heads)
            kept = set(result.metadata["int8_kept_float"])
            convs = [(ins[0], names[0]) for op, ins, _, names in ops if op == "CONV_2D"]
            assert convs[0][0] == "FLOAT32", convs[0]
            assert all(t == "INT8" or n in kept for t, n in convs[1:]), (convs, kept)
            assert sum(t == "INT8" for t, _ in convs) >= len(convs) - 4
            assert any("/head_" in n for _, n in convs) and any("mask_feature_head" in n for _, n in convs)
            assert all(ins[0] == "FLOAT32" for op, ins, _, _ in ops if op == "HARD_SWISH")
            decoder = [(op, outs) for op, _, outs, names in ops if any("/decoder_" in n for n in names)]
            assert decoder and not any("INT8" in outs for _, outs in decoder), decoder
        else:
            depthwise = [ins[1] for op, ins, _, _ in ops if op == "DEPTHWISE_CONV_2D"]
            assert depthwise and all(t == "FLOAT32" for t in depthwise), depthwise


# --- slow: full-size masks, another canvas ------------------------------------------------------
@pytest.mark.slow
def test_full_size_masks(trained, tmp_path):
    import tensorflow as tf

    from solo_tf.decoder import decode
    from solo_tf.export import export_model
    from solo_tf.preprocess import letterbox, masks_to_image

    model, _ = trained
    post = _post()
    sm = export_model(model, "saved_model", tmp_path / "sm", full_size_masks=True)
    serve = tf.saved_model.load(str(sm.path)).signatures["serving_default"]
    image = sample_images(1, (90, 60), seed=1)[0]
    out = {k: v.numpy() for k, v in serve(images=tf.constant(image[None])).items()}
    canvas, valid, _ = letterbox(image, CANVAS)
    dets = decode(model(np.asarray(canvas)[None]), model.model_config, post)
    expected = np.asarray(masks_to_image(np.asarray(dets["detection_masks"])[0], valid, image.shape[:2])) > 0.5
    assert out["detection_masks"].shape == (1, 20, 90, 60)
    np.testing.assert_array_equal(out["detection_masks"][0], expected)

    # encoded images of different sizes: each one's masks at its size, zero-padded to the
    # largest; the rest as for that image alone
    other = sample_images(1, (40, 100), seed=2)[0]
    encoded = [tf.io.encode_png(im).numpy() for im in (image, other)]
    batch = {k: v.numpy() for k, v in tf.saved_model.load(str(sm.path)).signatures["image_bytes"](
        image_bytes=tf.constant(encoded)).items()}
    assert batch["detection_masks"].shape == (2, 20, 90, 100)
    for i, im in enumerate((image, other)):
        alone = {k: v.numpy() for k, v in serve(images=tf.constant(im[None])).items()}
        h, w = im.shape[:2]
        np.testing.assert_array_equal(batch["detection_masks"][i][:, :h, :w], alone["detection_masks"][0])
        assert not batch["detection_masks"][i][:, h:].any() and not batch["detection_masks"][i][:, :, w:].any()
        np.testing.assert_allclose(batch["detection_boxes"][i], alone["detection_boxes"][0], atol=1e-4)

    tfl = export_model(model, "tflite", tmp_path / "full.tflite", full_size_masks=True)
    canvases = canvases_of(sample_images(3))
    got = run_tflite(tfl.path, canvases)
    assert got["detection_masks"].shape == (3, 20, 64, 64)
    assert_parity(keras_detections(model, canvases, post, full_size_masks=True), got, post, "tflite full-size")


@pytest.mark.slow
def test_export_at_another_canvas_with_float_input(trained, tmp_path):
    import dataclasses

    from solo_tf.export import export_model
    from solo_tf.model import SOLO

    model, path = trained
    result = export_model(path, "onnx", tmp_path / "wide.onnx", image_size=(64, 96), input_dtype="float32")
    assert result.metadata["canvas"] == [64, 96]
    images = np.stack(sample_images(2, (64, 96))).astype(np.float32)
    out = run_onnx(result.path, images)
    assert out["detection_masks"].shape == (2, 20, 16, 24)
    # the reference: a model built for that canvas, with the same weights
    wide = SOLO(dataclasses.replace(model.model_config, image_size=(64, 96)), labels_config=model.labels_config)
    wide.set_weights(model.get_weights())
    reference = keras_detections(wide, images, _post())
    np.testing.assert_array_equal(out["num_detections"], reference["num_detections"])
    np.testing.assert_allclose(out["detection_scores"], reference["detection_scores"], atol=1e-4)


# --- the MobileNetV3 presets: builtin ops only, at their own canvas --------------------------------
# (untrained: the op list does not depend on the weights; one conversion each, ~18 s here)
@pytest.mark.parametrize("preset", ["solov2_mobile_mnv3l_448", "solov2_light_mnv3l_448",
                                    "decoupled_solo_light_mnv3l_448"])
def test_mobile_presets_convert_with_builtin_ops(preset, tmp_path):
    from solo_tf.config import load_config
    from solo_tf.export import export_model
    from solo_tf.model import SOLO

    cfg = load_config(preset)
    model = SOLO(cfg.model, postprocess_config=cfg.postprocess)
    result = export_model(model, "tflite", tmp_path / "m.tflite")
    assert not any(op.startswith("Flex") or op == "CUSTOM" for op in result.ops)
    canvas = np.zeros((1, *cfg.model.image_size, 3), np.uint8)
    out = run_tflite(result.path, canvas)
    assert out["detection_masks"].shape[1:] == (cfg.postprocess.max_per_img, *(s // 4 for s in cfg.model.image_size))


# --- a zoo-style light model at the reference's test scale -------------------------------------
LIGHT_TEST_SCALE = (448, 768)  # the reference tests SOLOv2-light at (768, 448) (w, h)


def light_standin():
    """solov2_light_r18's layout (5 levels, strides (8, 8, 16, 32, 32), grids (40, 36, 24, 16,
    12), 2 stacked head convs, the 4-level mask feature, the 512x768 portrait canvas,
    nms_pre 500, K 100) on the tiny backbone with 32-channel pyramid and heads: the R18 graph
    converts in ~1 min per format here, this one in seconds. Random weights, the category
    and kernel output convs' weights x30 so that scores spread over (0.1, 1) and masks are
    distinct (the Normal(0, 0.01) init gives every cell ~the 0.01 prior and masks at ~0.5)."""
    import dataclasses

    import keras

    from solo_tf.config import load_config
    from solo_tf.model import SOLO

    cfg = load_config("solov2_light_r18")
    model_cfg = dataclasses.replace(cfg.model, backbone="tiny", fpn_channels=32, head_channels=32,
                                    mask_feature_channels=16, mask_channels=16, norm_groups=8)
    keras.utils.set_random_seed(0)
    model = SOLO(model_cfg, postprocess_config=cfg.postprocess)
    head = model.get_layer("head")
    for layer in (head.cate_out, head.kernel_out):
        kernel, bias = layer.get_weights()
        layer.set_weights([kernel * 30.0, bias])
    return model


def test_light_model_exported_at_its_test_scale_matches_keras(tmp_path):
    """A light model (its canvas 512x768, portrait too) exported at the published test scale
    448x768: LiteRT and ONNX Runtime give the detections Keras gives on that canvas."""
    from solo_tf.export import export_model
    from solo_tf.inference import build_inference_model

    model = light_standin()
    post = model.postprocess_config
    images = np.stack(sample_images(2, LIGHT_TEST_SCALE))
    graph = build_inference_model(model, post, LIGHT_TEST_SCALE, full_size_masks=False)
    reference = {k: np.asarray(v) for k, v in graph.predict_on_batch(images.astype(np.float32)).items()}
    reference["detection_masks"] = (reference["detection_masks"] > post.mask_thr).astype(np.uint8)
    assert reference["detection_masks"].shape == (2, 100, 112, 192)
    assert (reference["num_detections"] >= 5).all(), reference["num_detections"]
    # all K slots are filled: a detection scored at the K-th score may be the K+1-th on the
    # other side (the same as one on the keep threshold)
    cut = float(reference["detection_scores"][:, -1].max())
    tfl = export_model(model, "tflite", tmp_path / "light.tflite", image_size=LIGHT_TEST_SCALE)
    assert tfl.metadata["canvas"] == list(LIGHT_TEST_SCALE)
    assert_parity(reference, run_tflite(tfl.path, images), post, "light tflite 448x768", borderline=cut)
    onx = export_model(model, "onnx", tmp_path / "light.onnx", image_size=LIGHT_TEST_SCALE)
    assert_parity(reference, run_onnx(onx.path, images), post, "light onnx 448x768", borderline=cut)
