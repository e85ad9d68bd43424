"""Read PyTorch ``.pth`` / ``.pt`` checkpoints without PyTorch, and without running their code.

A ``.pth`` file is a pickle, and a pickle can call any function it names: unpickling one
from the internet with :mod:`pickle` runs whatever its author wrote. This module unpickles
with a restricted unpickler that admits only what a state dict needs - PyTorch's own
``weights_only`` rule - and builds numpy arrays from the raw storages itself:

- the tensor rebuild calls ``torch._utils._rebuild_tensor``, ``_rebuild_tensor_v2``,
  ``_rebuild_tensor_v3``, ``_rebuild_parameter``, ``_rebuild_parameter_with_state`` and
  ``torch._tensor._rebuild_from_type_v2`` (for a plain ``Tensor`` / ``Parameter``);
- the storage types ``torch.FloatStorage``, ``HalfStorage``, ``BFloat16Storage``,
  ``DoubleStorage``, ``LongStorage``, ``IntStorage``, ``ShortStorage``, ``CharStorage``,
  ``ByteStorage``, ``BoolStorage``, the complex ones and ``UntypedStorage``, the dtypes
  ``torch.float32`` ... and ``torch.Size``, referenced by persistent ids, never called;
- ``collections.OrderedDict`` and the plain values of a ``meta``: numbers, strings, bytes
  (``_codecs.encode`` with latin-1), lists, tuples, dicts, ``set``, ``bytearray``,
  ``complex``; plus numeric numpy scalars (``numpy.core.multiarray.scalar`` of a numeric
  ``numpy.dtype``), which a training script's ``meta`` may hold: read as Python numbers
  from their bytes, never through numpy's own unpickling.

Any other global is refused with :class:`UnsafePickleError`, naming it (``module.name``),
before anything of it is imported or called. The objects the pickle builds are plain
containers and this module's inert records (a tensor record refuses ``BUILD``), so nothing
in the file is executed.

Both serializations are read:

- the zip format (torch >= 1.6): ``<dir>/data.pkl`` with persistent ids ``("storage",
  storage type, key, location, numel)``, each storage's raw bytes in ``<dir>/data/<key>``,
  ``<dir>/byteorder`` ("little" when absent);
- the legacy format (torch < 1.6, ``_use_new_zipfile_serialization=False``, the 2020
  WXinlong/SOLO files): pickled magic number, protocol version (1001) and sys info, the
  main pickle with persistent ids ``("storage", storage type, root key, location, numel,
  view metadata)``, a pickled list of storage keys, then per key an int64 element count and
  the storage's little-endian bytes.

The tar format of torch < 0.4 and TorchScript archives are refused with a message that says
so. Each tensor becomes a C-contiguous numpy array copied out of its storage with the
tensor's offset, shape and strides (several tensors may view one storage); bfloat16 is
``ml_dtypes.bfloat16`` (what Keras uses), the other dtypes their numpy equivalents.
"""

from __future__ import annotations

import _compat_pickle
import os
import pickle
import struct
import zipfile
from collections import OrderedDict
from collections.abc import Mapping

import ml_dtypes
import numpy as np

LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL_VERSION = 1001

# torch storage class / dtype name -> numpy dtype
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": ml_dtypes.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
    "ComplexFloatStorage": np.complex64, "ComplexDoubleStorage": np.complex128, "UntypedStorage": np.uint8,
}
_TORCH_DTYPES = {
    "float64": np.float64, "double": np.float64, "float32": np.float32, "float": np.float32,
    "float16": np.float16, "half": np.float16, "bfloat16": ml_dtypes.bfloat16, "int64": np.int64,
    "long": np.int64, "int32": np.int32, "int": np.int32, "int16": np.int16, "short": np.int16,
    "int8": np.int8, "uint8": np.uint8, "bool": np.bool_, "complex64": np.complex64,
    "complex128": np.complex128,
}
# numeric numpy scalars only: never an object dtype
_NUMPY_SPECS = {np.dtype(t).str[1:] for t in (np.float16, np.float32, np.float64, np.int8, np.int16, np.int32,
                                               np.int64, np.uint8, np.uint16, np.uint32, np.uint64, np.bool_,
                                               np.complex64, np.complex128)}


class PthError(ValueError):
    """A ``.pth`` file that cannot be read as a checkpoint (the message names the file)."""


class UnsafePickleError(PthError, pickle.UnpicklingError):
    """The pickle names a global outside the state-dict allowlist; nothing was run."""


def read_pth(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """``(state_dict, meta)`` of a ``.pth`` checkpoint, without PyTorch.

    The file may hold the state dict itself, or a dict with it under ``state_dict`` or
    ``model`` (mmdetection saves ``{"meta", "state_dict"[, "optimizer"]}``); ``meta`` is
    that dict's ``meta`` (``{}`` when there is none), plain Python values.

    Raises:
        FileNotFoundError: no such file.
        UnsafePickleError: the pickle needs a global outside the allowlist (named).
        PthError: not a PyTorch checkpoint, a truncated or corrupted one, or one whose state
            dict holds something other than tensors (the key is named).
    """
    obj = load_pth(path)
    meta = {}
    if isinstance(obj, Mapping):
        meta = obj.get("meta", {}) if isinstance(obj.get("meta", {}), Mapping) else {}
        for wrapper in ("state_dict", "model"):
            if isinstance(obj.get(wrapper), Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping):
        raise PthError(f"checkpoint {os.fspath(path)}: expected a state dict, got {type(obj).__name__}")
    state = {}
    for key, value in obj.items():
        if not isinstance(value, np.ndarray):
            raise PthError(f"checkpoint {os.fspath(path)}: entry {key!r} is a {type(value).__name__}, not a tensor")
        state[str(key)] = value
    return state, dict(meta)


def load_pth(path: str | os.PathLike):
    """The whole object pickled in a ``.pth`` file, tensors as numpy arrays (see the module
    docstring for what is admitted). Raises as :func:`read_pth`."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"checkpoint file not found: {path}")
    try:
        if zipfile.is_zipfile(path):
            return _load_zip(path)
        with open(path, "rb") as f:
            head = f.read(512)
            if len(head) >= 262 and head[257:262] == b"ustar":
                raise PthError(f"checkpoint {path}: PyTorch's tar format (torch < 0.4) is not supported; "
                               "re-save it with a current torch: torch.save(torch.load(f), f2)")
            if not head.startswith(b"\x80"):
                raise PthError(f"checkpoint {path}: not a PyTorch checkpoint (neither a zip archive nor a pickle)")
            f.seek(0)
            return _load_legacy(f, path)
    except PthError:
        raise
    except (pickle.UnpicklingError, EOFError, zipfile.BadZipFile, KeyError, ValueError, TypeError,
            IndexError, AttributeError, struct.error, OverflowError, MemoryError) as e:
        raise PthError(f"checkpoint {path}: not a readable PyTorch checkpoint, truncated or corrupted "
                       f"({type(e).__name__}: {e})") from e


# --- the formats ------------------------------------------------------------------------------


def _load_zip(path):
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("/data.pkl") and n.count("/") == 1]
        if not pickles:
            if any(n.endswith("/constants.pkl") for n in names):
                raise PthError(f"checkpoint {path}: a TorchScript archive (torch.jit.save), not a state dict")
            raise PthError(f"checkpoint {path}: a zip archive without the data.pkl of a PyTorch checkpoint")
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if f"{prefix}byteorder" in names:
            byteorder = archive.read(f"{prefix}byteorder").decode("ascii", "replace").strip()
            if byteorder not in ("little", "big"):
                raise PthError(f"checkpoint {path}: unknown byte order {byteorder!r}")
        blobs = {}

        def storage(storage_type, key, location, numel, view_metadata=None):
            key = str(key)
            if key not in blobs:
                data = archive.read(f"{prefix}data/{key}")
                blobs[key] = _Blob(key, storage_type.dtype, int(numel), data, byteorder)
            return _Storage(blobs[key], 0)

        with archive.open(pickles[0]) as f:
            obj = _Unpickler(f, path, storage).load()
    return _materialize(obj, path)


def _load_legacy(f, path):
    def plain():
        return _Unpickler(f, path, None).load()

    if plain() != LEGACY_MAGIC_NUMBER:
        raise PthError(f"checkpoint {path}: not a PyTorch checkpoint (a pickle without PyTorch's magic number)")
    version = plain()
    if version != LEGACY_PROTOCOL_VERSION:
        raise PthError(f"checkpoint {path}: unknown legacy protocol version {version!r}")
    plain()  # sys info: storages are written little-endian whatever the machine
    blobs = {}

    def storage(storage_type, root_key, location, numel, view_metadata=None):
        root_key = str(root_key)
        if root_key not in blobs:
            blobs[root_key] = _Blob(root_key, storage_type.dtype, int(numel), None, "little")
        blob = blobs[root_key]
        offset = 0
        if view_metadata is not None:  # (view key, offset, size) in elements of the root
            offset = int(view_metadata[1])
        return _Storage(blob, offset)

    obj = _Unpickler(f, path, storage).load()
    keys = plain()
    if not isinstance(keys, list):
        raise PthError(f"checkpoint {path}: the storage key list is a {type(keys).__name__}")
    for key in keys:
        key = str(key)
        if key not in blobs:
            raise PthError(f"checkpoint {path}: storage {key!r} is listed but no tensor uses it")
        blob = blobs[key]
        header = f.read(8)
        if len(header) < 8:
            raise PthError(f"checkpoint {path}: truncated before storage {key!r}")
        (numel,) = struct.unpack("<q", header)
        if numel != blob.numel:
            raise PthError(f"checkpoint {path}: storage {key!r} holds {numel} elements, its tensors say {blob.numel}")
        nbytes = numel * np.dtype(blob.dtype).itemsize
        data = f.read(nbytes)
        if len(data) < nbytes:
            raise PthError(f"checkpoint {path}: truncated in storage {key!r} ({len(data)} of {nbytes} bytes)")
        blob.data = data
    missing = sorted(k for k, b in blobs.items() if b.data is None)
    if missing:
        raise PthError(f"checkpoint {path}: storage(s) {missing[:5]} are used but not in the file")
    return _materialize(obj, path)


# --- the restricted unpickler -------------------------------------------------------------------


class _Unpickler(pickle.Unpickler):
    """Admits only the globals of :data:`_ALLOWED`; storages come from ``storage(...)``."""

    def __init__(self, file, path, storage):
        super().__init__(file, encoding="utf-8")
        self._path = path
        self._storage = storage

    def find_class(self, module, name):
        if (module, name) in _compat_pickle.NAME_MAPPING:  # Python 2 names (protocol < 3)
            module, name = _compat_pickle.NAME_MAPPING[(module, name)]
        module = _compat_pickle.IMPORT_MAPPING.get(module, module)
        allowed = _ALLOWED.get((module, name))
        if allowed is None:
            raise UnsafePickleError(
                f"refusing to load checkpoint {self._path}: its pickle needs the global '{module}.{name}', which is "
                "not one a state dict needs (tensors, storages, OrderedDict, plain values); nothing was executed. "
                "If you trust the file, load it with torch and save model.state_dict() as .safetensors"
            )
        return allowed

    def persistent_load(self, pid):
        if self._storage is None:
            raise PthError(f"checkpoint {self._path}: a storage reference where none belongs")
        if not isinstance(pid, tuple) or not pid:
            raise PthError(f"checkpoint {self._path}: malformed persistent id {pid!r}")
        kind = pid[0].decode("ascii") if isinstance(pid[0], bytes) else pid[0]
        if kind == "module":
            raise UnsafePickleError(f"refusing to load checkpoint {self._path}: it pickles a whole nn.Module, "
                                    "not a state dict; save model.state_dict() instead")
        if kind != "storage" or len(pid) not in (5, 6) or not isinstance(pid[1], _StorageType):
            raise PthError(f"checkpoint {self._path}: malformed persistent id {pid!r}")
        return self._storage(*pid[1:])


class _Inert:
    """Base of the records the pickle may build: no ``BUILD`` (``__setstate__``) on them."""

    __slots__ = ()

    def __setstate__(self, state):
        raise UnsafePickleError(f"refusing a BUILD on a {type(self).__name__} record")

    def __reduce__(self):  # never pickled again
        raise TypeError(f"{type(self).__name__} is not picklable")


class _StorageType(_Inert):
    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        self.name, self.dtype = name, np.dtype(dtype)


class _DType(_Inert):
    __slots__ = ("name", "dtype")

    def __init__(self, name, dtype):
        self.name, self.dtype = name, np.dtype(dtype)


class _Marker(_Inert):
    """``torch.Tensor`` / ``torch.nn.Parameter`` as the ``new_type`` of _rebuild_from_type_v2."""

    __slots__ = ("name",)

    def __init__(self, name):
        self.name = name


class _Blob:
    """One storage's raw bytes (filled after the pickle in the legacy format)."""

    __slots__ = ("key", "dtype", "numel", "data", "byteorder")

    def __init__(self, key, dtype, numel, data, byteorder):
        self.key, self.dtype, self.numel, self.data, self.byteorder = key, np.dtype(dtype), numel, data, byteorder


class _Storage(_Inert):
    __slots__ = ("blob", "offset")

    def __init__(self, blob, offset):
        self.blob, self.offset = blob, offset


class _Tensor(_Inert):
    __slots__ = ("storage", "offset", "size", "stride", "dtype")

    def __init__(self, storage, offset, size, stride, dtype=None):
        if not isinstance(storage, _Storage):
            raise PthError(f"a tensor record whose storage is a {type(storage).__name__}")
        size, stride = tuple(size), tuple(stride)
        if not all(_is_int(v) for v in (offset, *size, *stride)) or len(size) != len(stride):
            raise PthError(f"a malformed tensor record (offset {offset!r}, size {size!r}, stride {stride!r})")
        self.storage, self.offset, self.size, self.stride = storage, int(offset), size, stride
        self.dtype = storage.blob.dtype if dtype is None else dtype


def _is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def _rebuild_tensor(storage, storage_offset, size, stride):
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, backward_hooks=None,
                       metadata=None):
    _check_hooks(backward_hooks)
    return _Tensor(storage, storage_offset, size, stride)


def _rebuild_tensor_v3(storage, storage_offset, size, stride, requires_grad, backward_hooks, dtype,
                       metadata=None):
    _check_hooks(backward_hooks)
    if not isinstance(dtype, _DType):
        raise PthError(f"a tensor record whose dtype is a {type(dtype).__name__}")
    return _Tensor(storage, storage_offset, size, stride, dtype.dtype)


def _rebuild_parameter(data, requires_grad=False, backward_hooks=None):
    _check_hooks(backward_hooks)
    if not isinstance(data, _Tensor):
        raise PthError(f"a parameter record whose data is a {type(data).__name__}")
    return data


def _rebuild_parameter_with_state(data, requires_grad, backward_hooks, state):
    return _rebuild_parameter(data, requires_grad, backward_hooks)  # python attributes of the parameter: dropped


def _rebuild_from_type_v2(func, new_type, args, state):
    if func not in _REBUILDERS or not isinstance(new_type, _Marker) or not isinstance(args, tuple):
        raise PthError("a tensor subclass record (torch._tensor._rebuild_from_type_v2) of another kind than "
                       "Tensor / Parameter")
    return func(*args)  # python attributes of the tensor: dropped


def _check_hooks(hooks):
    if hooks not in (None, {}) and not (isinstance(hooks, Mapping) and not hooks):
        raise PthError("a tensor record with backward hooks")


def _size(*args):
    return tuple(*args)


def _encode(text, encoding="latin1"):
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PthError(f"_codecs.encode is admitted for latin-1 bytes only, got {encoding!r}")
    return text.encode("latin1")


class _NumpyDType(_Inert):
    """``numpy.dtype(spec, align, copy)`` of a numeric type, as a record: its ``BUILD`` state
    may set the byte order and nothing else (a real dtype's ``__setstate__`` could set
    flags that make numpy read bytes as object pointers)."""

    __slots__ = ("spec", "byteorder")

    def __init__(self, spec, align=False, copy=False):
        if not isinstance(spec, str) or spec not in _NUMPY_SPECS:
            raise UnsafePickleError(f"numpy.dtype is admitted for numeric types only, got {spec!r}")
        self.spec, self.byteorder = spec, "="

    def __setstate__(self, state):
        if not (isinstance(state, tuple) and len(state) == 8 and state[1] in ("<", ">", "=", "|")
                and state[2:5] == (None, None, None)):
            raise UnsafePickleError(f"a numpy dtype state other than a plain numeric one: {state!r}")
        self.byteorder = state[1]

    def numpy(self):
        return np.dtype(self.spec).newbyteorder(self.byteorder)


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, _NumpyDType) or not isinstance(data, bytes) or len(data) != dtype.numpy().itemsize:
        raise UnsafePickleError("numpy.core.multiarray.scalar is admitted for numeric dtypes and their bytes only")
    return np.frombuffer(data, dtype=dtype.numpy(), count=1)[0].item()


_REBUILDERS = (_rebuild_tensor, _rebuild_tensor_v2, _rebuild_tensor_v3, _rebuild_parameter,
               _rebuild_parameter_with_state)
_ALLOWED = {
    ("collections", "OrderedDict"): OrderedDict,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor_v3"): _rebuild_tensor_v3,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter_with_state,
    ("torch._tensor", "_rebuild_from_type_v2"): _rebuild_from_type_v2,
    ("torch", "Tensor"): _Marker("torch.Tensor"),
    ("torch.nn.parameter", "Parameter"): _Marker("torch.nn.parameter.Parameter"),
    ("torch", "Size"): _size,
    ("_codecs", "encode"): _encode,
    ("builtins", "set"): set,
    ("builtins", "frozenset"): frozenset,
    ("builtins", "bytearray"): bytearray,
    ("builtins", "complex"): complex,
    ("numpy", "dtype"): _NumpyDType,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    **{("torch", name): _StorageType(name, dtype) for name, dtype in _STORAGE_DTYPES.items()},
    **{("torch", name): _DType(name, dtype) for name, dtype in _TORCH_DTYPES.items()},
}


# --- tensors out of storages ----------------------------------------------------------------------


def _materialize(obj, path):
    """``obj`` with every tensor record replaced by its numpy array."""
    if isinstance(obj, _Tensor):
        return _array(obj, path)
    if isinstance(obj, _NumpyDType):
        return obj.numpy()
    if isinstance(obj, _Inert):
        raise PthError(f"checkpoint {path}: a bare {type(obj).__name__[1:]} record outside a tensor")
    if isinstance(obj, OrderedDict):
        return OrderedDict((k, _materialize(v, path)) for k, v in obj.items())
    if isinstance(obj, dict):
        return {k: _materialize(v, path) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_materialize(v, path) for v in obj]
    if isinstance(obj, tuple):
        return tuple(_materialize(v, path) for v in obj)
    return obj


def _array(t, path):
    blob = t.storage.blob
    dtype = np.dtype(t.dtype)
    if blob.byteorder == "big" and dtype.itemsize > 1:
        dtype = dtype.newbyteorder(">")
    data = blob.data
    nbytes = blob.numel * blob.dtype.itemsize
    if data is None or len(data) != nbytes:
        got = "no" if data is None else len(data)
        raise PthError(f"checkpoint {path}: storage {blob.key!r} has {got} bytes, {nbytes} expected")
    flat = np.frombuffer(data, dtype=dtype, count=nbytes // dtype.itemsize)
    start = t.storage.offset * blob.dtype.itemsize // dtype.itemsize + t.offset
    if any(n < 0 for n in t.size) or any(s < 0 for s in t.stride) or start < 0:
        raise PthError(f"checkpoint {path}: a tensor of storage {blob.key!r} with negative sizes or strides")
    if 0 in t.size:
        return np.zeros(t.size, dtype=dtype).astype(dtype.newbyteorder("="))
    last = start + sum((n - 1) * s for n, s in zip(t.size, t.stride))
    if last >= flat.size:
        raise PthError(f"checkpoint {path}: a tensor reaches element {last} of storage {blob.key!r}, "
                       f"which holds {flat.size}")
    view = np.lib.stride_tricks.as_strided(flat[start:], shape=t.size,
                                           strides=[s * dtype.itemsize for s in t.stride], writeable=False)
    return np.array(view, dtype=dtype.newbyteorder("="), order="C")
