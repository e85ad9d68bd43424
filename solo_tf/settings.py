"""Which settings a trained model runs with: the one place that decides it.

``solo-tf evaluate``, ``predict`` and ``export`` (and :func:`solo_tf.tasks.evaluate`,
:func:`solo_tf.tasks.predict`, :func:`solo_tf.export.export_model`) all call
:func:`resolve`; nothing else picks a config or post-processing for a saved model.
"""

from __future__ import annotations

import copy
import dataclasses
import os
from pathlib import Path

import keras

from solo_tf.config import Config, PostprocessConfig, as_section, load_config
from solo_tf.saving import load_model


@dataclasses.dataclass
class Settings:
    """What :func:`resolve` returns.

    ``model``: the loaded :class:`solo_tf.model.SOLO`; ``model_path``: its file (None for a
    model passed in memory); ``config``: a new :class:`~solo_tf.config.Config` whose
    ``model`` and ``labels`` sections are the model's own and whose ``data`` / ``train``
    sections come from the config the user named, else ``config.yaml`` beside the model
    file, else the defaults; ``postprocess``: the decoder settings (also
    ``config.postprocess``); ``config_source``: where ``data`` / ``train`` came from
    (``"given"``, ``"beside"`` or ``"defaults"``).
    """

    model: keras.Model
    model_path: Path | None
    config: Config
    postprocess: PostprocessConfig
    config_source: str


def resolve(model, *, config=None, postprocess=None) -> Settings:
    """The model, config and post-processing that evaluate, predict and export use.

    Args:
        model: a :class:`solo_tf.model.SOLO`, or the path of its ``.keras`` file.
        config: what the user named for this run (``--config``): a
            :class:`~solo_tf.config.Config`, a preset name or a YAML path; None if nothing.
        postprocess: settings given for this run alone (CLI flags such as ``--score-thr``,
            or a Python caller's): a dict of :class:`~solo_tf.config.PostprocessConfig`
            fields, applied over what the levels below give, or a whole
            ``PostprocessConfig`` (or its dict form with every field), used as it is.

    Precedence, first that applies:

    * **post-processing**, field by field where ``postprocess`` is a partial dict:
      1. ``postprocess`` (flags of this run);
      2. the ``postprocess`` section of the config the user named (``config``);
      3. the model's own (saved inside the ``.keras`` file with it);
      4. the ``postprocess`` section of ``config.yaml`` beside the model file;
      5. the defaults of :class:`~solo_tf.config.PostprocessConfig`.
      (A solo-tf model always carries its own, so 4 and 5 serve models built elsewhere.)
    * **model and labels**: always the model's own: the weights fix the architecture, and
      the classes are what it was trained on; a config's ``model`` / ``labels`` sections
      are ignored.
    * **data and train** (evaluation data, int8 calibration images, batch size): the config
      the user named, else ``config.yaml`` beside the model file, else the defaults.

    Returns:
        :class:`Settings`; ``config`` is a new object, the caller's is not changed.

    Raises:
        ConfigError: a bad field in ``postprocess`` or in a named config (naming it).
        FileNotFoundError: no model file, or a named config that does not exist.
    """
    model_path = None
    if not isinstance(model, keras.Model):
        model_path = Path(model)
        model = load_model(model_path)

    named = _named_config(config)
    beside = None
    if named is None and model_path is not None and model_path.with_name("config.yaml").is_file():
        beside = load_config(model_path.with_name("config.yaml"))
    base = named or beside
    cfg = copy.deepcopy(base) if base is not None else Config()
    source = "given" if named is not None else "beside" if beside is not None else "defaults"

    own = getattr(model, "postprocess_config", None)
    if named is not None:
        post = named.postprocess
    elif own is not None:
        post = own
    elif beside is not None:
        post = beside.postprocess
    else:
        post = PostprocessConfig()
    post = _apply_postprocess(post, postprocess)
    post.validate()

    cfg.model = copy.deepcopy(model.model_config)
    cfg.labels = copy.deepcopy(model.labels_config)
    cfg.postprocess = post
    return Settings(model=model, model_path=model_path, config=cfg, postprocess=post, config_source=source)


def _named_config(config) -> Config | None:
    if config is None or config == "":
        return None
    if isinstance(config, Config):
        return config
    if isinstance(config, (str, os.PathLike)):
        return load_config(config)
    raise TypeError(f"config must be a Config, a preset name or a YAML path, got {type(config).__name__}")


def _apply_postprocess(base: PostprocessConfig, given) -> PostprocessConfig:
    """``given`` (None, a whole PostprocessConfig, or a dict of some of its fields) over ``base``."""
    if given is None:
        return copy.deepcopy(base)
    if isinstance(given, PostprocessConfig):
        return copy.deepcopy(given)
    if dataclasses.is_dataclass(given):
        given = dataclasses.asdict(given)
    merged = dict(dataclasses.asdict(base), **{k: v for k, v in dict(given).items() if v is not None})
    return as_section(PostprocessConfig, merged, "postprocess")
