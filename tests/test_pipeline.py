import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from solo_tf.config import Config, DataConfig, ModelConfig  # noqa: E402
from solo_tf.data.pipeline import PipelineStats, build_datasets, prepare  # noqa: E402
from solo_tf.data.sources import shapes_source  # noqa: E402
from solo_tf.data.shapes import CLASS_NAMES  # noqa: E402

SIGNATURE = {
    "image": tf.TensorSpec((None, None, 3), tf.uint8),
    "masks": tf.TensorSpec((None, None, None), tf.uint8),
    "classes": tf.TensorSpec((None,), tf.int32),
    "image_id": tf.TensorSpec((), tf.int64),
}


def records_ds(records):
    return tf.data.Dataset.from_generator(lambda: iter(records), output_signature=SIGNATURE)


def make_record(h=100, w=150, image_id=0, seed=0):
    """A textured h x w image with a rectangle, a disc and a thin bar (classes 0, 1, 2)."""
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    masks = np.zeros((3, h, w), np.uint8)
    masks[0, 10:50, 20:70] = 1
    yy, xx = np.mgrid[:h, :w]
    masks[1] = (yy - 60) ** 2 + (xx - 110) ** 2 <= 20**2
    masks[1, 10:50, 20:70] = 0
    masks[2, 70:95, 30:32] = 1  # a 2-px bar: thinner than one stride-4 cell once resized
    return {"image": image, "masks": masks, "classes": np.array([0, 1, 2], np.int32), "image_id": np.int64(image_id)}


def configs(image_size=(128, 128), max_instances=4, num_classes=3, **data):
    model = ModelConfig(image_size=image_size, num_classes=num_classes)
    data = DataConfig(**{"flip": False, "max_instances": max_instances, **data})
    return model, data


def run(records, model, data, batch_size=2, training=False, with_meta=True, stats=None):
    ds = prepare(records_ds(records), model, data, batch_size, training=training, with_meta=with_meta,
                 drop_remainder=False, stats=stats)
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds]


def nearest_resized_masks(masks, nh, nw, H, W):
    """The pipeline's geometry spelled out in numpy: canvas pixel c < nw takes source pixel
    floor((c + 0.5) * w / nw) (half-pixel centres), padded with zeros to (n, H, W)."""
    n, h, w = masks.shape
    iy = np.minimum(np.floor((np.arange(nh) + 0.5) * h / nh).astype(int), h - 1)
    ix = np.minimum(np.floor((np.arange(nw) + 0.5) * w / nw).astype(int), w - 1)
    out = np.zeros((n, H, W), np.uint8)
    out[:, :nh, :nw] = masks[:, iy][:, :, ix]
    return out


def bilinear_resized_masks(masks, nh, nw, H, W):
    """Each mask resized as the image is (bilinear, antialiased when it shrinks), thresholded
    at 0.5, padded."""
    out = np.zeros((len(masks), H, W), np.uint8)
    shrinks = nh < masks.shape[1] or nw < masks.shape[2]
    for k, m in enumerate(masks):
        r = tf.image.resize(m[..., None].astype(np.float32), (nh, nw), antialias=shrinks).numpy()[..., 0]
        out[k, :nh, :nw] = r >= 0.5
    return out


def edge_pixels(masks):
    """(n, H, W) bool: pixels within one pixel (8-neighbourhood) of a change of the mask."""
    p = np.pad(masks.astype(bool), [(0, 0), (1, 1), (1, 1)], mode="edge")
    H, W = masks.shape[1:]
    shifts = [p[:, 1 + dy:1 + dy + H, 1 + dx:1 + dx + W] for dy in (-1, 0, 1) for dx in (-1, 0, 1)]
    return np.any(shifts, 0) & ~np.all(shifts, 0)


def numpy_boxes_centers(masks):
    boxes, centers = [], []
    for m in masks:
        ys, xs = np.nonzero(m)
        boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
        centers.append([xs.mean(), ys.mean()])
    return np.array(boxes, np.float32), np.array(centers, np.float32)


def test_shapes_dtypes_and_padding_for_a_non_square_image():
    model, data = configs()
    rec = make_record()
    (images, y, meta), = run([rec], model, data, batch_size=2)
    assert images.shape == (1, 128, 128, 3) and images.dtype == np.float32
    assert y["classes"].shape == (1, 4) and y["classes"].dtype == np.int32
    assert y["boxes"].shape == (1, 4, 4) and y["boxes"].dtype == np.float32
    assert y["masks"].shape == (1, 4, 32, 32) and y["masks"].dtype == np.uint8
    assert y["centers"].shape == (1, 4, 2) and y["centers"].dtype == np.float32
    # 100x150 fits 128x128 at scale 128/150: 85x128, padded below.
    assert tuple(meta["valid_size"][0]) == (85, 128)
    assert tuple(meta["orig_size"][0]) == (100, 150)
    assert meta["scale"][0] == pytest.approx(128 / 150)
    assert meta["image_id"][0] == 0
    assert (images[0, 85:] == 0).all() and images[0, :85].max() > 0
    assert 0 <= images.min() and images.max() <= 255
    np.testing.assert_array_equal(y["classes"][0], [0, 1, 2, -1])
    assert (y["boxes"][0, 3] == 0).all() and (y["centers"][0, 3] == 0).all() and (y["masks"][0, 3] == 0).all()
    # The image is the source resized, top-left.
    ref = tf.image.resize(rec["image"].astype(np.float32), (85, 128), antialias=True).numpy()
    np.testing.assert_allclose(images[0, :85], np.clip(ref, 0, 255), atol=1e-3)


@pytest.mark.parametrize("size", [(100, 150), (60, 90)])  # shrunk to 85x128, enlarged to 85x128
def test_boxes_centres_and_masks_are_those_of_the_resized_masks(size):
    """Enlarged, the masks are the image's own (plain bilinear) resize thresholded at 0.5,
    exactly; shrunk (antialiased), the nearest map, which differs from that only on edges."""
    model, data = configs()
    rec = make_record(*size)
    if size == (60, 90):  # the same objects at 0.6x
        rec["masks"] = tf.image.resize(make_record()["masks"].transpose(1, 2, 0), size, "nearest").numpy().transpose(2, 0, 1)
    (images, y, meta), = run([rec], model, data)
    assert tuple(meta["valid_size"][0]) == (85, 128)
    bilinear = bilinear_resized_masks(rec["masks"], 85, 128, 128, 128)
    if size == (60, 90):
        full = bilinear
        assert (full != nearest_resized_masks(rec["masks"], 85, 128, 128, 128)).any()  # not the nearest map
    else:
        full = nearest_resized_masks(rec["masks"], 85, 128, 128, 128)
        differ = full != bilinear
        assert differ.sum() < 0.05 * (full | bilinear).sum()
        assert not (differ & ~edge_pixels(full)).any()
    boxes, centers = numpy_boxes_centers(full)
    np.testing.assert_allclose(y["boxes"][0, :3], boxes)
    np.testing.assert_allclose(y["centers"][0, :3], centers, atol=1e-3)
    # Boxes agree with the source boxes scaled, within rounding.
    src_boxes, _ = numpy_boxes_centers(rec["masks"])
    np.testing.assert_allclose(y["boxes"][0, :3], src_boxes * 128 / size[1], atol=1.5)
    # Stride-4 masks: 4x4 area average of the full-resolution mask, >= 0.5.
    avg = full.reshape(3, 32, 4, 32, 4).mean((2, 4))
    np.testing.assert_array_equal(y["masks"][0, :2], (avg[:2] >= 0.5).astype(np.uint8))
    # The thin bar averages below 0.5 everywhere but is kept at its densest cells.
    assert avg[2].max() < 0.5
    np.testing.assert_array_equal(y["masks"][0, 2], (avg[2] >= avg[2].max()).astype(np.uint8))


def test_flip_moves_image_masks_boxes_and_centres_together():
    model, data = configs(flip=True)
    rec = make_record()
    plain, = run([rec], model, configs()[1], batch_size=1)
    outs = run([rec] * 16, model, data, batch_size=1, training=True)
    flipped = [o for o in outs if not np.allclose(o[0], plain[0])]
    same = [o for o in outs if np.allclose(o[0], plain[0])]
    assert flipped and same, "flip should happen about half of the time"
    images, y, meta = flipped[0]
    nw = 128  # the valid width: the whole canvas width here
    np.testing.assert_allclose(images[0], plain[0][0][:, ::-1], atol=1e-4)
    np.testing.assert_array_equal(y["masks"][0, :3], plain[1]["masks"][0, :3, :, ::-1])
    b = plain[1]["boxes"][0, :3]
    np.testing.assert_allclose(y["boxes"][0, :3], np.stack([nw - b[:, 2], b[:, 1], nw - b[:, 0], b[:, 3]], 1))
    c = plain[1]["centers"][0, :3]
    np.testing.assert_allclose(y["centers"][0, :3], np.stack([nw - 1 - c[:, 0], c[:, 1]], 1), atol=1e-3)
    np.testing.assert_array_equal(y["classes"], plain[1]["classes"])


def test_flip_stays_inside_the_valid_region_of_a_letterboxed_image():
    model, data = configs(flip=True)
    rec = make_record(h=150, w=100)  # 128x85: padding on the right
    for images, y, meta in run([rec] * 8, model, data, batch_size=1, training=True):
        assert (images[0, :, 86:] == 0).all()
        assert (y["boxes"][0, :3, 2] <= 86).all()


def test_overflow_keeps_the_largest_objects_in_source_order_and_counts_the_rest():
    h, w = 64, 64
    sizes = [4, 20, 8, 16, 6, 12]  # squares of these sides
    masks = np.zeros((6, h, w), np.uint8)
    for k, s in enumerate(sizes):
        r, c = divmod(k, 3)
        masks[k, r * 32:r * 32 + s, c * 21:c * 21 + s] = 1
    rec = {"image": np.full((h, w, 3), 90, np.uint8), "masks": masks,
           "classes": np.array([0, 1, 2, 0, 1, 2], np.int32), "image_id": np.int64(5)}
    model, data = configs(image_size=(64, 64), max_instances=3)
    stats = PipelineStats()
    (images, y, meta), = run([rec, rec], model, data, stats=stats)
    # Largest three: sides 20 (k=1), 16 (k=3), 12 (k=5), kept in source order.
    np.testing.assert_array_equal(y["classes"], [[1, 0, 2]] * 2)
    np.testing.assert_allclose(y["boxes"][0, :, 2] - y["boxes"][0, :, 0], [20, 16, 12])
    np.testing.assert_array_equal(meta["dropped_overflow"], [3, 3])
    assert stats.as_dict() == {"images": 2, "objects": 12, "dropped_empty": 0, "dropped_overflow": 6}


def test_objects_empty_after_resizing_are_dropped_and_counted():
    h, w = 512, 512
    masks = np.zeros((2, h, w), np.uint8)
    masks[0, 100:300, 100:300] = 1
    masks[1, 400, 400] = 1  # one pixel: vanishes at scale 1/4
    rec = {"image": np.zeros((h, w, 3), np.uint8), "masks": masks,
           "classes": np.array([2, 1], np.int32), "image_id": np.int64(9)}
    model, data = configs()
    stats = PipelineStats()
    (images, y, meta), = run([rec], model, data, stats=stats)
    np.testing.assert_array_equal(y["classes"][0], [2, -1, -1, -1])
    assert meta["dropped_empty"][0] == 1
    assert stats.as_dict()["dropped_empty"] == 1


def test_image_without_objects():
    rec = {"image": np.full((80, 120, 3), 7, np.uint8), "masks": np.zeros((0, 80, 120), np.uint8),
           "classes": np.zeros((0,), np.int32), "image_id": np.int64(3)}
    model, data = configs()
    (images, y, meta), = run([rec], model, data)
    assert (y["classes"] == -1).all() and (y["masks"] == 0).all()
    assert tuple(meta["valid_size"][0]) == (85, 128)


def test_multiscale_stays_inside_the_canvas_and_varies():
    model, data = configs(multiscale=(40, 200), max_long_side=150)
    recs = [make_record(image_id=i) for i in range(12)]
    sizes = set()
    for images, y, meta in run(recs, model, data, batch_size=4, training=True):
        for b in range(len(images)):
            vh, vw = meta["valid_size"][b]
            sizes.add((vh, vw))
            assert vh <= 128 and vw <= 128 and max(vh, vw) <= 150
            assert (images[b, vh:] == 0).all() and (images[b, :, vw:] == 0).all()
            real = y["classes"][b] >= 0
            bx = y["boxes"][b][real]
            assert (bx[:, 2] <= vw).all() and (bx[:, 3] <= vh).all()
            assert (y["masks"][b, :, -(-vh // 4):] == 0).all()
            # Aspect ratio kept.
            assert vw / vh == pytest.approx(1.5, abs=0.05)
    assert len(sizes) > 2


def test_multiscale_step_draws_only_the_listed_short_sides():
    model, data = configs(image_size=(256, 256), multiscale=(64, 160), multiscale_step=32)
    recs = [make_record(image_id=i) for i in range(16)]
    shorts = set()
    for images, y, meta in run(recs, model, data, batch_size=4, training=True):
        shorts |= {int(min(v)) for v in meta["valid_size"]}
    assert shorts <= {64, 96, 128, 160} and len(shorts) >= 3


def test_multiscale_step_must_divide_the_range():
    from solo_tf.config import ConfigError

    with pytest.raises(ConfigError, match="multiscale_step"):
        DataConfig(multiscale=(640, 800), multiscale_step=48).validate()
    DataConfig(multiscale=(640, 800), multiscale_step=32).validate()


def test_training_shuffles_and_batches_with_drop_remainder():
    model, data = configs()
    recs = [make_record(image_id=i) for i in range(7)]
    ds = prepare(records_ds(recs), model, data, 2, training=True, with_meta=True)
    ids = np.concatenate([m["image_id"].numpy() for _, _, m in ds])
    assert len(ids) == 6 and len(set(ids)) == 6
    assert list(ids) != sorted(ids)


def test_bad_record_raises_naming_it_or_is_skipped_on_request():
    bad = make_record(image_id=42)
    bad["classes"] = np.array([0, 1, 7], np.int32)  # class 7 of 3
    model, data = configs()
    with pytest.raises(tf.errors.InvalidArgumentError, match="image_id"):
        run([bad], model, data)
    good = make_record(image_id=1)
    _, data_skip = configs(skip_bad=True)
    out = run([bad, good], model, data_skip, batch_size=2)
    assert list(out[0][2]["image_id"]) == [1]


def test_mismatched_masks_raise():
    bad = make_record(image_id=8)
    bad["masks"] = bad["masks"][:, :90]
    model, data = configs()
    with pytest.raises(tf.errors.InvalidArgumentError, match="masks must be"):
        run([bad], model, data)


def shapes_config():
    cfg = Config()
    cfg.model.image_size = (64, 64)
    cfg.model.num_classes = len(CLASS_NAMES)
    cfg.data.max_instances = 8
    cfg.data.shapes.image_size = (64, 64)
    cfg.data.shapes.num_train, cfg.data.shapes.num_val = 6, 4
    cfg.train.batch_size = 2
    return cfg


def test_shapes_source_records_and_disjoint_splits():
    cfg = shapes_config()
    train = shapes_source(cfg.data, "train", len(CLASS_NAMES))
    val = shapes_source(cfg.data, "val", len(CLASS_NAMES))
    assert train.num_records == 6 and val.num_records == 4 and train.class_names == CLASS_NAMES
    tr = list(train.records.as_numpy_iterator())
    va = list(val.records.as_numpy_iterator())
    assert [r["image_id"] for r in tr] == list(range(6))
    for r in tr:
        assert r["image"].shape == (64, 64, 3) and r["masks"].shape[1:] == (64, 64)
        assert len(r["classes"]) == len(r["masks"]) >= 1
    train_images = {r["image"].tobytes() for r in tr}
    assert not train_images & {r["image"].tobytes() for r in va}


def test_shapes_source_rejects_wrong_num_classes():
    with pytest.raises(ValueError, match="num_classes"):
        shapes_source(shapes_config().data, "train", 80)


def test_build_datasets_for_shapes():
    cfg = shapes_config()
    train_ds, val_ds, info = build_datasets(cfg)
    assert info["class_names"] == list(CLASS_NAMES)
    assert info["category_ids"] is None and info["bad_records"] == []  # generated: ids are indices, nothing bad
    assert (info["num_train"], info["num_val"]) == (6, 4)
    batches = list(train_ds)
    assert len(batches) == 3
    images, y = batches[0]
    assert images.shape == (2, 64, 64, 3) and y["masks"].shape == (2, 8, 16, 16)
    assert info["stats"]["train"].as_dict()["images"] == 6
    assert sum(int(i.shape[0]) for i, _ in val_ds) == 4


def test_a_source_whose_reader_is_not_installed_is_named(monkeypatch):
    from solo_tf.data import registry

    kind = registry.registered()["coco"]
    monkeypatch.setitem(registry._SOURCES, "coco", kind._replace(requires=("solo_tf_not_installed",)))
    cfg = shapes_config()
    cfg.data.source = "coco"
    with pytest.raises(RuntimeError, match="data.source='coco' needs solo_tf_not_installed"):
        build_datasets(cfg)


def test_sources_load_without_the_pipeline():
    import subprocess
    import sys

    code = "import sys, solo_tf.data.sources; print(sorted(m for m in sys.modules if m.startswith('solo_tf.data')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    loaded = out.stdout.strip().splitlines()[-1]
    assert "solo_tf.data.sources" in loaded and "solo_tf.data.pipeline" not in loaded
