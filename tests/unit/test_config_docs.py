"""docs/configuration.md is generated from pipelines/config.py (`make docs`): it lists every setting with its help,
and it is never stale."""

from __future__ import annotations

import dataclasses

from pipelines import config_docs
from pipelines.config import Settings

# Settings that have no help beside their field in pipelines/config.py yet. The list only shrinks: a setting added
# without help fails `test_every_setting_has_help`, and one that gains help must leave the list.
WITHOUT_HELP = frozenset({
    "service", "experiment",
    "fields.timestamp", "fields.message", "fields.service", "fields.level", "fields.host", "fields.anomaly",
    "fields.root_cause", "fields.job_id",
    "train.batch_size", "train.max_length", "train.learning_rate", "train.weight_decay", "train.patience",
    "train.validation_fraction", "train.max_train_examples", "train.max_validation_examples", "train.seed",
    "score.batch_size", "score.max_length",
    "rca.batch_size", "rca.learning_rate", "rca.patience",
    "elasticsearch.password", "elasticsearch.bearer_token", "elasticsearch.verify_certs", "elasticsearch.retry_on_conflict",
    "prometheus.pushgateway", "prometheus.username", "prometheus.password", "prometheus.bearer_token",
    "prometheus.key_file", "prometheus.tls_verify",
    "prometheus.queries.gpu_util", "prometheus.queries.gpu_memory", "prometheus.queries.request_latency",
    "prometheus.queries.quota_use_ratio",
    "forecast.hidden_size", "forecast.layers", "forecast.epochs", "forecast.batch_size", "forecast.learning_rate",
    "forecast.patience", "forecast.seed",
    "validation.max_anomaly_ratio", "validation.max_text_length",
    "drift.permutations", "drift.label_psi_warn", "drift.label_psi_severe", "drift.template_js_warn",
    "drift.template_js_severe", "drift.token_js_warn", "drift.token_js_severe", "drift.length_ks_warn",
    "drift.length_ks_severe", "drift.embedding_mmd_warn", "drift.embedding_mmd_severe", "drift.metric_value_ks_severe",
    "drift.seasonal_severe", "drift.seed",
    "serve.host", "serve.port",
})


def leaf_settings(cls: type = Settings, path: str = "") -> list[str]:
    """Every leaf setting's dotted name, read from the dataclasses themselves."""
    names: list[str] = []
    for f in dataclasses.fields(cls):
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if dataclasses.is_dataclass(default):
            names += leaf_settings(type(default), f"{path}{f.name}.")
        else:
            names.append(f"{path}{f.name}")
    return names


def test_the_configuration_page_is_what_make_docs_writes():
    page = config_docs.DOCS_PAGE.read_text() if config_docs.DOCS_PAGE.is_file() else ""
    assert page == config_docs.render(), (
        "docs/configuration.md is stale: a setting in pipelines/config.py changed. Run `make docs` and commit the page.")


def test_every_setting_has_help():
    missing = set(config_docs.missing_help())
    new = sorted(missing - WITHOUT_HELP)
    assert not new, f"settings without help: {', '.join(new)}. Add a `# comment` beside each field in pipelines/config.py, then run `make docs`."
    documented = sorted(WITHOUT_HELP - missing)
    assert not documented, f"these settings have help now: remove {', '.join(documented)} from WITHOUT_HELP in {__file__}."


def test_the_page_lists_every_setting_once_with_its_environment_variable():
    page = config_docs.render()
    for name in leaf_settings():
        rows = [line for line in page.splitlines() if line.startswith(f"| `{name}` |")]
        env = "NIGHTSHIFT_" + name.replace(".", "_").upper()
        assert len(rows) == 1 and f"`{env}`" in rows[0], name


def test_help_comes_from_the_trailing_comment_or_the_comment_block_above():
    source = '''
class Example:
    """A section."""

    plain: int = 1  # the trailing comment
    # a block above the field,
    # on two lines
    above: str = ""
    spread: str = ("a,"
                   "b")  # trailing on its last line
    # a label for a group, then a blank line

    bare: float = 0.5
'''
    helps = config_docs._field_help(source)["Example"]
    assert helps == {"plain": "the trailing comment", "above": "a block above the field, on two lines",
                     "spread": "trailing on its last line", "bare": ""}


def test_defaults_are_written_as_in_nightshift_toml_and_the_home_folder_as_tilde():
    rows = {s.key: s for section in config_docs.settings_reference() for s in section.settings}
    assert rows["home"].default == '`"~/.nightshift"`'
    assert rows["train.epochs"].default == "`8`" and rows["train.epochs"].type == "int"
    assert rows["promotion.allow_warn"].default == "`true`"
    assert rows["elasticsearch.api_key"].type == "secret" and rows["elasticsearch.api_key"].default == '`""`'
    assert rows["inputs.format"].help.startswith("auto (from the content)")


def test_check_mode_exits_1_on_a_stale_page_and_0_on_a_fresh_one(tmp_path, capsys):
    page = tmp_path / "configuration.md"
    assert config_docs.main(["--out", str(page)]) == 0
    status = config_docs.main(["--check", "--out", str(page)])
    assert status == (1 if config_docs.missing_help() else 0)
    page.write_text(page.read_text().replace("| `train.epochs` |", "| `train.epoch` |"))
    assert config_docs.main(["--check", "--out", str(page)]) == 1
    assert "run `make docs`" in capsys.readouterr().err
