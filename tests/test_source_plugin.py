"""A data source is one module: a source defined in this file alone (a config section, a numpy
reader, a registration) is read from YAML, opened through the one tf.data wrapper, trains a
tiny model a step and is evaluated; the config and the tasks name no source."""

import dataclasses
import re
from pathlib import Path

import numpy as np
import pytest

from solo_tf.data.errors import BadRecordLog, DataError
from solo_tf.data.registry import Split, register_source, unregister_source

SRC = Path(__file__).resolve().parents[1] / "solo_tf"


@dataclasses.dataclass
class FakeSourceConfig:
    """``data.fake``: squares on a grey background, one class per square."""

    num_train: int = 4
    num_val: int = 2
    size: int = 64
    bad_image: int = -1  # this training image raises a DataError when read

    def validate(self):
        if self.size < 16:
            raise ValueError(f"data.fake.size must be >= 16, got {self.size}")


class FakeReader:
    def __init__(self, section, offset):
        self.section, self.offset = section, offset
        self.count = section.num_train if offset == 0 else section.num_val

    def __len__(self):
        return self.count

    def load(self, i):
        if i == self.section.bad_image and self.offset == 0:
            raise DataError(f"fake.txt: image {i}: unreadable", "unreadable image")
        s = self.section.size
        image = np.full((s, s, 3), 90, np.uint8)
        masks = np.zeros((2, s, s), np.uint8)
        a = 4 + (i + self.offset) % 8
        masks[0, a:a + 20, a:a + 20] = 1
        masks[1, s - 24:s - 4, 30:50] = 1
        image[masks[0] > 0] = (250, 30, 30)
        image[masks[1] > 0] = (30, 30, 250)
        return {"image": image, "masks": masks, "classes": np.array([0, 1], np.int32),
                "image_id": np.int64(100 + self.offset + i)}


def open_fake(data_config, splits, labels=None):
    section = data_config.fake
    log = BadRecordLog("fake")
    return {split: Split(FakeReader(section, 0 if split == "train" else 1000), ("red", "blue"), (7, 8), log,
                         shuffle=split == "train", image_size=(section.size, section.size), origin="fake.txt")
            for split in splits}


@pytest.fixture
def fake_source():
    register_source("fake", section=FakeSourceConfig, open=open_fake)
    yield
    unregister_source("fake")


YAML = """\
name: fake_run
data:
  source: fake
  max_instances: 4
  fake: {num_train: 4, num_val: 2, size: 64}
  flip: false
train: {epochs: 1, batch_size: 2, steps_per_epoch: 1, warmup_iters: 1}
"""


def _config(tmp_path, text=YAML):
    from conftest import tiny_model_config

    from solo_tf.config import Config, load_config

    path = tmp_path / "fake.yaml"
    path.write_text(text)
    cfg = load_config(path)
    cfg.model = tiny_model_config("solov2", image_size=(64, 64), num_classes=2)
    assert isinstance(cfg, Config)
    return cfg


def test_a_source_from_this_file_trains_a_step_and_evaluates(fake_source, tmp_path):
    from solo_tf.config import load_config
    from solo_tf.tasks import evaluate, train

    cfg = _config(tmp_path)
    assert cfg.data.source == "fake" and cfg.data.fake == FakeSourceConfig(num_train=4, num_val=2, size=64)
    run = train(cfg, tmp_path / "run", verbose=0)
    assert run.steps == 1 and np.isfinite(run.history["loss"][-1])
    assert run.info["class_names"] == ["red", "blue"] and (run.info["num_train"], run.info["num_val"]) == (4, 2)
    assert run.model.labels_config.category_ids == [7, 8]  # the source's ids travel with the model
    # the run's config.yaml names the source and its section, and reads back the same
    saved = load_config(tmp_path / "run" / "config.yaml")
    assert saved.data == run.config.data and saved.data.fake.num_train == 4
    metrics = evaluate(run.model, saved)
    assert metrics["num_images"] == 2 and 0.0 <= metrics["AP"] <= 1.0


def test_the_section_is_strict_and_validated(fake_source, tmp_path):
    from solo_tf.config import ConfigError

    with pytest.raises(ConfigError, match=r"data\.fake\.num_trian"):
        _config(tmp_path, YAML.replace("num_train: 4", "num_trian: 4"))
    with pytest.raises(ConfigError, match=r"data\.fake\.size must be >= 16"):
        _config(tmp_path, YAML.replace("size: 64", "size: 8"))


def test_bad_records_of_the_source_are_named_or_counted(fake_source, tmp_path):
    import tensorflow as tf

    from solo_tf.data.sources import open_sources

    cfg = _config(tmp_path, YAML.replace("size: 64}", "size: 64, bad_image: 2}"))
    with pytest.raises(tf.errors.OpError, match=r"fake.txt: image 2: unreadable"):
        list(open_sources(cfg)["train"].records)
    cfg.data.skip_bad = True
    src = open_sources(cfg)["train"]
    assert sorted(int(r["image_id"]) for r in src.records) == [100, 101, 103]
    assert src.bad_records.counts == {"unreadable image": 1}
    cfg.model.num_classes = 3
    with pytest.raises(DataError, match=r"fake.txt: has 2 classes \(red, blue\) but model.num_classes is 3"):
        open_sources(cfg)


def test_unregistered_source_is_refused_with_the_choices(tmp_path):
    from solo_tf.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown key 'data\.fake'"):
        _config(tmp_path)
    with pytest.raises(ConfigError, match=r"data\.source must be one of .*coco.*got 'fake'"):
        _config(tmp_path, YAML.replace("  fake: {num_train: 4, num_val: 2, size: 64}\n", ""))


def test_registration_rejects_a_taken_name_and_a_non_dataclass_section():
    with pytest.raises(ValueError, match="registered already"):
        register_source("coco", section=FakeSourceConfig, open=open_fake)
    with pytest.raises(ValueError, match="dataclass"):
        register_source("fake2", section=dict, open=open_fake)


def test_config_and_tasks_name_no_source():
    """What a new source would have to touch: neither file mentions one (the v1 -> v2
    migration, frozen history, and the shapes demo are the exceptions)."""
    from solo_tf.data.catalog import source_names

    config = (SRC / "config.py").read_text()
    config = config[:config.index("# --- versions and migrations")] + config[config.index("def migrate("):]
    tasks = (SRC / "tasks.py").read_text()
    tasks = tasks[:tasks.index("# --- demo")] + tasks[tasks.index("def _demo_pictures("):]
    names = "|".join(source_names())
    for text, file in ((config, "config.py"), (tasks, "tasks.py")):
        assert not re.search(r"\w+SourceConfig", text), f"{file} names a source's section"
        assert not re.search(rf"[\"']({names})[\"']\s*,\s*[\"']({names})[\"']", text), f"{file} lists sources"
        for name in source_names():  # as a source, not a word ("masks" is also a record key)
            for pattern in (rf"\.data\.{name}\b", rf"\bself\.{name}\b", rf"source\W+{name}\b", rf"\b{name}_source\b"):
                assert not re.search(pattern, text), f"{file} names the {name} source ({pattern})"


def test_config_and_the_sources_import_without_tensorflow():
    import os
    import subprocess
    import sys

    code = ("import sys, solo_tf.config, solo_tf.data.catalog; from solo_tf.config import Config; "
            "Config().data.validate(); print(sorted(m for m in sys.modules if m in ('tensorflow', 'keras')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": str(SRC.parent)})
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "[]"
