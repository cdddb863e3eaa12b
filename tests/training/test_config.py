"""Training config: the shipped benchmark config validates, overrides apply, and every bad file names the file and field."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from skintriage.training.config import ConfigError, SourceConfig, TrainConfig, load_config
from tests.helpers import REPO

BENCHMARK = REPO / "configs" / "benchmark_cpu.yaml"

MINIMAL = """\
name: tiny
sources:
  - {name: ham10000, root: ham10000_isic2018_224}
"""


def write_config(tmp_path: Path, text: str, name: str = "run.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_benchmark_config_loads_and_validates():
    config = load_config(BENCHMARK)
    assert config.name == "benchmark_cpu"
    assert config.data_root == "../shared/data"
    assert [(s.name, s.root, s.split, s.mask_watermark) for s in config.sources] == [
        ("ham10000", "ham10000_isic2018_224", "project", False),
        ("dermnet", "dermnet_clinical", "project", True),
    ]
    assert [(s.name, s.split) for s in config.test_sources] == [("isic2018_test", "official")]
    assert (config.model, config.input_size, config.stem, config.cache_side) == ("resnet18", 128, "standard", 144)
    raw = yaml.safe_load(BENCHMARK.read_text(encoding="utf-8"))
    assert (config.epochs, config.batch_size, config.lr, config.imbalance) == (
        raw["epochs"],
        raw["batch_size"],
        raw["lr"],
        raw["imbalance"],
    )
    assert config.early_stopping_patience is None
    assert config.target_sensitivity == 0.95


def test_minimal_config_takes_the_documented_defaults(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))
    assert config.classes is None
    assert config.test_sources == []
    assert (config.model, config.input_size, config.epochs, config.lr) == ("resnet18", 128, 30, 1e-3)
    assert config.sources[0].split == "project"


def test_overrides_replace_top_level_fields_and_none_keeps_the_file_value():
    config = load_config(BENCHMARK, epochs=1, batch_size=None, device="cpu")
    assert config.epochs == 1
    assert config.batch_size == 64
    assert config.device == "cpu"


def test_overrides_are_validated_too():
    with pytest.raises(ConfigError, match="epochs: Input should be greater than or equal to 1"):
        load_config(BENCHMARK, epochs=0)


def test_config_is_frozen_and_round_trips_through_model_dump():
    config = load_config(BENCHMARK)
    with pytest.raises(ValueError, match="frozen"):
        config.epochs = 2
    assert TrainConfig.model_validate(config.model_dump()) == config


def test_unknown_field_is_refused_naming_file_and_field(tmp_path):
    path = write_config(tmp_path, MINIMAL + "epocs: 30\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: epocs: Extra inputs are not permitted") as error:
        load_config(path)
    assert str(path) in str(error.value)


def test_unknown_field_in_a_source_is_refused_with_its_position(tmp_path):
    path = write_config(tmp_path, "name: tiny\nsources:\n  - {name: ham10000, root: x, mask_watermarks: true}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: sources\.0\.mask_watermarks: Extra inputs are not permitted"):
        load_config(path)


def test_negative_learning_rate_is_refused(tmp_path):
    path = write_config(tmp_path, MINIMAL + "lr: -0.001\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: lr: Input should be greater than 0"):
        load_config(path)


def test_unknown_model_is_refused_listing_the_registered_ones(tmp_path):
    path = write_config(tmp_path, MINIMAL + "model: resnet19\n")
    with pytest.raises(
        ConfigError, match=r"run\.yaml: model: Value error, unknown model 'resnet19'; registered: .*resnet18"
    ):
        load_config(path)


def test_unknown_class_name_is_refused(tmp_path):
    path = write_config(tmp_path, MINIMAL + "classes: [mel, nv, melanoma]\n")
    with pytest.raises(
        ConfigError, match=r"run\.yaml: classes: Value error, \['melanoma'\] are not canonical diagnoses"
    ):
        load_config(path)


def test_known_class_names_are_kept_in_the_given_order(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL + "classes: [nv, mel, bcc]\n"))
    assert config.classes == ["nv", "mel", "bcc"]


def test_bad_split_strategy_in_a_source_is_refused(tmp_path):
    path = write_config(tmp_path, "name: tiny\nsources:\n  - {name: ham10000, root: x, split: random}\n")
    with pytest.raises(
        ConfigError, match=r"run\.yaml: sources\.0\.split: Value error, split must be one of .*not 'random'"
    ):
        load_config(path)


def test_bad_split_strategy_in_a_test_source_is_refused(tmp_path):
    path = write_config(tmp_path, MINIMAL + "test_sources:\n  - {name: isic, root: x, split: official2}\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: test_sources\.0\.split: Value error, split must be one of"):
        load_config(path)


def test_empty_sources_list_is_refused(tmp_path):
    path = write_config(tmp_path, "name: tiny\nsources: []\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: sources: List should have at least 1 item"):
        load_config(path)


def test_missing_required_fields_are_all_named(tmp_path):
    path = write_config(tmp_path, "seed: 1\n")
    with pytest.raises(ConfigError, match=r"run\.yaml: name: Field required; sources: Field required"):
        load_config(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(ConfigError, match=re.escape(f"config file {tmp_path / 'absent.yaml'} does not exist")):
        load_config(tmp_path / "absent.yaml")


def test_invalid_yaml_is_refused(tmp_path):
    path = write_config(tmp_path, "name: tiny\nsources: [unclosed\n")
    with pytest.raises(ConfigError, match=r"run\.yaml is not valid YAML"):
        load_config(path)


def test_yaml_list_instead_of_mapping_is_refused(tmp_path):
    path = write_config(tmp_path, "- name: tiny\n- epochs: 3\n")
    with pytest.raises(ConfigError, match=r"run\.yaml must hold a mapping of fields, not list"):
        load_config(path)


def test_empty_file_is_refused_as_not_a_mapping(tmp_path):
    with pytest.raises(ConfigError, match="must hold a mapping of fields, not NoneType"):
        load_config(write_config(tmp_path, ""))


def test_source_root_resolves_relative_roots_against_data_root(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL + "data_root: /data/skin\n"))
    source = config.sources[0]
    assert config.source_root(source) == Path("/data/skin/ham10000_isic2018_224")
    assert config.source_root(source, data_root=tmp_path) == tmp_path / "ham10000_isic2018_224"


def test_source_root_keeps_absolute_roots(tmp_path):
    config = load_config(write_config(tmp_path, MINIMAL))
    source = SourceConfig(name="ph2", root=str(tmp_path / "ph2"))
    assert config.source_root(source) == tmp_path / "ph2"
    assert config.source_root(source, data_root=Path("/elsewhere")) == tmp_path / "ph2"
