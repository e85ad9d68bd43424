"""Write the small ``.pth`` fixtures of tests/test_pth.py with PyTorch itself.

    pip install torch          # only to run this script; solo-tf never needs it
    python tests/make_pth_fixtures.py [OUT_DIR]   # default: tests/data/pth

Writes one checkpoint in each of PyTorch's two serializations - ``state_zip.pth`` (the zip
format, torch >= 1.6) and ``state_legacy.pth`` (``_use_new_zipfile_serialization=False``:
magic number, protocol, sys info, pickle, storage keys, raw storages; the format of the 2020
WXinlong/SOLO files) - holding an mmdet-style ``{"meta", "state_dict"}`` whose tensors cover
what a reader can get wrong: every dtype a checkpoint may hold (bfloat16 and float16
included), 0-d and empty tensors, non-contiguous tensors, several views of one storage at
different offsets and strides, an ``nn.Parameter`` and the ``_metadata`` attribute of a
``Module.state_dict()``. Then it loads each file back with
``torch.load(weights_only=True)`` and writes what torch returned to ``<name>_expected.npz``:
each tensor under its key (bfloat16 as its uint16 bit pattern), ``__dtypes__`` (key, torch
dtype) pairs and ``__meta_repr__``, the ``repr`` of the meta. The test compares the reader
against those files without importing torch.
"""

import sys
from collections import OrderedDict
from pathlib import Path

import numpy as np
import torch


def state_dict():
    g = torch.Generator().manual_seed(0)
    base = torch.randn(4, 6, generator=g)  # one storage, viewed three ways below
    conv = torch.nn.Conv2d(3, 4, 3)
    with torch.no_grad():
        conv.weight.copy_(torch.randn(4, 3, 3, 3, generator=g))
    sd = OrderedDict()
    sd["backbone.conv1.weight"] = torch.randn(4, 3, 3, 3, generator=g)
    sd["backbone.bn1.running_var"] = torch.rand(4, generator=g, dtype=torch.float64) + 0.5
    sd["backbone.bn1.num_batches_tracked"] = torch.tensor(1000, dtype=torch.int64)  # 0-d
    sd["view.rows"] = base[1:3]  # storage offset 6
    sd["view.column"] = base[:, 2]  # offset 2, stride 6
    sd["view.transposed"] = base.t()  # strides (1, 6)
    sd["view.whole"] = base
    sd["half"] = torch.randn(2, 3, generator=g).half()
    sd["bfloat16"] = torch.randn(3, 2, generator=g).to(torch.bfloat16)
    sd["int32"] = torch.arange(-3, 3, dtype=torch.int32)
    sd["int16"] = torch.tensor([-7, 300], dtype=torch.int16)
    sd["int8"] = torch.tensor([-128, 127], dtype=torch.int8)
    sd["uint8"] = torch.tensor([0, 255, 7], dtype=torch.uint8)
    sd["bool"] = torch.tensor([[True, False], [False, True]])
    sd["empty"] = torch.zeros(0, 3)
    sd["parameter"] = conv.weight  # an nn.Parameter: torch._utils._rebuild_parameter
    sd._metadata = OrderedDict([("", {"version": 1})])  # as Module.state_dict() sets it (a BUILD)
    meta = {
        "mmdet_version": "1.0.0+f4cd03b", "epoch": 36, "iter": 263412, "lr": 0.0001,
        "CLASSES": ("person", "bicycle"), "time": "Sat Jun 20 2020", "flags": [True, False, None],
        "nested": {"scale": (1333, 800), "bytes": b"\x00\xff"},
    }
    return {"meta": meta, "state_dict": sd}


def write_expected(path, obj):
    arrays, dtypes = {}, []
    for key, t in obj["state_dict"].items():
        dtypes.append((key, str(t.dtype)))
        t = t.detach()
        arrays[key] = (t.view(torch.int16).numpy().view(np.uint16) if t.dtype == torch.bfloat16 else t.numpy())
    arrays["__dtypes__"] = np.array(dtypes)
    arrays["__meta_repr__"] = np.array(repr(obj["meta"]))
    np.savez(path, **arrays)


def main(out):
    out.mkdir(parents=True, exist_ok=True)
    obj = state_dict()
    for name, zipped in (("state_zip", True), ("state_legacy", False)):
        path = out / f"{name}.pth"
        torch.save(obj, path, _use_new_zipfile_serialization=zipped)
        write_expected(out / f"{name}_expected.npz", torch.load(path, map_location="cpu", weights_only=True))
        print(path, path.stat().st_size, "bytes")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "data" / "pth")
