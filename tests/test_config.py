import pytest

from solo_tf.config import Config, ConfigError, ModelConfig, load_config, preset_names
from solo_tf.model import build_model
from solo_tf.variants import check_model_config, get_variant

PAPER = ["solo_r50", "solov2_r50", "solov2_r101", "solov2_light_r18", "solov2_light_r34", "solov2_light_r50"]


@pytest.mark.parametrize("name", PAPER + ["shapes_demo"])
def test_presets_exist_and_load(name):
    assert name in preset_names()
    cfg = load_config(name)
    assert cfg.name == name


def test_paper_numbers():
    v2 = load_config("solov2_r50").model
    assert v2.num_grids == (40, 36, 24, 16, 12)
    assert v2.strides == (8, 8, 16, 32, 32)
    assert v2.scale_ranges == ((1, 96), (48, 192), (96, 384), (192, 768), (384, 2048))
    assert (v2.head_channels, v2.stacked_convs, v2.mask_channels) == (512, 4, 256)
    solo = load_config("solo_r50").model
    assert (solo.variant, solo.head_channels, solo.stacked_convs) == ("solo", 256, 7)
    assert get_variant(solo).mask_strides == (4, 4, 8, 16, 16)
    light = load_config("solov2_light_r18").model
    assert (light.stacked_convs, light.mask_channels) == (2, 128)
    assert light.scale_ranges[0] == (1, 56)


def test_yaml_round_trip(tmp_path):
    cfg = load_config("solov2_light_r34")
    path = tmp_path / "c.yaml"
    cfg.to_yaml(path)
    assert Config.from_yaml(path) == cfg


def test_unknown_key_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("model:\n  num_grid: [1]\n")
    with pytest.raises(ConfigError, match=r"model\.num_grid"):
        Config.from_yaml(path)


def test_bad_value_is_named(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epochs: many\n")
    with pytest.raises(ConfigError, match=r"train\.epochs"):
        Config.from_yaml(path)
    path.write_text("model:\n  image_size: [100, 128]\n")
    with pytest.raises(ConfigError, match=r"image_size"):
        Config.from_yaml(path)
    # names are checked where the registries live, whenever a model is built
    path.write_text("model:\n  variant: solo3\n")
    with pytest.raises(ConfigError, match=r"model\.variant must be one of solo, decoupled_solo, solov2"):
        check_model_config(Config.from_yaml(path).model)
    path.write_text("model:\n  backbone: resnet19\n")
    with pytest.raises(ConfigError, match=r"model\.backbone must be one of .*resnet18"):
        build_model(Config.from_yaml(path))


def test_config_module_imports_nothing_of_the_model():
    """config.py is the schema alone: loading a preset imports no Keras and no model module
    (the import-cycles check in CI guards the rest)."""
    import subprocess
    import sys

    code = ("import sys, solo_tf.config as c; c.load_config('solov2_r50'); "
            "bad = sorted(m for m in sys.modules if m == 'keras' or m.startswith(('solo_tf.variants', 'solo_tf.model', "
            "'solo_tf.backbones'))); print(bad); sys.exit(1 if bad else 0)")
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


def test_mismatched_levels_rejected():
    with pytest.raises(ConfigError, match="one entry per level"):
        ModelConfig(num_grids=(40, 36)).validate()


def test_missing_preset_lists_the_presets():
    with pytest.raises(ConfigError, match="solov2_r50"):
        load_config("no_such_preset")


OLD_LAYOUT = """\
name: old
model:
  variant: solo
  backbone: tiny
  num_classes: 3
  class_names: [a, b, c]
  category_ids: [1, 5, 9]
  image_size: [64, 64]
  max_instances: 7
  dice_weight: 2.5
data:
  source: coco
  train_annotations: train.json
  train_images: imgs
  cis680_images: x.h5
  trust_pickle: true
  num_train: 12
  shapes_image_size: [96, 96]
  flip: false
"""


def test_old_layout_is_migrated(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text(OLD_LAYOUT)
    cfg = Config.from_yaml(path)
    assert cfg.version == 2
    assert cfg.labels.class_names == ["a", "b", "c"] and cfg.labels.category_ids == [1, 5, 9]
    assert cfg.loss.dice_weight == 2.5 and cfg.loss.focal_weight == 1.0
    assert cfg.data.max_instances == 7
    assert (cfg.data.coco.train_annotations, cfg.data.coco.train_images) == ("train.json", "imgs")
    assert cfg.data.cis680.images == "x.h5" and cfg.data.cis680.trust_pickle is True
    assert cfg.data.shapes.num_train == 12 and cfg.data.shapes.image_size == (96, 96)
    assert cfg.data.flip is False and cfg.model.variant == "solo"
    # written back in the new layout, it reads the same
    cfg.to_yaml(tmp_path / "new.yaml")
    assert "version: 2" in (tmp_path / "new.yaml").read_text()
    assert Config.from_yaml(tmp_path / "new.yaml") == cfg


def test_newer_version_says_to_upgrade(tmp_path):
    path = tmp_path / "future.yaml"
    path.write_text("version: 99\nname: x\n")
    with pytest.raises(ConfigError, match=r"version 99 .*newer solo-tf.*upgrade"):
        Config.from_yaml(path)


def test_labels_must_match_num_classes(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("version: 2\nmodel: {num_classes: 2}\nlabels: {class_names: [a, b, c]}\n")
    with pytest.raises(ConfigError, match=r"labels\.class_names has 3 names for 2 classes"):
        Config.from_yaml(path)


def test_sections_are_separate():
    cfg = Config()
    assert not hasattr(cfg.model, "max_instances") and not hasattr(cfg.model, "class_names")
    assert not hasattr(cfg.model, "focal_alpha") and not hasattr(cfg.data, "train_annotations")
    assert cfg.data.max_instances == 100 and cfg.loss.dice_weight == 3.0


def test_presets_follow_the_reference_warmup_and_discrete_scales():
    """SOLOv2 configs of the reference warm up from 1% of the rate, SOLO / Decoupled SOLO
    from a third; multi-scale training draws short sides in 32-pixel steps (img_scale lists,
    multiscale_mode='value')."""
    from solo_tf.config import load_config, preset_names

    for name in preset_names():
        cfg = load_config(name)
        if name == "shapes_demo":
            continue
        expected = 0.01 if cfg.model.variant == "solov2" else 1.0 / 3.0
        assert cfg.train.warmup_ratio == pytest.approx(expected), name
        if cfg.data.multiscale:
            assert cfg.data.multiscale_step == 32, name


def test_presets_train_at_the_reference_image_sizes():
    """Keep-ratio resize for landscape and portrait (a transposed canvas), and the light
    models' short sides 352-512 under a long side of 768 on a canvas that holds them."""
    from solo_tf.config import load_config

    for name in PAPER + ["decoupled_solo_r50"]:
        cfg = load_config(name)
        assert cfg.model.portrait_canvas and len(cfg.model.canvases) == 2, name
        lo, hi = cfg.data.multiscale
        h, w = cfg.model.image_size
        assert hi <= min(h, w) and cfg.data.max_long_side <= max(h, w), name  # the largest scale fits
    for name in ("solov2_light_r18", "solov2_light_r34", "solov2_light_r50"):
        data = load_config(name).data
        assert tuple(data.multiscale) == (352, 512) and data.max_long_side == 768, name
    for name in ("solov2_r50", "solov2_r101", "solo_r50"):
        data = load_config(name).data
        assert tuple(data.multiscale) == (640, 800) and data.max_long_side == 1333, name
