"""docs/configuration.md is generated from pipelines/config.py (`make docs`): it lists every setting with its help,
and it is never stale."""

from __future__ import annotations

import dataclasses

from pipelines import config_docs
from pipelines.config import Settings


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
    missing = config_docs.missing_help()
    assert not missing, f"settings without help: {', '.join(missing)}. Add a `# comment` beside each field in pipelines/config.py, then run `make docs`."


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
