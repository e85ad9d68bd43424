"""Import torchvision / timm ResNet checkpoints into the backbones of :mod:`solo_tf.backbones`.

Files (:func:`read_state_dict`):

- ``.safetensors``: parsed here with numpy only (8-byte little-endian header length, a JSON
  header ``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": ...}``,
  then the raw little-endian buffer); the ``safetensors`` package is not needed. timm's
  ``model.safetensors`` for ``resnet*.tv_in1k`` is such a file.
- ``.npz``: ``np.savez(path, **state_dict)``, read with numpy only (no pickle).
- ``.pth`` / ``.pt`` / ``.bin``: ``torch.load(..., weights_only=True)`` where PyTorch is
  installed (``pip install torch`` otherwise). A ``{"state_dict": ...}`` or ``{"model": ...}``
  wrapper is unwrapped, and a ``module.`` prefix on every key (DataParallel) is dropped.

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

import json
import os
import re
import zipfile
from collections.abc import Mapping

import numpy as np

# safetensors dtype tag -> numpy little-endian dtype (BF16 is widened by hand).
_SAFETENSORS_DTYPES = {
    "F64": "<f8", "F32": "<f4", "F16": "<f2", "BF16": "<u2",
    "I64": "<i8", "I32": "<i4", "I16": "<i2", "I8": "i1", "U8": "u1", "BOOL": "?",
}
_IGNORED = re.compile(r"^fc\.(weight|bias)$|(^|\.)num_batches_tracked$")
_BLOCK_LAYER = re.compile(r"^layer(\d+)_(\d+)_(\w+)$")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Read a checkpoint file into ``{torch key: np.ndarray}`` (PyTorch layout, as stored).

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unknown suffix, or a corrupted / unreadable file (the message names
            the file and, where one is at fault, the key).
        ImportError: a torch pickle (``.pth`` / ``.pt`` / ``.bin``) without PyTorch installed.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    if path.endswith(".safetensors"):
        return read_safetensors(path)
    if path.endswith(".npz"):
        return _read_npz(path)
    if path.endswith((".pth", ".pt", ".bin")):
        return _read_torch(path)
    raise ValueError(f"checkpoint {path}: unknown file kind; expected .safetensors, .npz, .pth, .pt or .bin")


def read_safetensors(path: str | os.PathLike) -> dict[str, np.ndarray]:
    """Parse a ``.safetensors`` file with numpy only. Every tensor is copied out of a
    read-only memory map; BF16 is widened to float32, other dtypes keep theirs."""
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size < 8:
        raise ValueError(f"checkpoint {path}: not a safetensors file ({size} bytes, shorter than its 8-byte header length)")
    raw = np.memmap(path, dtype=np.uint8, mode="r")
    n = int(raw[:8].view("<u8")[0])
    if n > size - 8:
        raise ValueError(f"checkpoint {path}: corrupted safetensors file: header length {n} exceeds the file ({size} bytes)")
    try:
        header = json.loads(bytes(raw[8 : 8 + n]).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {path}: corrupted safetensors file: header is not JSON ({e})") from e
    if not isinstance(header, dict):
        raise ValueError(f"checkpoint {path}: corrupted safetensors file: header is not a JSON object")
    buffer = raw[8 + n :]
    state = {}
    for key, entry in header.items():
        if key == "__metadata__":
            continue
        where = f"checkpoint {path}: tensor {key!r}"
        try:
            dtype_tag, shape, (begin, end) = entry["dtype"], entry["shape"], entry["data_offsets"]
            shape = tuple(int(d) for d in shape)
            begin, end = int(begin), int(end)
        except (TypeError, KeyError, ValueError) as e:
            raise ValueError(f"{where}: malformed header entry {entry!r}") from e
        if dtype_tag not in _SAFETENSORS_DTYPES:
            raise ValueError(f"{where}: unsupported dtype {dtype_tag!r}")
        dtype = np.dtype(_SAFETENSORS_DTYPES[dtype_tag])
        if not 0 <= begin <= end <= buffer.size or any(d < 0 for d in shape):
            raise ValueError(
                f"{where}: data offsets [{begin}, {end}] outside the data buffer ({buffer.size} bytes); "
                "the file is truncated or corrupted"
            )
        if end - begin != int(np.prod(shape, dtype=np.int64)) * dtype.itemsize:
            raise ValueError(f"{where}: {end - begin} bytes do not hold shape {list(shape)} of {dtype_tag}")
        value = np.array(buffer[begin:end].view(dtype).reshape(shape))  # a copy: the map closes
        if dtype_tag == "BF16":
            value = (value.astype(np.uint32) << 16).view(np.float32)
        state[key] = value
    return state


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


def _read_torch(path):
    try:
        import torch
    except ImportError as e:
        raise ImportError(
            f"reading the PyTorch checkpoint {path} needs PyTorch: pip install torch "
            "(or save the state dict as .safetensors / .npz, which load with numpy only)"
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle errors, zip errors, refused globals
        raise ValueError(f"checkpoint {path}: torch.load failed ({e})") from e
    for wrapper in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint {path}: expected a state dict, got {type(obj).__name__}")
    if obj and all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    state = {}
    for key, value in obj.items():
        if not isinstance(value, torch.Tensor):
            raise ValueError(f"checkpoint {path}: entry {key!r} is a {type(value).__name__}, not a tensor")
        value = value.detach().cpu()
        if value.is_floating_point():
            value = value.float()  # bf16 / fp16 -> float32 (numpy has no bf16)
        state[key] = value.numpy()
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
