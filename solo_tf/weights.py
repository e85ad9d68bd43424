"""Import torchvision / timm ResNet checkpoints into the backbones of :mod:`solo_tf.backbones`.

Files (:func:`read_state_dict`), none of which needs PyTorch:

- ``.safetensors``: the ``safetensors`` package's numpy API (``safetensors.numpy.load_file``).
  timm's ``model.safetensors`` for ``resnet*.tv_in1k`` is such a file.
- ``.npz``: ``np.savez(path, **state_dict)``, read with numpy only (no pickle).
- ``.pth`` / ``.pt`` / ``.bin``: :func:`solo_tf.pth.read_pth`, a restricted unpickler that
  admits only what a state dict needs (PyTorch's ``weights_only`` rule) and runs nothing;
  both the zip and the legacy (torch < 1.6) serialization. A ``{"state_dict": ...}`` or
  ``{"model": ...}`` wrapper is unwrapped, and a ``module.`` prefix on every key
  (DataParallel) is dropped.

bfloat16 tensors are widened to float32 (exactly); other dtypes keep theirs.

Mapping (:func:`load_torchvision_resnet`), exact: the Keras layer ``conv1`` / ``bn1`` /
``layer{s}_{b}_{conv,bn}{i}`` / ``layer{s}_{b}_downsample_conv`` / ``..._downsample_bn``
takes the torchvision keys ``conv1.*`` / ``bn1.*`` / ``layer{s}.{b}.{conv,bn}{i}.*`` /
``layer{s}.{b}.downsample.0.*`` / ``layer{s}.{b}.downsample.1.*``. Conv ``weight`` (OIHW)
becomes ``kernel`` (HWIO); BatchNorm ``weight, bias, running_mean, running_var`` become
``gamma, beta, moving_mean, moving_variance``. Ignored on purpose, and only these: the
classifier ``fc.weight`` / ``fc.bias`` (the backbone has no classifier) and every
``*.num_batches_tracked`` (a counter torchvision keeps for momentum=None BatchNorm). Any
other missing or unexpected key, or a shape that does not fit, is an error naming the key
and the file, and nothing is assigned.
"""

from __future__ import annotations

import os
import re
import zipfile
from collections.abc import Mapping

import ml_dtypes
import numpy as np

_IGNORED = re.compile(r"^fc\.(weight|bias)$|(^|\.)num_batches_tracked$")
_BLOCK_LAYER = re.compile(r"^layer(\d+)_(\d+)_(\w+)$")
PTH_SUFFIXES = (".pth", ".pt", ".bin")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint file into ``{torch key: np.ndarray}`` (PyTorch layout, as stored;
    bfloat16 widened to float32).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown suffix, or a corrupted / unreadable file (the message names
            the file and, where one is at fault, the key); for a ``.pth``, also a pickle that
            needs a global outside the state-dict allowlist
            (:class:`solo_tf.pth.UnsafePickleError`, naming it).
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        state = _read_safetensors(path)
    elif path.endswith(".npz"):
        state = _read_npz(path)
    elif path.endswith(PTH_SUFFIXES):
        state = _read_pth(path)
    else:
        raise ValueError(f"checkpoint {path}: unknown file kind; expected .safetensors, .npz, .pth, .pt or .bin")
    return {k: v.astype(np.float32) if v.dtype == ml_dtypes.bfloat16 else v for k, v in state.items()}


def _read_safetensors(path):
    import safetensors.numpy

    try:
        return safetensors.numpy.load_file(path)
    except Exception as e:  # safetensors.SafetensorError (a bad header, truncation), OSError
        raise ValueError(f"checkpoint {path}: not a readable safetensors file, corrupted or truncated ({e})") from e


def _read_npz(path):
    try:
        archive = np.load(path, allow_pickle=False)
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(f"checkpoint {path}: not a readable .npz file ({e})") from e
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise ValueError(f"checkpoint {path}: a single array, not an .npz archive of named arrays")
    state = {}
    with archive:
        for key in archive.files:
            try:
                state[key] = archive[key]
            except Exception as e:  # zlib.error, BadZipFile, ValueError (object arrays) ...
                raise ValueError(f"checkpoint {path}: array {key!r} is corrupted or unreadable ({e})") from e
    return state


def _read_pth(path):
    from solo_tf.pth import read_pth

    state, _ = read_pth(path)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


def torchvision_key(layer_name: str) -> str:
    """torchvision module path of one of our ResNet layers:
    ``layer2_0_downsample_bn`` -> ``layer2.0.downsample.1``, ``layer3_5_conv2`` ->
    ``layer3.5.conv2``, ``conv1`` -> ``conv1``."""
    m = _BLOCK_LAYER.match(layer_name)
    if not m:
        return layer_name
    stage, block, part = m.groups()
    part = {"downsample_conv": "downsample.0", "downsample_bn": "downsample.1"}.get(part, part)
    return f"layer{stage}.{block}.{part}"


def load_torchvision_resnet(backbone, checkpoint, *, prefix: str = "") -> None:
    """Assign a torchvision / timm ResNet state dict to a ResNet from ``build_backbone``.

    Args:
        backbone: ``build_backbone("resnet18" | "resnet34" | "resnet50" | "resnet101", ...)``.
        checkpoint: a file path (see :func:`read_state_dict`) or a mapping
            ``{torch key: array}`` in PyTorch layout (conv OIHW).
        prefix: only keys starting with it are the backbone's (the prefix is stripped);
            every other key is ignored. ``"backbone."`` takes the ResNet out of a detector
            checkpoint such as WXinlong/SOLO's (mmdet). Empty (default): every key is the
            backbone's.

    The mapping is in this module's docstring; only ``fc.weight``, ``fc.bias`` and
    ``*.num_batches_tracked`` are ignored.

    Raises:
        ValueError: missing or unexpected keys, a shape that does not fit, a non-float or
            non-finite weight, or a backbone layer with no torchvision counterpart (the
            message names the keys and the file). Nothing is assigned then.
    """
    from keras import layers

    if isinstance(checkpoint, Mapping):
        source, state = "state dict", dict(checkpoint)
    else:
        source, state = f"checkpoint {os.fspath(checkpoint)}", read_state_dict(checkpoint)
    if prefix:
        state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
        if not state:
            raise ValueError(f"{source}: no key starts with the prefix {prefix!r}")
    state = {k: v for k, v in state.items() if not _IGNORED.search(k)}

    # (torch key, Keras variable, torch shape) for every weight of the backbone.
    targets = []
    for layer in backbone.layers:
        if not layer.weights:
            continue
        base = torchvision_key(layer.name)
        if isinstance(layer, layers.Conv2D):
            kh, kw, cin, cout = layer.kernel.shape
            targets.append((f"{base}.weight", layer.kernel, (cout, cin, kh, kw)))
            if layer.use_bias:
                targets.append((f"{base}.bias", layer.bias, (cout,)))
        elif isinstance(layer, layers.BatchNormalization) and layer.scale and layer.center:
            for leaf, var in (("weight", layer.gamma), ("bias", layer.beta),
                              ("running_mean", layer.moving_mean), ("running_var", layer.moving_variance)):
                targets.append((f"{base}.{leaf}", var, tuple(var.shape)))
        else:
            raise ValueError(f"backbone layer {layer.name!r} ({type(layer).__name__}) has no torchvision counterpart")

    expected = {key for key, _, _ in targets}
    missing = sorted(expected - set(state))
    unexpected = sorted(set(state) - expected)
    if missing or unexpected:
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {_few(unexpected)}")
        raise ValueError(
            f"{source} does not match the backbone: {'; '.join(parts)} "
            "(only fc.* and *.num_batches_tracked are ignored)"
        )

    values = []
    for key, var, torch_shape in targets:
        value = np.asarray(state[key])
        if tuple(value.shape) != torch_shape:
            raise ValueError(
                f"{source}: {key!r} has shape {list(value.shape)}, the backbone needs {list(torch_shape)} (PyTorch layout)"
            )
        if not np.issubdtype(value.dtype, np.floating):
            raise ValueError(f"{source}: {key!r} has dtype {value.dtype}, expected floating point")
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{source}: {key!r} holds NaN or infinite values")
        if value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)  # OIHW -> HWIO
        values.append((var, value.astype(var.dtype)))
    for var, value in values:
        var.assign(value)


def _few(keys, n=6):
    shown = ", ".join(repr(k) for k in keys[:n])
    return shown + (f", ... ({len(keys) - n} more)" if len(keys) > n else "")
