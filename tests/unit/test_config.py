from pathlib import Path

import pytest
import yaml

from crosscity.config import Config, ConfigError, load_config, save_config
from crosscity.config.keys_table import keys_table


def test_defaults_validate() -> None:
    cfg = load_config()
    assert cfg.wan.algorithm == "average" and cfg.topology.cities == 4


def test_yaml_then_overrides(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("wan:\n  sync_every: 7\n  codec: int8\nmodel:\n  kind: gru\n")
    cfg = load_config(
        path, ["wan.sync_every=9", "data.cities=a,b", "topology.cities=2", "wan.error_feedback=true"]
    )
    assert (cfg.wan.sync_every, cfg.wan.codec, cfg.model.kind) == (9, "int8", "gru")
    assert cfg.data.cities == ["a", "b"] and cfg.wan.error_feedback is True


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("wan.algo=diloco", "unknown key 'wan.algo': allowed keys are wan.algorithm"),
        ("nope.x=1", "unknown key 'nope'"),
        ("wan.codec=int3", "wan.codec='int3': allowed values are none, fp16, bf16, int8, int4"),
        ("data.batch_size=1.5", "data.batch_size=1.5: expected an integer"),
        ("optim.lr=fast", "optim.lr='fast': expected a number"),
        ("wan.nesterov=maybe", "wan.nesterov='maybe': expected true or false"),
        ("optim.lr=true", "optim.lr=True: expected a number"),
        ("data.target=no", "data.target=False: expected a string (quote it"),
        ("slurm.per_city.0.memory=1G", "unknown key 'slurm.per_city.0.memory': allowed partition"),
        ("model.kind.x=1", "unknown key 'model.kind.x'"),
        ("steps", "override 'steps': expected key=value"),
    ],
)
def test_bad_keys_and_types_name_key_and_allowed(override: str, message: str) -> None:
    """What loading refuses (unknown keys, wrong types); the rules are tests/unit/test_config_rules.py."""
    with pytest.raises(ConfigError, match="^" + __import__("re").escape(message)):
        load_config(None, [override])


def test_missing_file_and_bad_yaml(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_config(bad)


def test_saved_config_round_trips(tmp_path: Path) -> None:
    cfg = load_config(None, ["wan.algorithm=diloco", "train.seed=3"])
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == cfg
    assert set(yaml.safe_load((tmp_path / "config.yaml").read_text())) == set(vars(Config()))


def test_readme_config_table_is_current() -> None:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    assert keys_table() in readme, (
        "README's config table is stale: paste `python -m crosscity.config.keys_table` into it"
    )


def test_per_city_slurm_fields_take_dotted_overrides() -> None:
    cfg = load_config(
        overrides=[
            "topology.cities=2",
            "slurm.per_city={1: {mem: 8G}}",
            "slurm.per_city.1.cpus_per_task=2",
            "slurm.per_city.0.partition=gpu",
        ]
    )
    resolved = cfg.slurm.for_cities(2, cfg.data.cities)
    assert [(r.partition, r.mem, r.cpus_per_task) for r in resolved] == [("gpu", "", 1), ("", "8G", 2)]
    with pytest.raises(ConfigError, match=r"slurm\.per_city\.1\.memory.*allowed.*mem"):
        load_config(overrides=["topology.cities=2", "slurm.per_city.1.memory=8G"])
    with pytest.raises(ConfigError, match=r"unknown city '5'"):
        load_config(overrides=["topology.cities=2", "slurm.per_city.5.mem=8G"])


def test_init_from_needs_a_finished_run_with_the_same_model_shape(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no final/model.pt and config.yaml there"):
        load_config(None, [f"train.init_from={tmp_path}"])
    save_config(load_config(None, ["model.hidden=64"]), tmp_path / "config.yaml")
    (tmp_path / "final").mkdir()
    (tmp_path / "final" / "model.pt").write_bytes(b"")
    with pytest.raises(ConfigError, match="that run has model.hidden=64, this one 128"):
        load_config(None, [f"train.init_from={tmp_path}"])
    assert load_config(None, [f"train.init_from={tmp_path}", "model.hidden=64"]).train.init_from == str(
        tmp_path
    )
