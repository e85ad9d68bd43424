"""solo_tf.zoo: a name -> a verified, cached download -> a cached .keras -> predictions, against
a local HTTP server (tests/zoo_server.py) serving small synthetic checkpoints written with the
reference's key names and shapes (tests/test_reference_weights.py), in each layout and
serialization: WXinlong legacy (served as the Hugging Face Hub serves it), WXinlong zip and
mmdetection 2.x zip (plain URLs). Zoo entries for them are added for the test, pinning their
hashes; the model is a ResNet-18 SOLO with narrow heads on a 96x128 canvas."""

import hashlib
import time

import numpy as np
import pytest
from pth_writer import write_pth
from test_reference_weights import (
    FPN,
    GRIDS,
    HEAD,
    MASK_FEAT,
    STACKED,
    E,
    hwio,
    np_,
    reference_state,
)
from zoo_server import ZooServer

from solo_tf.zoo import (
    ZooDownloadError,
    ZooEntry,
    ZooHashError,
    checkpoint_path,
    convert,
    fetch,
    model_path,
    registry,
    resolve_model,
    zoo_config,
)

TINY = dict(backbone="resnet18", fpn_channels=FPN, head_channels=HEAD, stacked_convs=STACKED,
            mask_feature_channels=MASK_FEAT, mask_channels=E, num_grids=GRIDS)
SCALE = (128, 96)  # (long, short): a 96x128 canvas, 128x96 for portrait images
PRESETS = {"solov2": "solov2_light_r18", "solo": "solo_r50", "decoupled_solo": "decoupled_solo_r50"}
CATEGORY = {"mmdet1": {"solov2": "bbox_head.solo_cate", "solo": "bbox_head.solo_cate",
                       "decoupled_solo": "bbox_head.dsolo_cate"},
            "mmdet2": {"solov2": "mask_head.conv_cls", "solo": "mask_head.conv_cls",
                       "decoupled_solo": "mask_head.conv_cls"}}


class _NoSleep:
    """The time module without its sleep: huggingface_hub's retry back-off (up to ~25 s
    against a stopped server) is skipped; every request it makes is still made."""

    def __getattr__(self, name):
        return getattr(time, name)

    @staticmethod
    def sleep(_):
        pass


class Zoo:
    def __init__(self, server, monkeypatch, tmp_path):
        self.server, self.monkeypatch, self.tmp_path = server, monkeypatch, tmp_path
        self.home = tmp_path / "home"

    def add(self, name, variant="solov2", layout="mmdet1", legacy=False, host="url", seed=0, pin=None):
        """Serve a synthetic checkpoint and register a zoo entry for it; (entry, state)."""
        state = reference_state(variant, classes=80, layout=layout, seed=seed)
        file = self.tmp_path / f"{name}.pth"
        write_pth(file, {"meta": {"epoch": 36, "CLASSES": ("person",)}, "state_dict": state}, legacy=legacy)
        data = file.read_bytes()
        if host == "hf":
            path = f"/solo-tf-test/zoo/resolve/main/{name}.pth"
            url = "https://huggingface.co" + path  # fetched from $HF_ENDPOINT, this server
        else:
            path = f"/files/{name}.pth"
            url = self.server.root + path
        self.server.files[path] = data
        digest = hashlib.sha256(data).hexdigest()
        pinned = pin if pin is not None else (digest if layout == "mmdet1" else digest[:8])
        entry = ZooEntry(name=name, variant=variant, backbone="resnet18", schedule="3x", layout=layout, url=url,
                         sha256=pinned, size=len(data), size_mb=None, mask_ap=None, test_scale=SCALE,
                         host="127.0.0.1", license="test", preset=PRESETS[variant], overrides=TINY)
        self.monkeypatch.setitem(registry.ENTRIES, name, entry)
        return entry, state

    def files(self):
        """Every file under $SOLO_TF_HOME (folders left empty do not count)."""
        return sorted(p.relative_to(self.home).as_posix() for p in self.home.rglob("*") if p.is_file())


@pytest.fixture
def zoo(tmp_path, monkeypatch):
    import huggingface_hub.file_download
    import huggingface_hub.utils._http

    server = ZooServer()
    monkeypatch.setenv("SOLO_TF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_ENDPOINT", server.root)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for module in (huggingface_hub.file_download, huggingface_hub.utils._http):
        if hasattr(module, "time"):
            monkeypatch.setattr(module, "time", _NoSleep())
    yield Zoo(server, monkeypatch, tmp_path)
    server.stop()


# --- name -> download -> convert -> predict ----------------------------------------------------------


@pytest.mark.parametrize("variant, layout, legacy, host", [
    ("solov2", "mmdet1", True, "hf"),  # WXinlong's 2020 files: legacy serialization, on the Hub
    ("solo", "mmdet1", False, "url"),
    ("decoupled_solo", "mmdet2", False, "url"),
], ids=["wxinlong-legacy-hf", "wxinlong-zip-url", "mmdet2-zip-url"])
def test_name_downloads_converts_and_loads_once(zoo, variant, layout, legacy, host):
    from solo_tf.saving import load_model
    from solo_tf.reference_weights import COCO_CLASS_NAMES, REFERENCE_COCO_CATEGORY_IDS

    name = f"test_{variant}_{layout}"
    entry, state = zoo.add(name, variant, layout, legacy, host)
    path = resolve_model(name)
    assert path == model_path(name) and path.is_file()
    methods = [m for m, _ in zoo.server.requests]
    assert methods.count("GET") == 1 and (host == "hf") == ("HEAD" in methods)
    assert zoo.files() == sorted([f"checkpoints/{name}/{name}.pth", f"checkpoints/{name}/{name}.pth.sha256",
                                  f"models/{name}/config.yaml", f"models/{name}/model.keras"])
    assert (zoo.home / f"checkpoints/{name}/{name}.pth.sha256").read_text().startswith(entry.sha256)

    model = load_model(path)
    cfg = model.model_config
    assert (cfg.variant, tuple(cfg.image_size), cfg.portrait_canvas) == (variant, (96, 128), True)
    assert list(model.labels_config.category_ids) == list(REFERENCE_COCO_CATEGORY_IDS)
    assert list(model.labels_config.class_names) == list(COCO_CLASS_NAMES)
    assert model.postprocess_config.nms_stride == 4 and model.postprocess_config.update_thr == 0.05
    category = CATEGORY[layout][variant]
    np.testing.assert_array_equal(np_(model.get_layer("head").cate_out.kernel), hwio(state[f"{category}.weight"]))

    before = len(zoo.server.requests)
    assert resolve_model(name) == path  # cached: no request
    path.unlink()
    assert convert(name) == path and path.is_file()  # the checkpoint is cached: converted again, no request
    assert len(zoo.server.requests) == before


def test_zoo_model_predicts_on_real_photographs(zoo):
    skimage_data = pytest.importorskip("skimage.data")
    from solo_tf.inference import Predictor
    from solo_tf.reference_weights import COCO_CLASS_NAMES

    zoo.add("test_photo", "solov2", "mmdet2", False, "url")
    predictor = Predictor(resolve_model("test_photo"))
    photos = [skimage_data.astronaut(), skimage_data.coffee(), skimage_data.chelsea()]  # square, landscape, landscape
    for photo, found in zip(photos, predictor.predict(photos)):
        n = len(found["scores"])
        assert found["masks"].shape == (n, *photo.shape[:2]) and found["boxes"].shape == (n, 4)
        assert set(found["labels"]) <= set(COCO_CLASS_NAMES)  # no accuracy asserted: the weights are random


# --- what can go wrong ---------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["hf", "url"])
def test_wrong_hash_is_an_error_and_leaves_no_cache_entry(zoo, host):
    zoo.add("test_badhash", host=host, pin=hashlib.sha256(b"another file").hexdigest())
    for _ in range(2):  # nothing is kept: the second try downloads again, and fails again
        with pytest.raises(ZooHashError, match=r"'test_badhash'.*has sha256 [0-9a-f]{64}, not the pinned "
                                               r"[0-9a-f]{64}.*not kept"):
            resolve_model("test_badhash")
        assert zoo.files() == []
    assert [m for m, _ in zoo.server.requests].count("GET") == 2


def test_hash_prefix_is_checked_too(zoo):
    zoo.add("test_badprefix", layout="mmdet2", pin="00000000")
    with pytest.raises(ZooHashError, match=r"not the pinned 00000000\.\.\. \(the prefix in mmdetection's file name\)"):
        fetch("test_badprefix")
    assert zoo.files() == []


@pytest.mark.parametrize("host", ["hf", "url"])
def test_stopped_server_gives_the_offline_message(zoo, host):
    entry, _ = zoo.add("test_offline", host=host)
    zoo.server.stop()
    with pytest.raises(ZooDownloadError) as err:
        resolve_model("test_offline")
    text = str(err.value)
    assert f"no connection to 127.0.0.1:{zoo.server.port}" in text  # the host it tried ($HF_ENDPOINT for the Hub)
    assert entry.url in text  # what to download,
    assert str(checkpoint_path("test_offline")) in text  # where to put it,
    assert "solo_tf.zoo.convert('test_offline', checkpoint=" in text  # or how to use a local copy
    assert zoo.files() == []


@pytest.mark.parametrize("host", ["hf", "url"])
def test_interrupted_transfer_leaves_nothing_behind(zoo, host):
    zoo.add("test_cut", host=host)
    zoo.server.cut.add(next(iter(zoo.server.files)))
    with pytest.raises(ZooDownloadError, match=r"download of zoo model 'test_cut' from .* was interrupted .*nothing "
                                               r"was kept in the cache"):
        fetch("test_cut")
    assert zoo.files() == []


def test_a_file_put_in_the_cache_by_hand_is_verified_once(zoo, tmp_path):
    zoo.add("test_manual")
    good = zoo.server.files.pop(next(iter(zoo.server.files)))  # the server no longer has it
    dest = checkpoint_path("test_manual")
    dest.parent.mkdir(parents=True)
    dest.write_bytes(good[:-1] + bytes([good[-1] ^ 0xFF]))  # one byte off
    with pytest.raises(ZooHashError, match="the file at .*test_manual.pth has sha256.*removed from the cache"):
        fetch("test_manual")
    assert not dest.exists()
    dest.write_bytes(good)
    assert fetch("test_manual") == dest and zoo.server.requests == []
    assert (dest.parent / "test_manual.pth.sha256").read_text().strip() == hashlib.sha256(good).hexdigest()


def test_convert_takes_a_local_copy(zoo, tmp_path):
    from solo_tf.saving import load_model

    _, state = zoo.add("test_local", variant="solov2")
    local = tmp_path / "copy.pth"
    local.write_bytes(zoo.server.files.pop(next(iter(zoo.server.files))))
    path = convert("test_local", checkpoint=local)
    assert zoo.server.requests == []
    np.testing.assert_array_equal(np_(load_model(path).get_layer("head").kernel_out.bias),
                                  state["bbox_head.solo_kernel.bias"])


def test_unsupported_and_unknown_names(zoo):
    with pytest.raises(ValueError, match="solov2_r101_dcn_3x.*does not run in solo-tf: deformable convolutions"):
        resolve_model("solov2_r101_dcn_3x")
    with pytest.raises(ValueError, match="Decoupled SOLO light"):
        fetch("mmdet_decoupled_solo_light_r50")
    with pytest.raises(KeyError, match="no zoo model named 'solov2_r50_3y'; did you mean solov2_r50_3x"):
        fetch("solov2_r50_3y")
    assert zoo.server.requests == [] and zoo.files() == []


def test_resolve_model_leaves_paths_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for given in ("runs/x/model.keras", tmp_path / "m.keras", "not_a_zoo_name"):
        assert str(resolve_model(given)) == str(given)
    (tmp_path / "solov2_r50_3x").write_bytes(b"")  # a file of a zoo name's name wins
    assert str(resolve_model("solov2_r50_3x")) == "solov2_r50_3x"


# --- the table -------------------------------------------------------------------------------------------


def test_every_supported_entry_builds_a_valid_config():
    from solo_tf.reference_weights import REFERENCE_NUM_GRIDS

    supported = registry.entries(supported=True)
    assert len(supported) >= 20 and len(registry.entries(supported=False)) >= 5
    for entry in supported:
        cfg = zoo_config(entry)
        assert (cfg.model.variant, cfg.model.backbone) == (entry.variant, entry.backbone), entry.name
        assert tuple(cfg.model.image_size) == entry.canvas and tuple(cfg.model.num_grids) == REFERENCE_NUM_GRIDS
        long, short = entry.test_scale
        assert cfg.model.image_size[0] >= short and cfg.model.image_size[1] >= long
        assert entry.hash_kind == ("sha256 prefix" if entry.layout == "mmdet2" else entry.hash_kind)
        if entry.layout == "mmdet2":  # mmdetection's file name ends in the pinned prefix
            assert entry.filename.endswith(f"-{entry.sha256}.pth")
    for entry in registry.entries(supported=False):
        assert entry.unsupported and entry.row()["supported"].startswith("no: ")
    light = registry.get("solov2_light_r18")
    assert light.canvas == (448, 768) and registry.get("solov2_r50_3x").canvas == (800, 1344)
    with pytest.raises(ValueError, match="exists"):
        registry.register(light)


# --- the command line and the other entry points -----------------------------------------------------------


def test_models_lists_the_zoo(capsys):
    import json

    from solo_tf.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "solov2_r50_3x" in out and "mmdet_solov2_light_r18" in out and "1333x800" in out and "768x448" in out
    assert "solov2_x101_dcn_3x" not in out.split("licenses:")[0]  # unsupported rows only with --all
    assert main(["models", "--all", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["solov2_x101_dcn_3x"]["supported"].startswith("no: ") and rows["solov2_r50_3x"]["supported"] == "yes"
    assert rows["mmdet_solov2_r50_3x"]["sha256"] == "fed092d4" and rows["solov2_r50_3x"]["mask AP"] == "37.5"


def test_cli_and_predictor_take_a_zoo_name(zoo, tmp_path, capsys):
    import json

    from PIL import Image

    from solo_tf.cli import main
    from solo_tf.inference import Predictor

    zoo.add("test_cli", "solov2", "mmdet1", True, "hf")
    image = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(image)
    assert main(["predict", "--model", "test_cli", str(image), "--out", str(tmp_path / "pred")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["pictures"]
    assert main(["info", "test_cli", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["model"] == str(model_path("test_cli"))
    assert Predictor("test_cli").class_names[0] == "person"
    assert [m for m, _ in zoo.server.requests].count("GET") == 1  # converted once, for all three
    zoo.server.stop()
    zoo.add("test_cli_offline", host="url")
    assert main(["info", "test_cli_offline"]) == 1
    assert "cannot download zoo model 'test_cli_offline': no connection" in capsys.readouterr().err


def test_init_weights_takes_a_zoo_name(zoo):
    from solo_tf.config import ModelConfig
    from solo_tf.tasks import apply_init_weights
    from solo_tf.model import SOLO

    entry, state = zoo.add("test_init", "solov2", "mmdet2")
    cfg = zoo_config("test_init").model
    ModelConfig(**{**cfg.__dict__, "num_classes": 3, "init_weights": "test_init"}).validate()  # a name is valid
    model = SOLO(dict(cfg.__dict__, num_classes=3))
    report = apply_init_weights(model, "test_init")  # fine-tuning on 3 classes: the category conv is skipped
    assert report.skipped == ("mask_head.conv_cls.weight", "mask_head.conv_cls.bias")
    np.testing.assert_array_equal(np_(model.get_layer("head").kernel_out.bias), state["mask_head.conv_kernel.bias"])
