"""Configuration: overlays, overrides and errors that name the key."""

from __future__ import annotations

from pathlib import Path

import pytest

from poimatch.config import ConfigError, load_settings


def _conf(tmp_path: Path, base: str, **envs: str) -> Path:
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "base.yaml").write_text(base, encoding="utf-8")
    for name, text in envs.items():
        (conf / f"{name}.yaml").write_text(text, encoding="utf-8")
    return conf


def test_overlay_then_override_win_in_order(tmp_path: Path) -> None:
    conf = _conf(
        tmp_path,
        "spark:\n  shuffle_partitions: 8\n  driver_memory: 6g\n",
        ci="spark:\n  shuffle_partitions: 2\n",
    )
    s = load_settings("ci", ["spark.driver_memory=3g"], conf_dir=conf)
    assert (s.env, s.spark.shuffle_partitions, s.spark.driver_memory) == ("ci", 2, "3g")


def test_relative_paths_resolve_against_project_root(tmp_path: Path) -> None:
    conf = _conf(tmp_path, "storage:\n  root: lake\n", local="")
    s = load_settings("local", conf_dir=conf)
    assert s.storage.root == str((tmp_path / "lake").resolve())
    assert s.storage.table_path("pois") == f"{(tmp_path / 'lake').resolve()}/pois"


def test_uri_paths_are_kept(tmp_path: Path) -> None:
    conf = _conf(tmp_path, "storage:\n  root: s3a://bucket/lake\n", local="")
    assert load_settings("local", conf_dir=conf).storage.root == "s3a://bucket/lake"


def test_unknown_key_is_named(tmp_path: Path) -> None:
    conf = _conf(tmp_path, "spark:\n  shufle_partitions: 8\n", local="")
    with pytest.raises(ConfigError, match=r"spark\.shufle_partitions: unknown key"):
        load_settings("local", conf_dir=conf)


def test_bad_value_is_named(tmp_path: Path) -> None:
    conf = _conf(tmp_path, "", local="")
    with pytest.raises(ConfigError, match=r"spark\.shuffle_partitions: .*greater than or equal"):
        load_settings("local", ["spark.shuffle_partitions=0"], conf_dir=conf)
    with pytest.raises(ConfigError, match=r"spark\.shuffle_partitions: .*integer"):
        load_settings("local", ["spark.shuffle_partitions=many"], conf_dir=conf)


def test_unknown_section_and_environment(tmp_path: Path) -> None:
    conf = _conf(tmp_path, "sparkk:\n  x: 1\n", local="")
    with pytest.raises(ConfigError, match="sparkk: unknown key"):
        load_settings("local", conf_dir=conf)
    with pytest.raises(ConfigError, match="unknown environment 'staging'"):
        load_settings("staging", conf_dir=conf)


def test_malformed_override_and_yaml(tmp_path: Path) -> None:
    conf = _conf(tmp_path, "spark: [unclosed\n", local="")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings("local", conf_dir=conf)
    (tmp_path / "g").mkdir()
    good = _conf(tmp_path / "g", "", local="")
    with pytest.raises(ConfigError, match=r"expected section\.key=value"):
        load_settings("local", ["spark.shuffle_partitions"], conf_dir=good)


def test_extra_spark_keys_must_be_spark(tmp_path: Path) -> None:
    conf = _conf(tmp_path, "spark:\n  extra:\n    foo.bar: '1'\n", local="")
    with pytest.raises(ConfigError, match=r"spark\.extra: .*spark\."):
        load_settings("local", conf_dir=conf)


def test_settings_are_frozen() -> None:
    s = load_settings("ci")
    with pytest.raises(ValueError, match="frozen"):
        s.spark.shuffle_partitions = 3  # type: ignore[misc]


def test_project_environments_all_load() -> None:
    for env in ("local", "ci", "prod"):
        assert load_settings(env).env == env
    assert load_settings("prod").spark.shuffle_partitions == 400


@pytest.mark.parametrize("key", ["grouping.split_step", "storage.candidates_table"])
def test_dead_keys_are_gone(key: str) -> None:
    # read nowhere, so they are not settings: setting one is an unknown-key error
    with pytest.raises(ConfigError, match=f"{key}: unknown key"):
        load_settings("ci", [f"{key}=0.1"])
