"""Predict on what people point it at: folders, globs, videos, cameras and streams
(solo_tf.media), Predictor.stream, and the outputs of `predict` (overlays, annotated video,
COCO JSON, mask PNGs), with unreadable inputs named, skipped and counted."""

import json
import re

import numpy as np
import pytest

from conftest import tiny_model_config
from solo_tf.config import LabelsConfig, PostprocessConfig
from solo_tf.model import SOLO

FPS = 10
NUM_FRAMES = 6


@pytest.fixture(scope="module")
def model_path(tmp_path_factory):
    """An untrained tiny SOLOv2 whose decoder keeps every candidate (score 0): every frame has
    instances to draw, count and write."""
    from solo_tf.saving import save_model

    model = SOLO(tiny_model_config("solov2", image_size=(64, 64), num_classes=3),
                 labels_config=LabelsConfig(class_names=["cat", "dog", "traffic light"]),
                 postprocess_config=PostprocessConfig(score_thr=0.0, update_thr=0.0, max_per_img=3))
    return save_model(model, tmp_path_factory.mktemp("model") / "model.keras")


def _frames(n=NUM_FRAMES, h=64, w=64):
    frames = np.zeros((n, h, w, 3), np.uint8)
    for i in range(n):  # a square moving right on a grey ramp
        frames[i] += np.uint8(40 + 10 * i)
        frames[i, 16:40, 4 + 4 * i:28 + 4 * i] = (230, 60, 60)
    return frames


def _write_video(path, frames=None, codec="libx264", **kw):
    import imageio.v3 as iio

    iio.imwrite(path, _frames() if frames is None else frames, plugin="pyav", codec=codec, fps=FPS, **kw)
    return path


def _mjpeg_avi(path):
    """An MJPEG AVI: one JPEG per frame, so a frame can be corrupted alone."""
    return _write_video(path, codec="mjpeg", out_pixel_format="yuvj420p")


def _jpeg_starts(data: bytes):
    return [m.start() for m in re.finditer(b"\xff\xd8\xff", data)]


def _decoded(path):
    import av

    with av.open(str(path)) as c:
        s = c.streams.video[0]
        return [f.to_ndarray(format="rgb24") for f in c.decode(s)], float(s.average_rate)


def _image(path, h, w, seed=0):
    from PIL import Image

    Image.fromarray(np.random.RandomState(seed).randint(0, 255, (h, w, 3), np.uint8)).save(path)
    return path


def test_expand_sources_lists_folders_globs_cameras_and_urls(tmp_path):
    from solo_tf.media import NOT_MEDIA, SkipLog, expand_sources

    d = tmp_path / "shots"
    d.mkdir()
    for name in ("b.png", "a.JPG", "c.mp4", "notes.txt", ".hidden.png"):
        (d / name).write_bytes(b"x")
    (d / "sub").mkdir()
    skipped = SkipLog()
    got = expand_sources([d, str(d / "*.png"), "0", "rtsp://cam.local/live", 3], skipped)
    assert [(s.kind, s.stem) for s in got] == [
        ("image", "a"), ("image", "b"), ("video", "c"),  # the folder, sorted by name, not recursive
        ("image", "b"),  # the glob
        ("camera", "camera0"), ("stream", "live"), ("camera", "camera3"),
    ]
    assert got[4].name == "camera 0" and got[4].live and not got[0].live
    assert skipped.entries == [(str(d / "notes.txt"), NOT_MEDIA, "")]
    with pytest.raises(FileNotFoundError, match="missing.png"):
        expand_sources([d / "missing.png"])
    with pytest.raises(FileNotFoundError, match=r"no files match .*\*\.gif"):
        expand_sources([str(d / "*.gif")])
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="no images or videos in"):
        expand_sources(empty)


def test_predict_on_a_folder_writes_overlays_json_and_masks_and_counts_what_it_skipped(tmp_path, model_path):
    from PIL import Image

    from solo_tf.media import BAD_IMAGE, NOT_MEDIA
    from solo_tf.tasks import predict

    d = tmp_path / "photos"
    d.mkdir()
    _image(d / "wide.png", 48, 80)
    _image(d / "tall.jpg", 90, 40, seed=1)
    (d / "notes.txt").write_text("not an image")
    (d / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    lines = []
    res = predict(model_path, [d], tmp_path / "out", score_thr=0.0, batch_size=2, save_masks=True,
                  log=lines.append)
    out = tmp_path / "out"
    assert res.pictures == [str(out / "tall_pred.png"), str(out / "wide_pred.png")]  # sorted by name
    assert all((out / p).is_file() for p in res.pictures)
    s = res.summary
    assert (s["images"], s["frames"], s["videos"]) == (2, 0, 0)
    assert s["skipped"] == {BAD_IMAGE: 1, NOT_MEDIA: 1} and not s["interrupted"]
    assert any("broken.png" in line and BAD_IMAGE in line for line in lines)  # named as it is skipped
    assert any("notes.txt" in line for line in lines)
    results = json.loads((out / "predictions.json").read_text())
    assert results == res.results and len(results) == s["detections"] > 0
    sizes = {str(d / "tall.jpg"): [90, 40], str(d / "wide.png"): [48, 80]}
    for r in results:
        assert r["segmentation"]["size"] == sizes[r["file_name"]] and "frame_index" not in r
    # one PNG per instance at the image's size, named <stem>_<k>_<label>
    masks = sorted(p.name for p in (out / "masks").iterdir())
    assert len(masks) == s["masks"] == len(results)
    inst = res.instances[0]  # tall.jpg
    for k, label in enumerate(inst["labels"]):
        name = f"tall_{k}_{label.replace(' ', '-')}.png"
        assert name in masks
        with Image.open(out / "masks" / name) as im:
            png = np.asarray(im)
        assert png.shape == (90, 40) and set(np.unique(png)) <= {0, 255}
        np.testing.assert_array_equal(png == 255, inst["masks"][k])


def test_predict_on_a_video_writes_an_annotated_video_and_frame_results(tmp_path, model_path):
    from solo_tf.tasks import predict

    video = _write_video(tmp_path / "clip.mp4")
    res = predict(model_path, video, tmp_path / "out", score_thr=0.0, batch_size=4, save_masks=True)
    out = tmp_path / "out"
    s = res.summary
    assert (s["images"], s["frames"], s["videos"], s["skipped"]) == (0, NUM_FRAMES, 1, {})
    assert res.videos == [str(out / "clip_pred.mp4")] and res.instances == []  # frames are not held
    frames, fps = _decoded(out / "clip_pred.mp4")
    assert len(frames) == NUM_FRAMES and frames[0].shape == (64, 64, 3) and fps == pytest.approx(FPS)
    assert not np.array_equal(frames[0], _frames()[0])  # annotated
    results = json.loads((out / "predictions.json").read_text())
    assert {r["frame_index"] for r in results} == set(range(NUM_FRAMES))
    assert {r["file_name"] for r in results} == {str(video)}
    assert len({r["image_id"] for r in results}) == NUM_FRAMES
    assert any(p.name.startswith("clip_f000005_0_") for p in (out / "masks").iterdir())
    assert not list(out.glob(".*"))  # no temporary file left


def test_a_corrupt_frame_and_a_truncated_video_are_counted_and_the_rest_predicted(tmp_path, model_path):
    from solo_tf.media import BAD_FRAME, ENDED_EARLY
    from solo_tf.tasks import predict

    data = _mjpeg_avi(tmp_path / "ok.avi").read_bytes()
    starts = _jpeg_starts(data)
    assert len(starts) == NUM_FRAMES
    corrupt = bytearray(data)
    end = starts[3] - 16  # frame 2's JPEG, up to the AVI chunk header of frame 3 ("00dc" + size)
    corrupt[starts[2] : end] = b"\x55" * (end - starts[2])
    (tmp_path / "corrupt.avi").write_bytes(bytes(corrupt))
    (tmp_path / "cut.avi").write_bytes(data[: starts[4] + 40])  # ends inside frame 4
    lines = []
    res = predict(model_path, [tmp_path / "corrupt.avi", tmp_path / "cut.avi"], tmp_path / "out", score_thr=0.0,
                  batch_size=4, log=lines.append)
    s = res.summary
    assert s["frames"] == (NUM_FRAMES - 1) + 4 and s["videos"] == 2
    assert s["skipped"][BAD_FRAME] >= 2 and s["skipped"][ENDED_EARLY] == 1  # corrupt frame 2; cut frame 4
    assert any(name == f"{tmp_path / 'corrupt.avi'} frame 2" and why == BAD_FRAME for name, why, _ in res.skipped)
    assert any("cut.avi" in line and ENDED_EARLY in line for line in lines)
    indices = {r["frame_index"] for r in res.results if r["file_name"].endswith("corrupt.avi")}
    assert indices == {0, 1, 3, 4, 5}  # the lost frame leaves a gap; the frames after it keep their numbers
    frames, _ = _decoded(tmp_path / "out" / "corrupt_pred.mp4")
    assert len(frames) == NUM_FRAMES - 1
    assert len(_decoded(tmp_path / "out" / "cut_pred.mp4")[0]) == 4


def test_stream_yields_one_result_per_frame_without_holding_the_video(tmp_path, model_path):
    from solo_tf.inference import FrameResult, Predictor
    from solo_tf.media import SkipLog

    video = _write_video(tmp_path / "clip.mp4")
    predictor = Predictor(model_path, batch_size=4)
    stream = predictor.stream(video)
    first = next(stream)  # frames come as they are predicted
    assert isinstance(first, FrameResult) and first.frame_index == 0 and first.fps == pytest.approx(FPS)
    rest = list(stream)
    assert [r.frame_index for r in [first] + rest] == list(range(NUM_FRAMES))
    for r in [first] + rest:
        assert r.name == str(video) and r.image.shape == (64, 64, 3) and r.image.dtype == np.uint8
        n = len(r.instances["scores"])
        assert n > 0 and r.instances["masks"].shape == (n, 64, 64)
    # the decoded frame itself (a lossy codec: close on average, chroma blurred at edges)
    assert np.abs(rest[-1].image.astype(int) - _frames()[-1]).mean() < 3
    # the same as Predictor.predict on the decoded frames
    want = predictor.predict([r.image for r in [first] + rest])
    for r, w in zip([first] + rest, want):
        np.testing.assert_allclose(r.instances["scores"], w["scores"], atol=1e-5)
    # a stream URL (here a local file through FFmpeg's file protocol): read to its end, live
    skipped = SkipLog()
    live = list(predictor.stream(f"file://{video}", skipped=skipped))
    assert len(live) == NUM_FRAMES and live[0].source.live and skipped.total == 0
    # leaving the loop early stops the reader
    for r in predictor.stream([video, video]):
        break


def test_ctrl_c_ends_the_run_and_writes_what_was_done(tmp_path, model_path, monkeypatch):
    from solo_tf.inference import InferenceModels
    from solo_tf.tasks import predict

    video = _write_video(tmp_path / "clip.mp4")
    real, calls = InferenceModels.predict_on_batch, []

    def interrupted_on_the_second_batch(self, canvases):
        calls.append(len(canvases))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, canvases)

    monkeypatch.setattr(InferenceModels, "predict_on_batch", interrupted_on_the_second_batch)
    res = predict(model_path, video, tmp_path / "out", score_thr=0.0, batch_size=2)
    assert res.summary["interrupted"] and res.summary["frames"] == 2 and not res.summary["live"]
    assert {r["frame_index"] for r in json.loads(res.results_path.read_text())} == {0, 1}
    assert len(_decoded(tmp_path / "out" / "clip_pred.mp4")[0]) == 2


def test_predict_command_on_a_folder_and_a_video(tmp_path, model_path, capsys):
    from solo_tf.cli import main

    d = tmp_path / "in"
    d.mkdir()
    _image(d / "a.png", 64, 64)
    (d / "readme.md").write_text("#")
    _write_video(d / "clip.mp4")
    out = tmp_path / "out"
    assert main(["predict", "--model", str(model_path), str(d), "--out", str(out), "--score-thr", "0",
                 "--batch-size", "3", "--save-masks", "--no-overlays"]) == 0
    captured = capsys.readouterr()
    summary = json.loads(captured.out.strip().splitlines()[-1])
    assert (summary["images"], summary["videos"], summary["frames"]) == (1, 1, NUM_FRAMES)
    assert summary["skipped"] == {"not an image or video": 1}
    assert summary["pictures"] == summary["annotated_videos"] == []  # --no-overlays
    assert re.search(r"predicted 1 image and 6 frames of video: \d+ detections.*skipped 1 not an image or video",
                     captured.err)
    assert not list(out.glob("*_pred.*"))  # --no-overlays
    assert len(list((out / "masks").iterdir())) == summary["masks"] == summary["detections"]
    assert len(json.loads((out / "predictions.json").read_text())) == summary["detections"]
    # everything unreadable: an error naming it, exit 1
    (tmp_path / "bad.mp4").write_bytes(b"not a video")
    assert main(["predict", "--model", str(model_path), str(tmp_path / "bad.mp4"), "--out", str(out)]) == 1
    assert "bad.mp4" in capsys.readouterr().err


def test_prefetch_reads_ahead_raises_the_readers_error_and_stops_when_closed():
    import threading

    from solo_tf.media import Prefetch

    def failing():
        yield 1
        yield 2
        raise ValueError("bad frame 3")

    got = []
    with pytest.raises(ValueError, match="bad frame 3"):
        for x in Prefetch(failing(), size=1):
            got.append(x)
    assert got == [1, 2]

    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()  # the reader closes what it reads when the caller leaves

    p = Prefetch(endless(), size=2)
    assert [next(p) for _ in range(3)] == [0, 1, 2]
    p.close()
    assert closed.wait(5.0)


def test_annotate_frame_blends_and_outlines_each_instance_in_its_class_colour():
    from solo_tf.visualize import _palette, annotate_frame

    image = np.full((40, 50, 3), 100, np.uint8)
    mask = np.zeros((1, 40, 50), bool)
    mask[0, 10:30, 5:25] = True
    inst = {"masks": mask, "classes": np.array([1]), "scores": np.array([0.9], np.float32),
            "boxes": np.array([[5, 10, 25, 30]], np.float32)}
    out = annotate_frame(image, inst, ["a", "b"])
    colour = _palette(2)[1] * 255
    assert out.shape == image.shape and out.dtype == np.uint8
    np.testing.assert_allclose(out[26, 20], 0.5 * 100 + 0.5 * colour, atol=1)  # inside, below the label: blended
    np.testing.assert_allclose(out[29, 15], colour, atol=1)  # the outline (bottom edge)
    np.testing.assert_array_equal(out[38, 45], [100, 100, 100])  # outside: untouched
    np.testing.assert_array_equal(annotate_frame(image, {k: v[:0] for k, v in inst.items()}), image)
