"""Start from a COCO checkpoint of the reference implementation (WXinlong/SOLO, mmdetection
1.x) or of mmdetection 2.x/3.x's retrained SOLO family.

:func:`load_reference_checkpoint` loads a whole-model checkpoint into a
:class:`solo_tf.model.SOLO` of the matching variant; ``model.init_weights`` in a config does
it when ``solo-tf train`` builds the model (:func:`solo_tf.tasks.train`), and
:mod:`solo_tf.zoo` does it for the published checkpoints by name.

Two key layouts, told apart by the keys (:func:`checkpoint_layout`):

- ``mmdet1``: WXinlong/SOLO's own files (``bbox_head.*``, ``mask_feat_head.*``), the names
  used below;
- ``mmdet2``: mmdetection 2.x/3.x (``mask_head.*``). Its heads are the same modules with the
  same shapes and the same forward (coordinates [x, y] appended after the features and
  resized with them, bilinear, align_corners False; 1x1 dynamic conv), renamed
  (:data:`MMDET2_NAMES`): ``bbox_head.`` -> ``mask_head.``, ``mask_feat_head.`` ->
  ``mask_head.mask_feature_head.`` (``conv_pred.0.`` -> ``conv_pred.``), ``cate_convs`` ->
  ``cls_convs``, ``solo_cate`` / ``dsolo_cate`` -> ``conv_cls``, ``solo_kernel`` ->
  ``conv_kernel``, ``ins_convs`` / ``ins_convs_x`` / ``ins_convs_y`` -> ``mask_convs`` /
  ``mask_convs_x`` / ``mask_convs_y``, ``solo_ins_list`` / ``dsolo_ins_list_x`` /
  ``dsolo_ins_list_y`` -> ``conv_mask_list`` / ``conv_mask_list_x`` / ``conv_mask_list_y``;
  ``kernel_convs``, the backbone and the neck keep their names. Errors name the keys as the
  file has them.

A checkpoint of neither layout (AdelaiDet's detectron2 names, a classifier, another
detector) is refused naming its first key that fits no SOLO checkpoint, and the zoo entries
(:mod:`solo_tf.zoo`) of the model's kind.

Covered (the key names and shapes below are those of the reference's modules):

- ``variant: solov2``: ``SOLOv2Head`` + ``MaskFeatHead`` checkpoints: SOLOv2 R50 / R101
  (1x, 3x) and SOLOv2-light 448 R18 / R34 / R50 (``stacked_convs: 2``, ``head_channels:
  256``, ``mask_channels: 128``; the ``solov2_light_*`` presets).
- ``variant: solo``: ``SOLOHead`` checkpoints (SOLO R50 / R101).
- ``variant: decoupled_solo``: ``DecoupledSOLOHead`` checkpoints (Decoupled SOLO R50 / R101).

Not covered, and refused with an error that says why: the DCN models (SOLOv2 R101-DCN,
X101-DCN, light-512-DCN, Decoupled SOLO light DCN: solo_tf has no deformable convolution,
keys ``*.conv_offset.*``), ResNeXt backbones (no such backbone here; the exact mapping names
the first key whose shape does not fit), and ``DecoupledSOLOLightHead`` (Decoupled SOLO
light, either layout: one mask tower ``ins_convs`` / ``mask_convs`` whose first conv takes
both coordinates, 256 + 2 = 258 inputs, shared by the X and Y outputs, where solo_tf's
Decoupled SOLO has an X tower and a Y tower of 257 inputs each).
AdelaiDet (detectron2 names) is not covered.

Files: ``.pth`` / ``.pt`` (read without PyTorch by :mod:`solo_tf.pth`: zip and legacy
serialization, nothing in the pickle is run), ``.npz`` and ``.safetensors``, read by
:func:`solo_tf.weights.read_state_dict`;
a mapping can be passed instead of a path. A ``{"state_dict": ...}`` or ``{"model": ...}``
wrapper is unwrapped (mmdet saves ``{"meta", "state_dict"[, "optimizer"]}``) and a
``module.`` prefix on every key is dropped.

Mapping, exact (PyTorch conv ``weight`` OIHW becomes the Keras ``kernel`` HWIO, input
channels in the same order, so the CoordConv channels - the feature's, then x, then y -
land where our ``add_coords`` puts them; GroupNorm ``weight`` / ``bias`` become ``gamma`` /
``beta``; an mmdet ``ConvModule`` is ``{name}.conv.weight`` + ``{name}.gn.weight`` /
``{name}.gn.bias``, no conv bias, as our conv + GN + ReLU units):

==================================================  ==========================================
reference key                                       solo_tf layer
==================================================  ==========================================
``backbone.*``                                      ``backbone``: torchvision names, through
                                                    :func:`solo_tf.weights.load_torchvision_resnet`
``neck.lateral_convs.{i}.conv.{weight,bias}``       ``fpn`` ``lateral_C{i+2}`` (1x1)
``neck.fpn_convs.{i}.conv.{weight,bias}``           ``fpn`` ``output_P{i+2}`` (3x3); P6 is a
                                                    max-pool (kernel 1, stride 2) in both
``bbox_head.kernel_convs.{i}`` (SOLOv2)             ``head`` ``kernel_{i}`` (conv 0: + x, y)
``bbox_head.cate_convs.{i}``                        ``head`` ``cate_{i}``
``bbox_head.solo_kernel.{weight,bias}``             ``head`` ``kernel_out``
``bbox_head.solo_cate.{weight,bias}``               ``head`` ``cate_out`` (SOLO, SOLOv2)
``mask_feat_head.convs_all_levels.{i}.conv{j}``     ``mask_feature_head`` ``level{i}_conv{j}``
                                                    (level 3, conv 0: + 2 coordinate channels)
``mask_feat_head.conv_pred.0``                      ``mask_feature_head`` ``out_conv`` + ``out_gn``
``bbox_head.ins_convs.{i}`` (SOLO)                  ``head`` ``mask_{i}`` (conv 0: + x, y)
``bbox_head.solo_ins_list.{l}.{weight,bias}``       ``head`` ``mask_out_{l}`` (1x1, S_l^2)
``bbox_head.ins_convs_x.{i}`` / ``ins_convs_y``     ``head`` ``mask_x_{i}`` / ``mask_y_{i}``
(Decoupled SOLO)                                    (conv 0: + x / + y)
``bbox_head.dsolo_ins_list_x.{l}`` / ``_y``         ``head`` ``mask_x_out_{l}`` / ``mask_y_out_{l}``
``bbox_head.dsolo_cate.{weight,bias}``              ``head`` ``cate_out`` (Decoupled SOLO)
==================================================  ==========================================

Ignored on purpose, and only these: the backbone's ``*.num_batches_tracked`` counters (and
a classifier ``fc.*``, which the reference's backbone has not). A missing or unexpected key
or a shape that does not fit is an error naming the key, the shape the model needs and the
file; the error also lists the config fields the checkpoint implies where they differ from
the model's (:func:`describe_reference_checkpoint`). Nothing is assigned then.

Classes: the reference configs say ``num_classes=81`` and build ``num_classes - 1 = 80``
sigmoid category channels, no background channel (its focal loss takes label ``c + 1`` as
channel ``c``, label 0 as background). mmdet 1.x's ``CocoDataset`` numbers the categories
in the order of ``COCO.getCatIds()`` - the ids sorted ascending for the COCO files - so
channel ``c`` is COCO category :data:`REFERENCE_COCO_CATEGORY_IDS` ``[c]``: set
``labels.category_ids`` to that list (solo_tf's COCO source numbers categories the same
way, so a COCO run fills it in by itself). When ``model.num_classes`` differs,
``strict=True`` is an error naming ``bbox_head.solo_cate.weight`` (``dsolo_cate``);
``strict=False`` skips that conv's weight and bias only - it keeps its prior-probability
initialisation - and says so in the report.

Not stored in the weights, so not checked: ``num_grids``, ``strides`` and ``scale_ranges``
(SOLOv2's heads are shared across levels) and the image size; the report notes grids and
strides that differ from the reference's. The reference's GroupNorm has 32 groups
everywhere: a model with another ``norm_groups`` is refused (the shapes would fit, the
normalisation would not).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Mapping

import numpy as np

from solo_tf.backbones import RESNETS

# mmdet 1.x CocoDataset: channel c <-> cat_ids[c], cat_ids = COCO.getCatIds() (sorted ids).
REFERENCE_COCO_CATEGORY_IDS = (
    1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 27, 28,
    31, 32, 33, 34, 35, 36, 37, 38, 39, 40, 41, 42, 43, 44, 46, 47, 48, 49, 50, 51, 52, 53, 54, 55,
    56, 57, 58, 59, 60, 61, 62, 63, 64, 65, 67, 70, 72, 73, 74, 75, 76, 77, 78, 79, 80, 81, 82, 84,
    85, 86, 87, 88, 89, 90,
)
# the names of those categories, in the same order (COCO 2017's own names; mmdet's CLASSES)
COCO_CLASS_NAMES = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard", "cell phone",
    "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase", "scissors", "teddy bear",
    "hair drier", "toothbrush",
)
REFERENCE_NUM_CLASSES = len(REFERENCE_COCO_CATEGORY_IDS)  # 80
REFERENCE_NORM_GROUPS = 32  # GN(32) in every head ConvModule and in the mask-feature branch
# what the reference configs train with; not in the weights, so only noted when different
REFERENCE_NUM_GRIDS = (40, 36, 24, 16, 12)
REFERENCE_STRIDES = (8, 8, 16, 32, 32)

# the category output conv of each variant (the only thing strict=False may skip)
CATEGORY_CONV = {
    "solov2": "bbox_head.solo_cate", "solo": "bbox_head.solo_cate", "decoupled_solo": "bbox_head.dsolo_cate",
}
LAYOUTS = {"mmdet1": "WXinlong/SOLO (mmdetection 1.x)", "mmdet2": "mmdetection 2.x/3.x"}
# WXinlong (mmdetection 1.x) key prefix -> mmdetection 2.x/3.x: the same modules, renamed
MMDET2_NAMES = (
    ("mask_feat_head.conv_pred.0.", "mask_head.mask_feature_head.conv_pred."),
    ("mask_feat_head.", "mask_head.mask_feature_head."),
    ("bbox_head.cate_convs.", "mask_head.cls_convs."),
    ("bbox_head.solo_cate.", "mask_head.conv_cls."),
    ("bbox_head.dsolo_cate.", "mask_head.conv_cls."),
    ("bbox_head.solo_kernel.", "mask_head.conv_kernel."),
    ("bbox_head.kernel_convs.", "mask_head.kernel_convs."),
    ("bbox_head.ins_convs_x.", "mask_head.mask_convs_x."),
    ("bbox_head.ins_convs_y.", "mask_head.mask_convs_y."),
    ("bbox_head.ins_convs.", "mask_head.mask_convs."),
    ("bbox_head.solo_ins_list.", "mask_head.conv_mask_list."),
    ("bbox_head.dsolo_ins_list_x.", "mask_head.conv_mask_list_x."),
    ("bbox_head.dsolo_ins_list_y.", "mask_head.conv_mask_list_y."),
)
_HEAD_PREFIXES = ("bbox_head.", "mask_feat_head.", "mask_head.")
# a key of an mmdet / torchvision ResNet under "backbone."
_RESNET_KEY = re.compile(r"^backbone\.(conv1|bn1|layer[1-4]\.\d+\.(conv[1-3]|bn[1-3]|downsample\.[01]))\."
                         r"(weight|bias|running_mean|running_var|num_batches_tracked)$")
_NECK_KEY = re.compile(r"^neck\.(lateral|fpn)_convs\.\d+\.conv\.(weight|bias)$")
_WRAPPERS = ("state_dict", "model")
_PREFIXES = ("state_dict.", "model.", "module.")
_BACKBONE = "backbone."
_BLOCK_KEY = re.compile(r"^backbone\.layer([1-4])\.(\d+)\.")
_STACK_KEY = re.compile(r"^bbox_head\.cate_convs\.(\d+)\.conv\.weight$")
_LEVEL_KEY = re.compile(r"^level(\d+)_conv(\d+)$")


@dataclasses.dataclass(frozen=True)
class ReferenceLoadReport:
    """What :func:`load_reference_checkpoint` did.

    ``loaded``: tensors assigned (backbone included); ``skipped``: checkpoint keys left out
    (only the category output conv, with ``strict=False`` and another class count);
    ``checkpoint_num_classes``: the checkpoint's category channels; ``notes``: settings
    the weights cannot check that differ from the reference's.
    """

    source: str
    variant: str
    loaded: int
    skipped: tuple[str, ...] = ()
    checkpoint_num_classes: int | None = None
    model_num_classes: int | None = None
    notes: tuple[str, ...] = ()

    def __str__(self):
        text = f"loaded {self.loaded} tensors from {self.source} into a {self.variant} model"
        if self.skipped:
            text += (f"; skipped {', '.join(self.skipped)}: the checkpoint has {self.checkpoint_num_classes} classes, "
                     f"the model {self.model_num_classes} (the category output conv keeps its initialisation)")
        for note in self.notes:
            text += f"; note: {note}"
        return text


def load_reference_checkpoint(model, path, *, strict: bool = True) -> ReferenceLoadReport:
    """Load a whole-model WXinlong/SOLO or mmdetection 2.x/3.x checkpoint into ``model``.

    Args:
        model: a :class:`solo_tf.model.SOLO`; its ``model_config.variant`` says which head
            keys are expected (see the module docstring for the mapping).
        path: a ``.pth`` / ``.pt``, ``.npz`` or ``.safetensors`` file, or a
            mapping ``{key: array}`` (PyTorch layout), raw or under ``state_dict`` / ``model``.
            The layout (WXinlong or mmdetection 2.x/3.x names) is read from the keys.
        strict: True: every tensor must fit. False: the category output conv
            (``bbox_head.solo_cate`` / ``dsolo_cate``, mmdet 2.x ``mask_head.conv_cls``) may
            have another number of classes than ``model.model_config.num_classes``; it is
            then skipped (our initialisation stays). Nothing else is relaxed.

    Returns:
        :class:`ReferenceLoadReport` (``str()`` of it is a one-line summary).

    Raises:
        ValueError: a checkpoint of neither layout (naming its first key that fits no SOLO
            checkpoint), a missing or unexpected key, a shape that does not fit (the message
            names the key as the file has it, the shape the model needs and the file), a
            non-float or non-finite weight, a checkpoint of another variant or backbone, an
            unsupported reference model (DCN, Decoupled SOLO light), or a model the
            reference has no counterpart of (a non-ResNet backbone, ``norm_groups`` other
            than 32). Where the zoo has the checkpoint's (or the model's) kind, the message
            names the entry. Nothing is assigned.
        FileNotFoundError: no such file.
    """
    from solo_tf.weights import load_torchvision_resnet

    cfg = model.model_config
    source, state = _read(path)
    layout = checkpoint_layout(state)
    if layout is None:
        key = _foreign_key(state, model)
        backbone_only = (" (it looks like a ResNet backbone checkpoint: that goes in model.backbone_weights)"
                         if _RESNET_KEY.match(f"backbone.{key}") else "")
        raise ValueError(f"cannot load {source} into the {cfg.variant} model: {key!r} fits no SOLO checkpoint of "
                         f"{' or '.join(LAYOUTS.values())}{backbone_only}; AdelaiDet / detectron2 files are not "
                         f"supported. {_zoo_hint(cfg.variant, cfg.backbone)}")

    def show(key):
        return layout_key(key, layout)

    state = to_mmdet1_names(state) if layout == "mmdet2" else dict(state)
    where = f"{source} ({LAYOUTS[layout]} checkpoint) into the {cfg.variant} model"
    if cfg.backbone not in RESNETS:
        raise ValueError(f"cannot load {where}: the reference's backbone is a ResNet, model.backbone is "
                         f"{cfg.backbone!r} (use one of {', '.join(RESNETS)})")
    if cfg.norm_groups != REFERENCE_NORM_GROUPS:
        raise ValueError(f"cannot load {where}: the reference's GroupNorm has {REFERENCE_NORM_GROUPS} groups, "
                         f"model.norm_groups is {cfg.norm_groups}; the shapes would fit but not the normalisation")
    found = _describe(state, layout)
    if found.get("unsupported"):
        raise ValueError(f"cannot load {where}: {'; '.join(found['unsupported'])}")
    hint = _zoo_hint(found.get("variant", cfg.variant), found.get("backbone", cfg.backbone), layout)
    if found.get("variant") not in (None, cfg.variant):
        raise ValueError(f"cannot load {where}: the checkpoint is a {found['variant']} model "
                         f"({show(found['variant_key'])!r}); set model.variant: {found['variant']}. {hint}")
    if found.get("backbone") not in (None, cfg.backbone):
        raise ValueError(f"cannot load {where}: the checkpoint's backbone is {found['backbone']}, "
                         f"model.backbone is {cfg.backbone!r}; set model.backbone: {found['backbone']}. {hint}")

    # --- everything but the backbone: check it all before assigning anything ---
    targets = reference_targets(model)
    expected = {key for key, _, _ in targets}
    others = {k: v for k, v in state.items() if not k.startswith(_BACKBONE)}
    missing = sorted(show(k) for k in expected - set(others))
    unexpected = sorted(show(k) for k in set(others) - expected)
    category = CATEGORY_CONV[cfg.variant]
    problems, skipped, values = [], [], []
    if missing:
        problems.append(f"{len(missing)} missing key(s): {_few(missing)}")
    if unexpected:
        problems.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
    shapes = {key: torch_shape for key, _, torch_shape in targets}
    other_classes = _other_class_count(others, shapes, category)
    if other_classes and not strict:
        skipped = [f"{category}.weight", f"{category}.bias"]
    for key, var, torch_shape in targets:
        if key not in others or key in skipped:
            continue
        value = np.asarray(others[key])
        if tuple(value.shape) != torch_shape:
            more = ("; another class count: strict=False keeps the model's category conv"
                    if other_classes and key.startswith(category + ".") else "")
            problems.append(f"{show(key)!r} has shape {list(value.shape)}, the model needs {list(torch_shape)} "
                            f"(PyTorch layout){more}")
            continue
        if not np.issubdtype(value.dtype, np.floating):
            problems.append(f"{show(key)!r} has dtype {value.dtype}, expected floating point")
            continue
        if not np.all(np.isfinite(value)):
            problems.append(f"{show(key)!r} holds NaN or infinite values")
            continue
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        values.append((var, value.astype(var.dtype)))
    if problems:
        hints = _config_hints(found, cfg)
        raise ValueError(f"cannot load {where}: {'; '.join(problems)}" + (f". {hints}" if hints else "")
                         + f". {hint}")

    # --- the backbone: torchvision names under "backbone." (validated, then assigned, as one) ---
    backbone = model.get_layer("backbone")
    try:
        load_torchvision_resnet(backbone, state, prefix=_BACKBONE)
    except ValueError as e:
        raise ValueError(f"cannot load {where}: the backbone (keys after 'backbone.'): {e}") from e
    for var, value in values:
        var.assign(value)
    return ReferenceLoadReport(
        source=source, variant=cfg.variant, loaded=len(values) + len(backbone.weights),
        skipped=tuple(show(k) for k in skipped), checkpoint_num_classes=found.get("num_classes"),
        model_num_classes=cfg.num_classes, notes=tuple(_notes(cfg)),
    )


def checkpoint_layout(state: Mapping) -> str | None:
    """``"mmdet2"`` (mmdetection 2.x/3.x: ``mask_head.*`` keys), ``"mmdet1"`` (WXinlong/SOLO:
    ``bbox_head.*`` / ``mask_feat_head.*``), or None (no SOLO head keys: another kind of file)."""
    if any(k.startswith("mask_head.") for k in state):
        return "mmdet2"
    if any(k.startswith(("bbox_head.", "mask_feat_head.")) for k in state):
        return "mmdet1"
    return None


def layout_key(key: str, layout: str) -> str:
    """A WXinlong (mmdet1) key as ``layout`` names it (:data:`MMDET2_NAMES`)."""
    if layout == "mmdet2":
        for old, new in MMDET2_NAMES:
            if key.startswith(old):
                return new + key[len(old):]
    return key


def to_mmdet1_names(state: Mapping) -> dict:
    """An mmdetection 2.x/3.x state dict with WXinlong's key names: the inverse of
    :func:`layout_key` (``conv_cls`` is ``dsolo_cate`` where the head is decoupled, i.e. has
    ``conv_mask_list_x``, else ``solo_cate``). Keys it does not know keep their names."""
    decoupled = any(k.startswith("mask_head.conv_mask_list_x.") for k in state)
    out = {}
    for key, value in state.items():
        for old, new in MMDET2_NAMES:
            if old == ("bbox_head.solo_cate." if decoupled else "bbox_head.dsolo_cate."):
                continue
            if key.startswith(new):
                key = old + key[len(new):]
                break
        out[key] = value
    return out


def reference_targets(model):
    """``(reference key, Keras variable, PyTorch shape)`` for every weight of ``model``
    outside the backbone, by the mapping of the module docstring."""
    cfg = model.model_config
    if cfg.variant not in CATEGORY_CONV:
        raise ValueError(f"no reference mapping for model variant {cfg.variant!r}")
    fpn = model.get_layer("fpn")
    head = model.get_layer("head")
    out = []
    for i, conv in enumerate(fpn.lateral_convs):
        out += _conv(f"neck.lateral_convs.{i}.conv", conv)
    for i, conv in enumerate(fpn.output_convs):
        out += _conv(f"neck.fpn_convs.{i}.conv", conv)
    for i, unit in enumerate(head.cate_convs):
        out += _conv_module(f"bbox_head.cate_convs.{i}", unit)
    out += _conv(CATEGORY_CONV[cfg.variant], head.cate_out)
    if cfg.variant == "solov2":
        for i, unit in enumerate(head.kernel_convs):
            out += _conv_module(f"bbox_head.kernel_convs.{i}", unit)
        out += _conv("bbox_head.solo_kernel", head.kernel_out)
        mask_feature = model.get_layer("mask_feature_head")
        for unit in mask_feature.convs:
            m = _LEVEL_KEY.match(unit.name)
            if not m:
                raise ValueError(f"mask-feature layer {unit.name!r} has no reference counterpart")
            out += _conv_module(f"mask_feat_head.convs_all_levels.{m[1]}.conv{m[2]}", unit)
        out += _conv("mask_feat_head.conv_pred.0.conv", mask_feature.out_conv)
        out += _gn("mask_feat_head.conv_pred.0.gn", mask_feature.out_norm)
    elif cfg.variant == "solo":
        for i, unit in enumerate(head.mask_convs):
            out += _conv_module(f"bbox_head.ins_convs.{i}", unit)
        for l, conv in enumerate(head.mask_out):
            out += _conv(f"bbox_head.solo_ins_list.{l}", conv)
    else:  # decoupled_solo
        for axis in ("x", "y"):
            for i, unit in enumerate(getattr(head, f"mask_convs_{axis}")):
                out += _conv_module(f"bbox_head.ins_convs_{axis}.{i}", unit)
            for l, conv in enumerate(getattr(head, f"mask_out_{axis}")):
                out += _conv(f"bbox_head.dsolo_ins_list_{axis}.{l}", conv)
    return out


def describe_reference_checkpoint(state: Mapping) -> dict:
    """What a WXinlong/SOLO or mmdetection 2.x/3.x state dict implies for
    :class:`solo_tf.config.ModelConfig`.

    Returns a dict with what could be read: ``layout`` (:func:`checkpoint_layout`),
    ``variant``, ``backbone`` (``resnet18`` .. ``resnet101``), ``fpn_channels``,
    ``head_channels``, ``stacked_convs``, ``num_classes``, SOLOv2 ``mask_channels`` /
    ``mask_feature_channels``, SOLO and Decoupled SOLO ``num_grids``; ``unsupported``:
    reasons the checkpoint cannot load at all (DCN, Decoupled SOLO light), naming keys as the
    file has them. Values are inferred from shapes; nothing is validated.
    """
    layout = checkpoint_layout(state)
    found = _describe(to_mmdet1_names(state) if layout == "mmdet2" else state, layout or "mmdet1")
    if layout:
        found["layout"] = layout
    return found


def _describe(state, layout):
    """describe_reference_checkpoint of a state dict in WXinlong names (``layout``: the
    file's, for the keys the messages name)."""
    keys = set(state)
    shape = {k: tuple(np.shape(state[k])) for k in keys}
    found, unsupported = {}, []
    dcn = sorted(k for k in keys if ".conv_offset" in k)
    if dcn:
        unsupported.append(f"deformable convolutions (DCN, e.g. {layout_key(dcn[0], layout)!r}): solo_tf has none, "
                           "so the *_dcn_* checkpoints cannot be imported")
    if "bbox_head.dsolo_cate.weight" in keys:
        found["variant"], found["variant_key"] = "decoupled_solo", "bbox_head.dsolo_cate.weight"
        light = "bbox_head.ins_convs.0.conv.weight"
        if light in keys:
            inputs = shape[light][1] if len(shape[light]) == 4 else "?"
            unsupported.append(
                f"a Decoupled SOLO light head (DecoupledSOLOLightHead): {layout_key(light, layout)!r} is one mask "
                f"tower of {inputs} inputs (the features and both coordinates) shared by the X and Y outputs; "
                "solo_tf's Decoupled SOLO has an X tower and a Y tower (features + one coordinate each), so these "
                "weights have no place in it (the Decoupled SOLO R50/R101 checkpoints do)")
    elif "bbox_head.solo_kernel.weight" in keys or any(k.startswith("mask_feat_head.") for k in keys):
        found["variant"] = "solov2"
        found["variant_key"] = "bbox_head.solo_kernel.weight" if "bbox_head.solo_kernel.weight" in keys else next(
            k for k in sorted(keys) if k.startswith("mask_feat_head."))
    elif "bbox_head.solo_ins_list.0.weight" in keys:
        found["variant"], found["variant_key"] = "solo", "bbox_head.solo_ins_list.0.weight"
    if unsupported:
        found["unsupported"] = unsupported

    blocks = {}
    for k in keys:
        m = _BLOCK_KEY.match(k)
        if m:
            blocks[int(m[1])] = max(blocks.get(int(m[1]), 0), int(m[2]) + 1)
    if blocks:
        kind = "bottleneck" if "backbone.layer1.0.conv3.weight" in keys else "basic"
        counts = tuple(blocks.get(s, 0) for s in (1, 2, 3, 4))
        for name, (k, n) in RESNETS.items():
            if (k, tuple(n)) == (kind, counts):
                found["backbone"] = name

    def out_channels(key):
        return shape[key][0] if key in shape and len(shape[key]) == 4 else None

    for field, key in (("fpn_channels", "neck.lateral_convs.0.conv.weight"),
                       ("head_channels", "bbox_head.cate_convs.0.conv.weight"),
                       ("num_classes", f"{CATEGORY_CONV.get(found.get('variant'), 'bbox_head.solo_cate')}.weight"),
                       ("mask_channels", "bbox_head.solo_kernel.weight"),
                       ("mask_feature_channels", "mask_feat_head.convs_all_levels.0.conv0.conv.weight")):
        if out_channels(key) is not None:
            found[field] = out_channels(key)
    stack = [int(m[1]) for m in (_STACK_KEY.match(k) for k in keys) if m]
    if stack:
        found["stacked_convs"] = max(stack) + 1
    grids = []
    for l in range(16):
        if found.get("variant") == "solo" and out_channels(f"bbox_head.solo_ins_list.{l}.weight"):
            s = math.isqrt(out_channels(f"bbox_head.solo_ins_list.{l}.weight"))
        elif found.get("variant") == "decoupled_solo" and out_channels(f"bbox_head.dsolo_ins_list_x.{l}.weight"):
            s = out_channels(f"bbox_head.dsolo_ins_list_x.{l}.weight")
        else:
            break
        grids.append(s)
    if grids:
        found["num_grids"] = tuple(grids)
    return found


# --- helpers ---------------------------------------------------------------------------------


def _read(path):
    """(description of the source, {key: array}) from a path or a mapping."""
    from solo_tf.weights import read_state_dict

    if isinstance(path, Mapping):
        source, state = "state dict", path
        for wrapper in _WRAPPERS:
            if isinstance(state.get(wrapper), Mapping):
                state = state[wrapper]
    else:
        source, state = f"checkpoint {os.fspath(path)}", read_state_dict(path)
    state = dict(state)
    for prefix in _PREFIXES:  # a wrapper flattened into the names (.npz / .safetensors), DataParallel
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix):]: v for k, v in state.items()}
    if not state:
        raise ValueError(f"{source}: no tensors")
    return source, state


def _foreign_key(state, model):
    """The first key (in the file's order) that fits no SOLO checkpoint: not a ResNet key
    under ``backbone.``, not an FPN key under ``neck.``, not a head key of the model in
    either layout; the first key at all if every key fits (a backbone + neck only file)."""
    heads = {layout_key(k, layout) for k, _, _ in reference_targets(model) for layout in LAYOUTS}
    for key in state:
        if not (_RESNET_KEY.match(key) or _NECK_KEY.match(key) or key in heads):
            return key
    return next(iter(state))


def _zoo_hint(variant, backbone, layout=None):
    """Which zoo entries (:mod:`solo_tf.zoo`) are of this variant and backbone."""
    from solo_tf.zoo.registry import entries_for

    names = entries_for(variant, backbone, layout)
    if names:
        return (f"The zoo has the {variant} {backbone} model{'s' if len(names) > 1 else ''} "
                f"{', '.join(names)} (solo-tf models lists them all)")
    return "solo-tf models lists the checkpoints that load"


def _conv(key, layer):
    kh, kw, cin, cout = layer.kernel.shape
    out = [(f"{key}.weight", layer.kernel, (cout, cin, kh, kw))]
    if layer.use_bias:
        out.append((f"{key}.bias", layer.bias, (cout,)))
    return out


def _gn(key, layer):
    return [(f"{key}.weight", layer.gamma, tuple(layer.gamma.shape)),
            (f"{key}.bias", layer.beta, tuple(layer.beta.shape))]


def _conv_module(key, unit):
    """An mmdet ConvModule(conv, GN, ReLU) <- our ConvGNReLU."""
    return _conv(f"{key}.conv", unit.conv) + _gn(f"{key}.gn", unit.norm)


def _other_class_count(state, shapes, category):
    """The category conv differs from the model's in its output channels only."""
    w, b = f"{category}.weight", f"{category}.bias"
    if w not in state or b not in state or w not in shapes:
        return False
    got_w, got_b = tuple(np.shape(state[w])), tuple(np.shape(state[b]))
    want_w = shapes[w]
    return (len(got_w) == 4 and got_w[1:] == want_w[1:] and got_w[0] != want_w[0]
            and got_b == (got_w[0],))


def _config_hints(found, cfg):
    diffs = []
    for field in ("fpn_channels", "head_channels", "stacked_convs", "mask_channels", "mask_feature_channels",
                  "num_grids", "num_classes"):
        if field in found and tuple(np.atleast_1d(found[field])) != tuple(np.atleast_1d(getattr(cfg, field))):
            value = list(found[field]) if isinstance(found[field], tuple) else found[field]
            diffs.append(f"model.{field}: {value} (the model has {getattr(cfg, field)})")
    return "The checkpoint implies " + ", ".join(diffs) if diffs else ""


def _notes(cfg):
    notes = []
    if tuple(cfg.num_grids) != REFERENCE_NUM_GRIDS:
        notes.append(f"model.num_grids {list(cfg.num_grids)} differ from the reference's {list(REFERENCE_NUM_GRIDS)}")
    if tuple(cfg.strides) != REFERENCE_STRIDES:
        notes.append(f"model.strides {list(cfg.strides)} differ from the reference's {list(REFERENCE_STRIDES)}")
    return notes


def _few(keys, n=6):
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
