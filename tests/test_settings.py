"""solo_tf.settings.resolve: the one precedence of evaluate, predict and export
(flags > a config the user named > the model's own > config.yaml beside it > defaults)."""

import shutil
from pathlib import Path

import pytest

from solo_tf.config import Config, ConfigError, PostprocessConfig, load_config
from solo_tf.settings import resolve

DATA = Path(__file__).resolve().parent / "data"
FIXTURE = DATA / "solov2_tiny_v2.keras"  # saved with postprocess.max_per_img 5, category ids [3, 5, 9]


@pytest.fixture(scope="module")
def model():
    from solo_tf.saving import load_model

    return load_model(FIXTURE)


def _yaml(path, **post):
    cfg = Config()
    cfg.postprocess = PostprocessConfig(**post)
    cfg.train.batch_size = 3
    cfg.to_yaml(path)
    return path


def test_precedence_of_postprocess_and_config(model, tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    path = Path(shutil.copy(FIXTURE, folder / "model.keras"))
    own = model.postprocess_config

    # nothing named, nothing beside: the model's own settings, the default data config
    s = resolve(path)
    assert s.postprocess == own and s.config_source == "defaults" and s.model_path == path
    assert s.config.model == s.model.model_config and s.config.labels.category_ids == [3, 5, 9]

    # config.yaml beside the model: its data/train sections; post-processing stays the model's own
    _yaml(folder / "config.yaml", score_thr=0.7, max_per_img=9)
    s = resolve(path)
    assert s.config_source == "beside" and s.config.train.batch_size == 3
    assert s.postprocess == own

    # a config the user names beats both, post-processing included
    named = _yaml(tmp_path / "named.yaml", score_thr=0.4, max_per_img=7, nms_pre=50)
    s = resolve(path, config=str(named))
    assert s.config_source == "given"
    assert (s.postprocess.score_thr, s.postprocess.max_per_img, s.postprocess.nms_pre) == (0.4, 7, 50)
    assert s.config.postprocess == s.postprocess

    # flags beat the named config field by field; the rest stays the named config's
    s = resolve(path, config=str(named), postprocess={"score_thr": 0.25, "kernel": "linear"})
    assert (s.postprocess.score_thr, s.postprocess.kernel, s.postprocess.max_per_img) == (0.25, "linear", 7)
    # ... and the model's own when no config is named
    s = resolve(model, postprocess={"max_per_img": 2})
    assert s.postprocess.max_per_img == 2 and s.postprocess.score_thr == own.score_thr
    assert s.model is model and s.model_path is None

    # a whole PostprocessConfig is used as it is
    whole = PostprocessConfig(score_thr=0.9)
    assert resolve(model, postprocess=whole).postprocess == whole


def test_model_sections_are_always_the_models_own(model, tmp_path):
    other = load_config("solov2_r50")  # another architecture and 80 classes
    s = resolve(model, config=other)
    assert s.config.model == model.model_config and s.config.labels == model.labels_config
    assert other.model.backbone == "resnet50"  # the caller's config is not changed


def test_bad_settings_name_the_field(model, tmp_path):
    with pytest.raises(ConfigError, match="postprocess.kernel"):
        resolve(model, postprocess={"kernel": "box"})
    with pytest.raises(ConfigError, match="unknown key 'postprocess.score'"):
        resolve(model, postprocess={"score": 0.3})
    with pytest.raises(FileNotFoundError):
        resolve(tmp_path / "missing.keras")
