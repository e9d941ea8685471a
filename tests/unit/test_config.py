from datetime import timedelta

import pytest

from pipelines.config import ConfigError, Secret, load_settings


def test_env_overrides_toml(tmp_path, monkeypatch):
    cfg = tmp_path / "nightshift.toml"
    cfg.write_text('experiment = "from-toml"\n[train]\nepochs = 7\nbatch_size = 8\n')
    monkeypatch.setenv("NIGHTSHIFT_TRAIN_EPOCHS", "2")
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "h"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)  # it would name the store instead (the next test)
    s = load_settings(cfg)
    assert s.train.epochs == 2 and s.train.batch_size == 8 and s.experiment == "from-toml"
    assert s.mlflow_uri == f"sqlite:///{tmp_path / 'h' / 'mlflow' / 'mlflow.db'}"


def test_mlflow_tracking_uri_overrides_store(monkeypatch, tmp_path):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5999")
    monkeypatch.chdir(tmp_path)
    assert load_settings().mlflow_uri == "http://127.0.0.1:5999"


def test_bad_value_names_the_setting(monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_TRAIN_EPOCHS", "three")
    with pytest.raises(ConfigError, match="NIGHTSHIFT_TRAIN_EPOCHS"):
        load_settings()


def test_unknown_toml_key_is_named(tmp_path):
    cfg = tmp_path / "n.toml"
    cfg.write_text("[train]\nepoch = 3\n")
    with pytest.raises(ConfigError, match="train.epoch"):
        load_settings(cfg)


def test_secret_never_printed():
    s = Secret("hunter2")
    assert "hunter2" not in repr(s) and "hunter2" not in str(s) and "hunter2" not in f"{s}"
    assert s.reveal() == "hunter2"


def test_config_command_prints_each_setting_with_its_source_and_masks_secrets(tmp_path, monkeypatch, capsys):
    import json

    from nightshift.cli import main

    config = tmp_path / "nightshift.toml"
    config.write_text('[train]\nepochs = 3\n\n[elasticsearch]\npassword = "from-the-file"\n')
    monkeypatch.setenv("NIGHTSHIFT_CONFIG", str(config))
    monkeypatch.setenv("NIGHTSHIFT_SERVE_PORT", "9001")
    monkeypatch.setenv("NIGHTSHIFT_PROMETHEUS_BEARER_TOKEN", "from-the-environment")
    assert main(["config", "--json"]) == 0
    out = capsys.readouterr().out
    assert "from-the-file" not in out and "from-the-environment" not in out
    rows = {r["name"]: r for r in json.loads(out)["settings"]}
    assert rows["train.epochs"] == {"name": "train.epochs", "value": "3", "source": f"file {config}"}
    assert rows["serve.port"]["value"] == "9001" and rows["serve.port"]["source"] == "environment NIGHTSHIFT_SERVE_PORT"
    assert rows["elasticsearch.password"]["value"] == "***" and rows["prometheus.bearer_token"]["value"] == "***"
    assert rows["train.batch_size"]["source"] == "default" and rows["prometheus.password"]["value"] == ""
    assert main(["config", "--changed"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"settings file: {config}"
    changed = {line.split()[0]: line for line in lines[2:]}  # the suite's own NIGHTSHIFT_* variables are among them
    assert {"elasticsearch.password", "prometheus.bearer_token", "serve.port", "train.epochs"} <= set(changed)
    assert "train.batch_size" not in changed and not any(line.endswith("(default)") for line in changed.values())
    assert main(["config"]) == 0
    keys_line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("serve.api_keys_file "))
    from pipelines.config import load_settings
    from serving.auth import key_file_path

    assert keys_line.endswith(f'""  (default: {key_file_path(load_settings())})')  # what the empty setting comes to


def test_a_setting_of_a_few_words_is_checked_when_the_settings_load(monkeypatch):
    from pipelines.config import CHOICES, ConfigError, load_settings

    assert load_settings().inputs.format == "auto"
    for name in CHOICES:
        env = "NIGHTSHIFT_" + name.replace(".", "_").upper()
        monkeypatch.setenv(env, "sideways")
        with pytest.raises(ConfigError, match=rf"setting {name}: 'sideways' is not one of "):
            load_settings()
        monkeypatch.delenv(env)


@pytest.mark.parametrize("old, new", [("retrain.train_days", "retrain.log_days"), ("forecast.cpu_threads", "train.cpu_threads"),
                                      ("candidates.baseline_tolerance", "promotion.baseline_tolerance"),
                                      ("validation.min_history_points", "forecast.lookback")])
def test_a_replaced_setting_in_the_file_is_refused_naming_its_replacement(tmp_path, old, new):
    section, name = old.split(".")
    cfg = tmp_path / "nightshift.toml"
    cfg.write_text(f"[{section}]\n{name} = 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(cfg)
    assert str(caught.value) == f"{cfg}: setting {old} is replaced by {new}"


def test_a_replaced_setting_in_the_environment_is_refused_naming_its_replacement(monkeypatch):
    monkeypatch.setenv("NIGHTSHIFT_CANDIDATES_BASELINE_TOLERANCE", "0.05")
    with pytest.raises(ConfigError) as caught:
        load_settings()
    assert str(caught.value) == ("environment variable NIGHTSHIFT_CANDIDATES_BASELINE_TOLERANCE: setting candidates.baseline_tolerance "
                                 "is replaced by promotion.baseline_tolerance (NIGHTSHIFT_PROMOTION_BASELINE_TOLERANCE)")


def test_the_log_models_training_window_is_retrain_log_days(tmp_path, monkeypatch):
    from pipelines.flow import plan_night

    cfg = tmp_path / "nightshift.toml"
    cfg.write_text("[retrain]\nlog_days = 2\n")
    monkeypatch.setenv("NIGHTSHIFT_HOME", str(tmp_path / "home"))
    night = plan_night(load_settings(cfg), "2026-03-10")
    assert night.train_window[1] - night.train_window[0] == timedelta(days=2)
    assert night.metric_window[1] - night.metric_window[0] == timedelta(days=28)  # forecast.train_days, its own
