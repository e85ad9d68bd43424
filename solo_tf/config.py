"""Typed configuration: model, data, train and post-process settings, with YAML in/out.

Every field is a constructor argument of the object it configures; presets are plain YAML
files in ``configs/`` (shipped inside the package as ``solo_tf/configs``). Loading is strict:
an unknown key or a value of the wrong type raises :class:`ConfigError` naming the key.
"""

from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from solo_tf.data.catalog import DEFAULT_SOURCE, section_types

PRESET_DIR = Path(__file__).resolve().parent / "configs"


class ConfigError(ValueError):
    """A configuration value or key is invalid; the message names the key."""


CONFIG_VERSION = 2  # bump with a migration in _MIGRATIONS when a field moves


@dataclass
class ModelConfig:
    """Architecture of the network and the target assignment it is trained with.

    Defaults are SOLOv2-R50 from the paper. ``image_size`` is the padded network input
    (H, W), a multiple of 32; images of other sizes are resized to fit and padded.
    """

    variant: str = "solov2"
    backbone: str = "resnet50"
    # a torchvision/timm ResNet checkpoint (.safetensors / .npz / .pth), a .weights.h5 file,
    # or "imagenet" (MobileNetV3 only); None = random init
    backbone_weights: str | None = None
    # a whole-model COCO checkpoint of the reference (WXinlong/SOLO or mmdetection 2.x/3.x SOLO /
    # Decoupled SOLO / SOLOv2: .pth / .pt (read without torch), .npz or .safetensors, or a zoo
    # name such as solov2_r50_3x, downloaded on first use) loaded into the model when
    # `train` builds it (not when resuming a run); solo_tf.reference_weights says what maps.
    # It holds the backbone too: leave backbone_weights null. Only the category conv may
    # differ (another num_classes: it is skipped and keeps its init); the rest must fit.
    init_weights: str | None = None
    norm_eval: bool | None = None  # backbone BN frozen; None: on when backbone_weights or init_weights is set
    frozen_stages: int | None = None  # stem + this many stages not trained; None: 1 when pretrained, else 0
    num_classes: int = 80
    image_size: tuple[int, int] = (800, 1088)
    # a second, transposed canvas (W, H) for the images of the other orientation (the
    # reference's keep-ratio resize for portrait AND landscape: a portrait COCO image keeps
    # its scale instead of shrinking to fit 800x1344); training batches are grouped by
    # orientation, both canvases share every weight. No effect on a square canvas.
    portrait_canvas: bool = False
    fpn_channels: int = 256
    num_grids: tuple[int, ...] = (40, 36, 24, 16, 12)
    strides: tuple[int, ...] = (8, 8, 16, 32, 32)
    scale_ranges: tuple[tuple[float, float], ...] = (
        (1, 96),
        (48, 192),
        (96, 384),
        (192, 768),
        (384, 2048),
    )
    pos_scale: float = 0.2
    head_channels: int = 512  # SOLO: 256; SOLOv2 kernel/category branch: 512
    stacked_convs: int = 4  # SOLO: 7; SOLOv2: 4; SOLOv2-light: 2
    mask_feature_channels: int = 128  # SOLOv2 unified mask-feature branch, inner width
    mask_channels: int = 256  # E: SOLOv2 mask-feature output / dynamic-kernel width
    norm_groups: int = 32
    prior_prob: float = 0.01

    @property
    def canvases(self) -> tuple[tuple[int, int], ...]:
        """The static input canvases: ``image_size``, then its transpose when
        ``portrait_canvas`` is on and the canvas is not square."""
        h, w = (int(v) for v in self.image_size)
        return ((h, w), (w, h)) if self.portrait_canvas and h != w else ((h, w),)

    def canvas_for(self, height, width) -> tuple[int, int]:
        """The canvas an image of ``height`` x ``width`` is letterboxed onto: the transposed
        canvas (when there is one) for an image oriented the other way than ``image_size``,
        else ``image_size`` (a square image takes ``image_size``)."""
        canvases = self.canvases
        h, w = canvases[0]
        if len(canvases) == 2 and (height > width if h < w else width > height):
            return canvases[1]
        return canvases[0]

    def validate(self) -> None:
        """The section's own checks. The variant and backbone names, and what each variant
        asks of the rest, are checked where their registries live, when a model is built
        (:func:`solo_tf.variants.check_model_config`): this module imports nothing of the
        model."""
        h, w = self.image_size
        if h <= 0 or w <= 0 or h % 32 or w % 32:
            raise ConfigError(f"model.image_size must be positive multiples of 32, got {self.image_size}")
        n = len(self.num_grids)
        if not (len(self.strides) == len(self.scale_ranges) == n) or n == 0:
            raise ConfigError(
                "model.num_grids, model.strides and model.scale_ranges must have one entry per "
                f"level; got {len(self.num_grids)}, {len(self.strides)}, {len(self.scale_ranges)}"
            )
        for s in self.strides:
            if s not in (8, 16, 32):
                raise ConfigError(f"model.strides entries must be 8, 16 or 32, got {s}")
        for lo, hi in self.scale_ranges:
            if not 0 <= lo <= hi:
                raise ConfigError(f"model.scale_ranges entry ({lo}, {hi}) must satisfy 0 <= lo <= hi")
        _positive("model.num_classes", self.num_classes)
        self._validate_init_weights()
        if self.frozen_stages is not None and not 0 <= self.frozen_stages <= 4:
            raise ConfigError(f"model.frozen_stages must be in 0..4, got {self.frozen_stages}")
        if self.fpn_channels % self.norm_groups or self.head_channels % self.norm_groups:
            raise ConfigError("model.fpn_channels and model.head_channels must be divisible by model.norm_groups")
        if not 0 < self.prior_prob < 1:
            raise ConfigError(f"model.prior_prob must be in (0, 1), got {self.prior_prob}")
        if self.pos_scale <= 0:
            raise ConfigError(f"model.pos_scale must be > 0, got {self.pos_scale}")

    def _validate_init_weights(self) -> None:
        if self.init_weights is None:
            return
        suffixes = (".pth", ".pt", ".npz", ".safetensors")
        if not isinstance(self.init_weights, str) or not self.init_weights.strip():
            raise ConfigError(f"model.init_weights must be a file path or null, got {self.init_weights!r}")
        from solo_tf.zoo.registry import ENTRIES

        if not self.init_weights.endswith(suffixes) and self.init_weights not in ENTRIES:
            raise ConfigError(f"model.init_weights {self.init_weights!r} must be a reference checkpoint file "
                              f"({', '.join(suffixes)}) or a zoo name (solo-tf models)")
        if self.backbone_weights is not None:
            raise ConfigError("model.init_weights holds the backbone's weights too: set model.backbone_weights "
                              "to null")

    @property
    def pretrained(self) -> bool:
        """The backbone starts from trained weights (``backbone_weights`` or ``init_weights``)."""
        return self.backbone_weights is not None or self.init_weights is not None

    @property
    def effective_norm_eval(self) -> bool:
        """Backbone BatchNorm frozen: the config value, else on for a pretrained backbone."""
        return self.pretrained if self.norm_eval is None else bool(self.norm_eval)

    @property
    def effective_frozen_stages(self) -> int:
        """Stem + stages not trained: the config value, else 1 for a pretrained backbone."""
        if self.frozen_stages is not None:
            return int(self.frozen_stages)
        return 1 if self.pretrained else 0


@dataclass
class LossConfig:
    """Loss weights and focal-loss shape (docs/DESIGN.md, Loss)."""

    focal_alpha: float = 0.25
    focal_gamma: float = 2.0
    focal_weight: float = 1.0
    dice_weight: float = 3.0
    # Positive cells per image the Dice loss builds masks for (per level group: SOLOv2 all
    # levels at once, SOLO level by level); null = the bound no image can exceed
    # (9 cells x 2 levels x data.max_instances). The reference builds only the real
    # positives; at 800x1344 each slot is a 200x336 mask (~0.27 MB in float32, more with
    # its gradient), and 1800 slots per image are ~97% filler on COCO (~50 positives).
    # An image with more positives keeps a fair subset (round robin over its objects) and
    # the rest are counted in the training logs (`dice_overflow`).
    max_positives: int | None = 256

    def validate(self) -> None:
        if not 0 <= self.focal_alpha <= 1:
            raise ConfigError(f"loss.focal_alpha must be in [0, 1], got {self.focal_alpha}")
        if self.max_positives is not None and (isinstance(self.max_positives, bool)
                                               or not isinstance(self.max_positives, int) or self.max_positives < 1):
            raise ConfigError(f"loss.max_positives must be a positive integer or null, got {self.max_positives!r}")
        for key in ("focal_gamma", "focal_weight", "dice_weight"):
            if getattr(self, key) < 0:
                raise ConfigError(f"loss.{key} must be >= 0, got {getattr(self, key)}")


@dataclass
class LabelsConfig:
    """What the classes are: names, and the dataset's own category id of each (COCO).

    Saved with the model, so predictions come back with the user's ids and names.
    """

    class_names: list[str] | None = None
    category_ids: list[int] | None = None

    def validate(self, num_classes: int | None = None) -> None:
        if num_classes is None:
            return
        if self.category_ids is not None and len(self.category_ids) != num_classes:
            raise ConfigError(f"labels.category_ids has {len(self.category_ids)} ids for {num_classes} classes")
        if self.class_names is not None and len(self.class_names) != num_classes:
            raise ConfigError(f"labels.class_names has {len(self.class_names)} names for {num_classes} classes")

    def names(self, num_classes: int) -> list[str]:
        """Class names, or "0", "1", ... when none are known."""
        return list(self.class_names) if self.class_names else [str(i) for i in range(num_classes)]


@dataclass(init=False, eq=False, repr=False)
class DataConfig:
    """Where training / evaluation images come from and how they are prepared.

    ``source`` names a registered data source (:mod:`solo_tf.data.catalog`); its settings
    are the section ``data.<source>``, a dataclass the source module defines. Sections are
    attributes (``cfg.data.<name>.<field>``) and keyword arguments
    (``DataConfig(source=<name>, <name>=<its section>(...))``); one never set reads as its
    defaults. ``max_instances`` is the data contract (ground truth is padded to it,
    class -1 = padding). ``dataclasses.replace`` keeps the fields and the sections it is
    given, not the others: copy (``copy.deepcopy``) and set attributes instead.
    """

    source: str = DEFAULT_SOURCE  # one of solo_tf.data.catalog.source_names()
    max_instances: int = 100
    # augmentation (training only)
    multiscale: tuple[int, int] | None = None  # short-side range, e.g. (640, 800)
    # None: any integer short side in the range; an int: only lo, lo + step, ..., hi (the
    # reference's discrete img_scale list, multiscale_mode='value': 640, 672, ..., 800)
    multiscale_step: int | None = None
    max_long_side: int | None = None  # e.g. 1333
    flip: bool = True
    skip_bad: bool = False
    seed: int = 0

    def __init__(self, **kwargs):
        sections = self.section_types()
        self._sections = {}
        for f in dataclasses.fields(self):
            setattr(self, f.name, kwargs.pop(f.name, f.default))
        for name, value in kwargs.items():
            if name not in sections:
                raise TypeError(f"DataConfig: unknown field or data section {name!r} (fields: "
                                f"{', '.join(f.name for f in dataclasses.fields(self))}; sections: "
                                f"{', '.join(sections)})")
            setattr(self, name, value)

    @staticmethod
    def section_types() -> dict:
        """``{source name: section dataclass}`` of the registered data sources."""
        return section_types()

    def __getattr__(self, name):
        # reached for names that are not plain attributes: the source sections
        if name.startswith("_"):
            raise AttributeError(name)
        if name in self._sections:
            return self._sections[name]
        section = self.section_types().get(name)
        if section is None:
            raise AttributeError(f"'DataConfig' has no attribute {name!r}")
        value = self._sections[name] = section()
        return value

    def __setattr__(self, name, value):
        section = self.section_types().get(name) if not name.startswith("_") else None
        if section is None:
            object.__setattr__(self, name, value)
        elif not isinstance(value, section):
            raise TypeError(f"data.{name} must be a {section.__name__}, got {type(value).__name__}")
        else:
            self._sections[name] = value

    @property
    def sections(self) -> dict:
        """The sections set, read or loaded, and the current source's: ``{name: section}``."""
        getattr(self, self.source, None)  # the current source's, at its defaults if never set
        return dict(self._sections)

    def to_dict(self) -> dict:
        """The YAML form: the fields, with :attr:`sections` after ``max_instances``."""
        d = {}
        for f in dataclasses.fields(self):
            d[f.name] = _to_plain(getattr(self, f.name))
            if f.name == "max_instances":
                d.update({k: _to_plain(dataclasses.asdict(v)) for k, v in self.sections.items()})
        return d

    def __eq__(self, other):
        if not isinstance(other, DataConfig):
            return NotImplemented
        names = set(self._sections) | set(other._sections)
        return (all(getattr(self, f.name) == getattr(other, f.name) for f in dataclasses.fields(self))
                and all(getattr(self, n) == getattr(other, n) for n in names))

    def __repr__(self):
        fields = [f"{f.name}={getattr(self, f.name)!r}" for f in dataclasses.fields(self)]
        return f"DataConfig({', '.join(fields + [f'{k}={v!r}' for k, v in self._sections.items()])})"

    def validate(self) -> None:
        _one_of("data.source", self.source, tuple(self.section_types()))
        _positive("data.max_instances", self.max_instances)
        if self.multiscale is not None and not 0 < self.multiscale[0] <= self.multiscale[1]:
            raise ConfigError(f"data.multiscale must be (lo, hi) with 0 < lo <= hi, got {self.multiscale}")
        if self.multiscale_step is not None:
            _positive("data.multiscale_step", self.multiscale_step)
            if self.multiscale is None or (self.multiscale[1] - self.multiscale[0]) % self.multiscale_step:
                raise ConfigError(f"data.multiscale_step {self.multiscale_step} must divide data.multiscale's "
                                  f"range {self.multiscale}")
        for section in self.sections.values():
            if hasattr(section, "validate"):
                try:
                    section.validate()
                except ConfigError:
                    raise
                except ValueError as e:  # a source's section names its key itself
                    raise ConfigError(str(e)) from None


@dataclass
class TrainConfig:
    """Optimiser and schedule. Defaults are the reference 3x schedule (SGD, 36 epochs)."""

    epochs: int = 36
    batch_size: int = 16
    optimizer: str = "sgd"  # sgd (the reference) | adamw
    steps_per_epoch: int | None = None
    base_lr: float = 0.01  # per 16 images; scaled linearly with batch_size
    momentum: float = 0.9
    weight_decay: float = 1e-4
    clipnorm: float | None = 35.0
    warmup_iters: int = 500
    warmup_ratio: float = 1.0 / 3.0
    decay_epochs: tuple[int, ...] = (27, 33)
    decay_factor: float = 0.1
    # false | true / "float16" (mixed_float16: GPUs, with loss scaling) | "bfloat16"
    # (mixed_bfloat16: TPUs, recent GPUs, and CPUs with AVX512_BF16 / AMX through oneDNN)
    mixed_precision: bool | str = False
    targets_in: str = "pipeline"  # pipeline (tf.data, TF backend only) | model (compute_loss)
    seed: int = 0
    # COCO mask and box AP on the validation split every this many epochs (0: never), logged
    # to history.csv and TensorBoard; the best epoch by mask AP is kept as best.keras
    val_every: int = 0
    val_max_images: int | None = None  # evaluate on the first this many validation images (None: all)

    def validate(self) -> None:
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        _one_of("train.targets_in", self.targets_in, ("pipeline", "model"))
        _one_of("train.optimizer", self.optimizer, ("sgd", "adamw"))
        if self.val_every < 0:
            raise ConfigError(f"train.val_every must be >= 0 (0: no validation AP), got {self.val_every}")
        if self.val_max_images is not None:
            _positive("train.val_max_images", self.val_max_images)
        if self.mixed_precision not in (False, True, "float16", "bfloat16"):
            raise ConfigError(f"train.mixed_precision must be false, true, float16 or bfloat16, "
                              f"got {self.mixed_precision!r}")
        if self.base_lr <= 0:
            raise ConfigError(f"train.base_lr must be > 0, got {self.base_lr}")

    @property
    def lr(self) -> float:
        return self.base_lr * self.batch_size / 16.0


@dataclass
class PostprocessConfig:
    """Decoder settings (docs/DESIGN.md, inference)."""

    score_thr: float = 0.1
    mask_thr: float = 0.5
    nms_pre: int = 500
    update_thr: float = 0.05
    max_per_img: int = 100
    kernel: str = "gaussian"  # gaussian | linear
    sigma: float = 2.0
    # input pixels per pixel of the masks Matrix NMS compares: 4 = the masks' own resolution
    # (the reference); 8 or 16 compare 2x2 / 4x4 averages, 4x / 16x less work for the
    # overlap matmul (the decoder's largest), and leave the kept masks at stride 4
    nms_stride: int = 4

    def validate(self) -> None:
        _one_of("postprocess.kernel", self.kernel, ("gaussian", "linear"))
        _positive("postprocess.nms_pre", self.nms_pre)
        _positive("postprocess.max_per_img", self.max_per_img)
        _one_of("postprocess.nms_stride", self.nms_stride, (4, 8, 16))


@dataclass
class Config:
    """Everything a run needs; ``Config.from_yaml`` / ``to_yaml`` round-trip it."""

    version: int = CONFIG_VERSION
    name: str = "solov2_r50"
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    labels: LabelsConfig = field(default_factory=LabelsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)

    def validate(self) -> "Config":
        if self.version != CONFIG_VERSION:
            raise ConfigError(f"version is {self.version}; this solo-tf reads version {CONFIG_VERSION} "
                              "(older files are upgraded by load_config / Config.from_dict)")
        self.model.validate()
        self.loss.validate()
        self.labels.validate(self.model.num_classes)
        self.data.validate()
        self.train.validate()
        self.postprocess.validate()
        return self

    # --- YAML ---------------------------------------------------------------------------
    def to_dict(self) -> dict:
        d = _to_plain(dataclasses.asdict(self))
        d["data"] = self.data.to_dict()  # its source sections are not dataclass fields
        return d

    @classmethod
    def from_dict(cls, d: dict, where: str = "config") -> "Config":
        return section_from_dict(cls, migrate(d, where), where).validate()

    def to_yaml(self, path: str | os.PathLike | None = None) -> str:
        text = yaml.safe_dump(self.to_dict(), sort_keys=False)
        if path is not None:
            from solo_tf.io import write_text

            write_text(path, text)
        return text

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> "Config":
        path = Path(path)
        try:
            d = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
        if d is None:
            d = {}
        if not isinstance(d, dict):
            raise ConfigError(f"{path}: top level must be a mapping, got {type(d).__name__}")
        try:
            return cls.from_dict(d, where=str(path))
        except ConfigError as e:
            msg = str(e)
            raise ConfigError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None


# --- versions and migrations -------------------------------------------------------------------
# A config dict (a YAML file, or the config frozen into a .keras file) carries ``version``;
# a dict without one is version 1 (the layout before the split). Each migration takes a
# plain dict of version v and returns one of version v + 1, so a later field move upgrades
# old files instead of refusing them.

_V1_MODEL_TO_LOSS = ("focal_alpha", "focal_gamma", "focal_weight", "dice_weight")
_V1_MODEL_TO_LABELS = ("class_names", "category_ids")
_V1_DATA_TO_SHAPES = {"num_train": "num_train", "num_val": "num_val", "shapes_image_size": "image_size",
                      "shapes_max_objects": "max_objects", "shapes_object_size": "object_size"}
_V1_DATA_TO_COCO = ("train_annotations", "train_images", "val_annotations", "val_images")
_V1_DATA_TO_CIS680 = {"cis680_images": "images", "cis680_masks": "masks", "cis680_labels": "labels",
                      "cis680_bboxes": "bboxes", "trust_pickle": "trust_pickle", "val_fraction": "val_fraction"}


def _v1_to_v2(d: dict) -> dict:
    """Version 1 -> 2: ModelConfig split into model / loss / labels, ``max_instances`` moved
    to data, DataConfig's flat fields moved into one sub-section per source."""
    d = {k: (dict(v) if isinstance(v, dict) else v) for k, v in d.items()}
    model = d.get("model") or {}
    data = d.get("data") or {}
    if not isinstance(model, dict) or not isinstance(data, dict):
        return d  # let the strict loader name the bad section
    loss = dict(d.get("loss") or {})
    labels = dict(d.get("labels") or {})
    for key in _V1_MODEL_TO_LOSS:
        if key in model:
            loss[key] = model.pop(key)
    for key in _V1_MODEL_TO_LABELS:
        if key in model:
            labels[key] = model.pop(key)
    if "max_instances" in model:
        data.setdefault("max_instances", model.pop("max_instances"))
    for flat, section in ((_V1_DATA_TO_SHAPES, "shapes"), (dict(zip(_V1_DATA_TO_COCO, _V1_DATA_TO_COCO)), "coco"),
                          (_V1_DATA_TO_CIS680, "cis680")):
        sub = dict(data.get(section) or {})
        for old, new in flat.items():
            if old in data:
                sub[new] = data.pop(old)
        if sub:
            data[section] = sub
    if "model" in d or model:
        d["model"] = model
    if "data" in d or data:
        d["data"] = data
    if loss:
        d["loss"] = loss
    if labels:
        d["labels"] = labels
    d["version"] = 2
    return d


_MIGRATIONS = {1: _v1_to_v2}


def migrate(d: dict, where: str = "config") -> dict:
    """Upgrade a config dict of any known version to :data:`CONFIG_VERSION` (a new dict).

    Raises:
        ConfigError: the version is newer than this solo-tf, or not an integer.
    """
    if not isinstance(d, dict):
        raise ConfigError(f"{where}: top level must be a mapping, got {type(d).__name__}")
    version = d.get("version", 1)
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise ConfigError(f"{where}: version must be a positive integer, got {version!r}")
    if version > CONFIG_VERSION:
        raise ConfigError(
            f"{where}: config version {version} was written by a newer solo-tf (this one reads up to "
            f"{CONFIG_VERSION}); upgrade solo-tf (pip install -U solo-tf)"
        )
    while version < CONFIG_VERSION:
        d = _MIGRATIONS[version](d)
        version = d["version"]
    return d


def load_config(name_or_path: str | os.PathLike) -> Config:
    """Load a preset by name (``shapes_demo``) or a YAML file by path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.exists():
            raise ConfigError(f"config file not found: {p}")
        return Config.from_yaml(p)
    preset = PRESET_DIR / f"{name_or_path}.yaml"
    if not preset.exists():
        names = sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))
        raise ConfigError(f"no config file or preset named {name_or_path!r}; presets: {', '.join(names)}")
    return Config.from_yaml(preset)


def parse_assignments(assignments) -> list[tuple[str, object]]:
    """``KEY=VALUE`` strings -> ``(key, value)`` pairs, each value read as YAML (``0.005``,
    ``[512, 768]``, ``null``, ``linear``); a malformed one is a ConfigError naming it."""
    pairs = []
    for item in assignments:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE, e.g. train.base_lr=0.005")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {key}: {raw!r} is not a YAML value ({e.__class__.__name__})") from None
        pairs.append((key, value))
    return pairs


def postprocess_overrides(assignments) -> dict:
    """``postprocess.FIELD=VALUE`` strings (``solo-tf evaluate / predict / export --set``) ->
    a dict of post-processing fields for :func:`solo_tf.settings.resolve`, which checks the
    names and values. Any other section is a ConfigError: a saved model's architecture and
    classes are its own."""
    out = {}
    for key, value in parse_assignments(assignments):
        section, _, name = key.partition(".")
        if section != "postprocess" or not name or "." in name:
            raise ConfigError(f"--set {key}: here only postprocess.<field> can be set (e.g. "
                              f"postprocess.score_thr=0.3); the model's own architecture and classes are used")
        out[name] = value
    return out


def apply_overrides(config: Config, assignments) -> Config:
    """``KEY=VALUE`` assignments (``solo-tf train --set``) applied to a copy of ``config``.

    ``KEY`` is a dotted path (``train.base_lr``, ``model.image_size``, ``data.coco.train_images``);
    ``VALUE`` is read as YAML (``0.005``, ``[512, 768]``, ``null``, ``true``, ``adamw``) and
    then checked exactly as the same value in a YAML file would be.

    Raises:
        ConfigError: naming the assignment or the key (an unknown key lists the valid ones).
    """
    d = config.to_dict()
    for key, value in parse_assignments(assignments):
        parts = key.split(".")
        node = d
        for i, part in enumerate(parts[:-1]):
            if i == 1 and parts[0] == "data" and isinstance(node, dict) and part not in node \
                    and part in DataConfig.section_types():
                node[part] = {}  # a data source's section the config has not written yet
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"--set: unknown key '{'.'.join(parts[: i + 1])}'"
                                  + (f"; valid keys: {', '.join(node)}" if isinstance(node, dict) else ""))
            if node[part] is None:  # an optional section not set yet: fill it from the key
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict) or (node and parts[-1] not in node):
            raise ConfigError(f"--set: unknown key '{key}'"
                              + (f"; valid keys: {', '.join(node)}" if isinstance(node, dict) else ""))
        node[parts[-1]] = value
    return Config.from_dict(d, "config")


def preset_names() -> list[str]:
    return sorted(x.stem for x in PRESET_DIR.glob("*.yaml"))


# --- helpers ---------------------------------------------------------------------------------


def _one_of(key, value, choices):
    if value not in choices:
        raise ConfigError(f"{key} must be one of {', '.join(str(c) for c in choices)}; got {value!r}")


def _positive(key, value):
    if not isinstance(value, int) or value <= 0:
        raise ConfigError(f"{key} must be a positive integer, got {value!r}")


def _to_plain(x):
    if isinstance(x, dict):
        return {k: _to_plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_to_plain(v) for v in x]
    return x


def section_from_dict(cls, d, where):
    """Build config dataclass ``cls`` from a plain dict, strictly: an unknown key or a value of
    the wrong type raises ConfigError naming ``where.key`` (lists become tuples)."""
    if not isinstance(d, dict):
        raise ConfigError(f"{where} must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = [f.name for f in dataclasses.fields(cls)]
    sections = cls.section_types() if hasattr(cls, "section_types") else {}  # DataConfig: one per data source
    hints.update(sections)
    fields += list(sections)
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key '{_join(where, unknown[0])}'; valid keys: {', '.join(fields)}")
    kwargs = {}
    for name, value in d.items():
        kwargs[name] = _coerce(hints[name], value, _join(where, name))
    return cls(**kwargs)


def as_section(cls, value, where):
    """The one coercion of a config section: ``value`` as config dataclass ``cls``, from the
    dataclass itself (returned as it is), its dict form (checked strictly, errors naming
    ``where.key``) or None (the defaults)."""
    if value is None:
        return cls()
    if isinstance(value, cls):
        return value
    if dataclasses.is_dataclass(value):
        value = dataclasses.asdict(value)
    return section_from_dict(cls, dict(value), where)


def _join(where, name):
    """Dotted key path; the top level (a file name or 'config') is not part of it."""
    return name if where == "config" or where.endswith((".yaml", ".yml")) else f"{where}.{name}"


def _coerce(tp, value, key):
    """Check ``value`` against the annotation ``tp`` and convert lists to tuples."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return section_from_dict(tp, value, key)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _coerce(a, value, key)
            except ConfigError as e:
                errors.append(str(e))
        raise ConfigError(errors[0] if errors else f"{key}: bad value {value!r}")
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{key} must have {len(args)} entries, got {len(value)}")
        return tuple(_coerce(a, v, f"{key}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return [_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")
