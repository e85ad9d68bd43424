"""Write PyTorch ``.pth`` files without PyTorch, for tests: a checkpoint of any size in the
byte layout ``torch.save`` gives (zip, or legacy with ``_use_new_zipfile_serialization=False``),
with numpy arrays as the tensors. The pickle names the same globals torch's does
(``torch._utils._rebuild_tensor_v2``, ``torch.FloatStorage`` ...) through stand-ins that
the pure-Python pickler writes by name; each array gets its own contiguous storage.

tests/test_pth.py checks this writer against files torch itself wrote.
"""

import io
import pickle
import struct
import zipfile
from collections import OrderedDict

import ml_dtypes
import numpy as np

from solo_tf.pth import LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION

_STORAGE_NAMES = {
    np.dtype(np.float64): "DoubleStorage", np.dtype(np.float32): "FloatStorage", np.dtype(np.float16): "HalfStorage",
    np.dtype(ml_dtypes.bfloat16): "BFloat16Storage", np.dtype(np.int64): "LongStorage",
    np.dtype(np.int32): "IntStorage", np.dtype(np.int16): "ShortStorage", np.dtype(np.int8): "CharStorage",
    np.dtype(np.uint8): "ByteStorage", np.dtype(np.bool_): "BoolStorage",
}


class _Global:
    """Pickled as the global ``module.name`` (GLOBAL opcode), whatever it is here."""

    def __init__(self, module, name):
        self.module, self.name = module, name

    def __call__(self, *args):  # save_reduce wants a callable; never called
        raise TypeError(f"{self.module}.{self.name} is a stand-in")


_REBUILD_TENSOR_V2 = _Global("torch._utils", "_rebuild_tensor_v2")


class _StorageRef:
    def __init__(self, key, array):
        self.key, self.array = key, array


class _Tensor:
    def __init__(self, storage, shape):
        self.storage, self.shape = storage, shape


class _Pickler(pickle._Pickler):  # the pure-Python pickler: its save_global can be overridden
    def __init__(self, file, legacy):
        super().__init__(file, protocol=2)
        self.legacy = legacy

    def persistent_id(self, obj):
        if isinstance(obj, _StorageRef):
            storage_type = _Global("torch", _STORAGE_NAMES[obj.array.dtype])
            pid = ("storage", storage_type, obj.key, "cpu", obj.array.size)
            return pid + (None,) if self.legacy else pid
        return None

    def save(self, obj, save_persistent_id=True):
        if isinstance(obj, _Global):
            self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode())
            return
        if isinstance(obj, _Tensor):
            strides = tuple(int(np.prod(obj.shape[i + 1:], dtype=np.int64)) for i in range(len(obj.shape)))
            args = (obj.storage, 0, tuple(obj.shape), strides, False, OrderedDict())
            self.save_reduce(_REBUILD_TENSOR_V2, args, obj=obj)
            return
        super().save(obj, save_persistent_id)


def _replace_arrays(obj, storages):
    if isinstance(obj, np.ndarray):
        array = obj if obj.flags.c_contiguous else np.ascontiguousarray(obj)  # (keeps a 0-d array 0-d)
        if array.dtype not in _STORAGE_NAMES:
            raise TypeError(f"no torch storage for dtype {array.dtype}")
        ref = _StorageRef(str(len(storages)), array)
        storages.append(ref)
        return _Tensor(ref, array.shape)
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _replace_arrays(v, storages)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _replace_arrays(v, storages) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_replace_arrays(v, storages) for v in obj)
    return obj


def _data(array):
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def write_pth(path, obj, *, legacy=False):
    """``obj`` (dicts, lists, plain values, numpy arrays as tensors) to ``path`` as torch.save
    would write it. Returns ``path``."""
    storages = []
    obj = _replace_arrays(obj, storages)
    main = io.BytesIO()
    _Pickler(main, legacy).dump(obj)
    if legacy:
        with open(path, "wb") as f:
            for header in (LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION,
                           {"protocol_version": LEGACY_PROTOCOL_VERSION, "little_endian": True,
                            "type_sizes": {"short": 2, "int": 4, "long": 4}}):
                pickle.dump(header, f, protocol=2)
            f.write(main.getvalue())
            pickle.dump(sorted(s.key for s in storages), f, protocol=2)
            for ref in sorted(storages, key=lambda s: s.key):
                f.write(struct.pack("<q", ref.array.size) + _data(ref.array))
        return path
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", main.getvalue())
        z.writestr("archive/byteorder", "little")
        for ref in storages:
            z.writestr(f"archive/data/{ref.key}", _data(ref.array))
        z.writestr("archive/version", "3\n")
    return path
