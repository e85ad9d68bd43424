"""solo_tf.pth reads PyTorch checkpoints without PyTorch: exactly what torch.load returns on
files torch wrote (tests/make_pth_fixtures.py, both serializations), and nothing that would
run code. torch is not imported here."""

import os
import pickle
import zipfile
from pathlib import Path

import numpy as np
import pytest

from solo_tf.pth import (
    LEGACY_MAGIC_NUMBER,
    LEGACY_PROTOCOL_VERSION,
    PthError,
    UnsafePickleError,
    load_pth,
    read_pth,
)

DATA = Path(__file__).resolve().parent / "data" / "pth"


@pytest.mark.parametrize("name", ["state_zip", "state_legacy"])
def test_reads_exactly_what_torch_load_returned(name):
    state, meta = read_pth(DATA / f"{name}.pth")
    expected = np.load(DATA / f"{name}_expected.npz")
    dtypes = dict(expected["__dtypes__"].tolist())
    assert list(state) == list(dtypes)  # every key, in the file's order
    for key, value in state.items():
        want = expected[key]
        if dtypes[key] == "torch.bfloat16":
            assert value.dtype.name == "bfloat16"
            value = value.view(np.uint16)  # the fixture keeps bfloat16 as its bit pattern
        assert value.dtype == want.dtype, key
        assert value.shape == want.shape, key
        np.testing.assert_array_equal(value, want, err_msg=key)
        assert value.flags.c_contiguous
    assert repr(meta) == str(expected["__meta_repr__"])


def test_views_of_one_storage_are_independent_arrays():
    state, _ = read_pth(DATA / "state_zip.pth")
    whole = state["view.whole"]
    np.testing.assert_array_equal(state["view.rows"], whole[1:3])
    np.testing.assert_array_equal(state["view.column"], whole[:, 2])
    np.testing.assert_array_equal(state["view.transposed"], whole.T)
    assert not np.shares_memory(state["view.rows"], whole)


def test_load_pth_returns_the_whole_object():
    obj = load_pth(DATA / "state_legacy.pth")
    assert set(obj) == {"meta", "state_dict"}
    assert obj["state_dict"]["backbone.bn1.num_batches_tracked"].shape == ()


# --- hostile and broken files ----------------------------------------------------------------------


class _System:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _legacy_bytes(obj, protocol=2):
    """A legacy-format file around ``obj``, written with plain pickle: magic, protocol
    version, sys info, the object, an empty storage key list."""
    parts = [LEGACY_MAGIC_NUMBER, LEGACY_PROTOCOL_VERSION, {"protocol_version": 1001, "little_endian": True},
             obj, []]
    return b"".join(pickle.dumps(p, protocol=protocol) for p in parts)


def _zip_bytes(path, obj):
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("archive/data.pkl", pickle.dumps(obj, protocol=2))
        z.writestr("archive/byteorder", "little")
        z.writestr("archive/version", "3\n")
    return path


@pytest.mark.parametrize("layout", ["bare pickle", "legacy", "zip"])
def test_reduce_to_os_system_is_refused_and_not_run(tmp_path, layout):
    marker = tmp_path / "ran"
    hostile = {"meta": {}, "state_dict": {"w": _System(marker)}}
    path = tmp_path / "hostile.pth"
    if layout == "bare pickle":
        path.write_bytes(pickle.dumps(hostile, protocol=2))
    elif layout == "legacy":
        path.write_bytes(_legacy_bytes(hostile))
    else:
        _zip_bytes(path, hostile)
    with pytest.raises(UnsafePickleError, match=rf"hostile.pth.*'{os.system.__module__}.system'.*nothing was "
                                                r"executed"):
        read_pth(path)
    assert not marker.exists()


@pytest.mark.parametrize("obj, name", [
    (np.arange(3.0), "multiarray._reconstruct"),  # a pickled numpy array
    (eval, "builtins.eval"),
    (zipfile.ZipFile, "zipfile.ZipFile"),
])
def test_globals_outside_the_allowlist_are_refused_by_name(tmp_path, obj, name):
    path = tmp_path / "other.pth"
    path.write_bytes(_legacy_bytes({"meta": {"x": obj}, "state_dict": {}}))
    with pytest.raises(UnsafePickleError, match=rf"other.pth.*'[\w.]*{name}'"):
        read_pth(path)


def test_meta_may_hold_numpy_numbers(tmp_path):
    path = tmp_path / "meta.pth"
    path.write_bytes(_legacy_bytes({"meta": {"seed": np.int64(7), "best": np.float32(0.25)}, "state_dict": {}}))
    state, meta = read_pth(path)
    assert state == {} and meta == {"seed": 7, "best": 0.25}
    assert type(meta["seed"]) is int


def test_broken_files_name_the_file(tmp_path):
    good = (DATA / "state_legacy.pth").read_bytes()
    (tmp_path / "cut.pth").write_bytes(good[: len(good) - 100])
    (tmp_path / "text.pth").write_bytes(b"hello, not a checkpoint")
    (tmp_path / "wrongmagic.pth").write_bytes(pickle.dumps(12345, protocol=2) + good[15:])
    for name, match in (("cut", r"cut.pth: truncated in storage"), ("text", "text.pth: not a PyTorch checkpoint"),
                        ("wrongmagic", "wrongmagic.pth: .*magic number")):
        with pytest.raises(PthError, match=match):
            read_pth(tmp_path / f"{name}.pth")
    zipped = (DATA / "state_zip.pth").read_bytes()
    (tmp_path / "cutzip.pth").write_bytes(zipped[: len(zipped) // 2])
    with pytest.raises(PthError, match="cutzip.pth"):
        read_pth(tmp_path / "cutzip.pth")
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        read_pth(tmp_path / "nowhere.pth")


def test_state_dict_entries_must_be_tensors(tmp_path):
    path = tmp_path / "mixed.pth"
    path.write_bytes(_legacy_bytes({"state_dict": {"epoch": 3}}))
    with pytest.raises(PthError, match=r"mixed.pth: entry 'epoch' is a int, not a tensor"):
        read_pth(path)


# --- tests/pth_writer.py, the torch-free writer the other tests use --------------------------------


def _writer_state():
    import ml_dtypes

    rng = np.random.default_rng(0)
    return {"conv.weight": rng.standard_normal((3, 2, 3, 3)).astype(np.float32),
            "bn.num_batches_tracked": np.array(9, np.int64), "half": np.arange(4, dtype=np.float16),
            "bf16": np.array([1.5, -2.0], ml_dtypes.bfloat16), "empty": np.zeros((0, 2), np.float32),
            "transposed": rng.standard_normal((3, 4)).T}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_writer_round_trip(tmp_path, legacy):
    from pth_writer import write_pth

    want = _writer_state()
    path = write_pth(tmp_path / "w.pth", {"meta": {"epoch": 3}, "state_dict": want}, legacy=legacy)
    assert zipfile.is_zipfile(path) != legacy
    state, meta = read_pth(path)
    assert meta == {"epoch": 3} and list(state) == list(want)
    for key, value in want.items():
        assert state[key].dtype == value.dtype and state[key].shape == value.shape, key
        assert state[key].tobytes() == np.ascontiguousarray(value).tobytes(), key


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_writer_files_are_what_torch_reads(tmp_path, legacy):
    """Where PyTorch is installed (it is not in CI): torch.load reads the writer's files."""
    torch = pytest.importorskip("torch")
    from pth_writer import write_pth

    want = _writer_state()
    got = torch.load(write_pth(tmp_path / "w.pth", want, legacy=legacy), weights_only=True)
    for key, value in want.items():
        t = got[key]
        t = t.view(torch.int16).numpy().view(value.dtype) if t.dtype == torch.bfloat16 else t.numpy()
        assert t.dtype == value.dtype and t.shape == value.shape and np.array_equal(t, value), key
