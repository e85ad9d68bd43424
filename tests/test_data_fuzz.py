"""Property-based fuzzing of the COCO and CIS680 readers: malformed input raises DataError only.

Each example starts from a valid fixture (the ones test_coco / test_cis680 build), breaks it
in a random way, then reads it fully (construct, then load every record). Anything but
DataError escaping - or the process crashing in pycocotools' C code - fails the test.
"""

import json
import os
import tempfile
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("pycocotools")
h5py = pytest.importorskip("h5py")
hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from test_cis680 import LABELS, make_arrays, object_array, write_cis680  # noqa: E402
from test_coco import coco_json, write_coco  # noqa: E402

from solo_tf.data.cis680 import Cis680Dataset  # noqa: E402
from solo_tf.data.coco import CocoDataset  # noqa: E402
from solo_tf.data.errors import DataError  # noqa: E402

# SOLO_FUZZ_EXAMPLES raises the count for a longer local run (CI keeps 50).
FUZZ = settings(
    max_examples=int(os.environ.get("SOLO_FUZZ_EXAMPLES", "50")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)

edge_values = st.sampled_from([0, -1, 1, 2, 3, 1 << 31, 1 << 62, -(1 << 40), 1e308, -0.5, 0.5, float("nan"),
                               float("inf"), "", "0", "P", "\x00", [], {}, [[]], [0], [1, 2], None, True, False])
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.floats() | st.text(max_size=8) | edge_values,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=8,
)


def mutate_json(data, draw):
    """Replace, delete or insert at a random place inside ``data`` (a nested dict/list)."""
    parent, key = None, None
    node = data
    while isinstance(node, (dict, list)) and node and draw(st.booleans()):
        keys = list(node) if isinstance(node, dict) else list(range(len(node)))
        parent, key = node, draw(st.sampled_from(keys))
        node = node[key]
    op = draw(st.sampled_from(["replace", "delete", "insert"]))
    if parent is None:
        return draw(json_values) if op == "replace" else data
    if op == "replace":
        parent[key] = draw(json_values)
    elif op == "delete":
        del parent[key]
    elif isinstance(parent, list):
        parent.insert(key, draw(json_values))
    else:
        parent[draw(st.text(max_size=6))] = draw(json_values)
    return data


def read_all_coco(ann, image_dir, skip_bad, check_images):
    ds = CocoDataset(ann, image_dir, skip_bad=skip_bad, check_images=check_images, progress=False)
    for k in range(len(ds)):
        r = ds.load(k)
        assert r["masks"].shape[1:] == r["image"].shape[:2] and len(r["masks"]) == len(r["classes"])
        assert np.all((r["classes"] >= 0) & (r["classes"] < ds.num_classes))


@FUZZ
@given(st.data())
def test_coco_json_mutations_raise_only_data_error(data):
    doc = coco_json()
    for _ in range(data.draw(st.integers(1, 3))):
        doc = mutate_json(doc, data.draw)
    text = json.dumps(doc)
    if data.draw(st.booleans()):
        text = text[: data.draw(st.integers(0, len(text)))]
    with tempfile.TemporaryDirectory() as tmp:
        ann, image_dir = write_coco(Path(tmp), doc)
        ann.write_text(text)
        try:
            read_all_coco(ann, image_dir, data.draw(st.booleans()), data.draw(st.booleans()))
        except DataError:
            pass


rle_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=130), max_size=16)


@FUZZ
@given(counts=st.one_of(rle_text, st.lists(st.integers(-5, 2000), max_size=6)), skip_bad=st.booleans())
def test_coco_rle_counts_never_crash(counts, skip_bad):
    doc = coco_json()
    doc["annotations"][1]["segmentation"]["counts"] = counts  # image 11 is 40 x 50
    with tempfile.TemporaryDirectory() as tmp:
        ann, image_dir = write_coco(Path(tmp), doc)
        try:
            read_all_coco(ann, image_dir, skip_bad, False)
        except DataError:
            pass


@FUZZ
@given(positions=st.lists(st.integers(0, 10**6), min_size=1, max_size=8), value=st.integers(0, 255),
       cut=st.booleans(), skip_bad=st.booleans())
def test_corrupt_image_bytes_raise_only_data_error(positions, value, cut, skip_bad):
    with tempfile.TemporaryDirectory() as tmp:
        ann, image_dir = write_coco(Path(tmp))
        path = image_dir / "img_11.png"
        raw = bytearray(path.read_bytes())
        for p in positions:
            raw[p % len(raw)] = value
        if cut:
            raw = raw[: positions[0] % len(raw)]
        path.write_bytes(bytes(raw))
        try:
            read_all_coco(ann, image_dir, skip_bad, True)
        except DataError:
            pass


label_values = st.integers(-2, 5)
label_entry = st.one_of(
    st.lists(label_values, max_size=3),
    st.sampled_from([None, "ab", 1.5, {"a": 1}, [[1, 2]], [1.0, 2.0], 2]),
)


@FUZZ
@given(st.data())
def test_cis680_mutations_raise_only_data_error(data):
    draw = data.draw
    labels = [list(v) for v in LABELS]
    if draw(st.booleans()):
        labels = draw(st.lists(st.lists(label_values, max_size=3), min_size=1, max_size=5))
    n_images = len(labels)
    images, masks, boxes = make_arrays(labels if all(isinstance(v, list) for v in labels) else [[]] * n_images)
    if draw(st.booleans()):  # break one label entry's type
        labels[draw(st.integers(0, n_images - 1))] = draw(label_entry)
    extra = draw(st.integers(-1, 1))
    if extra < 0 and len(masks):
        masks = masks[:-1]
    elif extra > 0:
        masks = np.concatenate([masks, masks[:1] if len(masks) else np.zeros((1, 30, 40), np.uint8)])
    if draw(st.booleans()) and len(masks):
        masks = masks.copy()
        masks[draw(st.integers(0, len(masks) - 1))] = 0  # an empty mask
    shape_change = draw(st.sampled_from(["none", "mask_w", "image_rank", "image_dtype", "mask_dtype"]))
    if shape_change == "mask_w":
        masks = masks[..., :-1]
    elif shape_change == "image_rank":
        images = images[:, 0]
    elif shape_change == "image_dtype":
        images = images.astype(np.float32)
    elif shape_change == "mask_dtype":
        masks = masks.astype(draw(st.sampled_from([np.float32, np.bool_, np.int16])))
    if draw(st.booleans()):
        boxes = [np.zeros((draw(st.integers(0, 3)), draw(st.sampled_from([4, 3]))), np.float32) for _ in boxes]
    with tempfile.TemporaryDirectory() as tmp:
        label_array = object_array([np.array(v) if isinstance(v, list) else v for v in labels])
        paths = write_cis680(Path(tmp), labels=[[]] * n_images, images=images, masks=masks, boxes=boxes,
                             label_array=label_array)
        if draw(st.booleans()):  # corrupt one file's bytes
            which = draw(st.sampled_from(["images", "masks", "labels", "bboxes"]))
            raw = bytearray(paths[which].read_bytes())
            for p in draw(st.lists(st.integers(0, 10**6), min_size=1, max_size=6)):
                raw[p % len(raw)] = draw(st.integers(0, 255))
            paths[which].write_bytes(bytes(raw[: draw(st.integers(1, len(raw)))]))
        try:
            ds = Cis680Dataset(paths["images"], paths["masks"], paths["labels"], paths["bboxes"], trust_pickle=True,
                               skip_bad=draw(st.booleans()), progress=False)
            try:
                for i in ds.indices:
                    r = ds.load(i)
                    assert r["masks"].shape[1:] == r["image"].shape[:2] and len(r["masks"]) == len(r["classes"])
                    assert np.all((r["classes"] >= 0) & (r["classes"] < 3))
            finally:
                ds.close()
        except DataError:
            pass
