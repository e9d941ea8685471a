"""The settings reference, `docs/configuration.md`, generated from `pipelines/config.py`.

Every field of the `Settings` tree is listed under its section with its type, its default and its help. The help is
written once, beside the field in `pipelines/config.py`: a field's `metadata["help"]` when it has one, else its
trailing `# comment`, else the comment lines directly above it; a section's help is its class docstring.

    python -m pipelines.config_docs            # rewrite docs/configuration.md (what `make docs` runs)
    python -m pipelines.config_docs --check    # exit 1 when the page is stale or a setting has no help

Reading order: `settings_reference` walks the tree and pairs each field with its help (`_comments`,
`_field_help`); `render` writes the page; `main` is the command.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import re
import sys
import tokenize
import typing
from dataclasses import dataclass
from pathlib import Path

from pipelines import config
from pipelines.config import PROJECT_ROOT, Secret, Settings

DOCS_PAGE = PROJECT_ROOT / "docs" / "configuration.md"

INTRO = """\
nightshift reads one settings object: the defaults below, then the TOML file named by `NIGHTSHIFT_CONFIG` (else
`$NIGHTSHIFT_HOME/nightshift.toml`; the working directory is never searched), then `NIGHTSHIFT_*` environment
variables. The setting `train.epochs` is `[train] epochs = 3` in the file or `NIGHTSHIFT_TRAIN_EPOCHS=3` in the
environment; a top-level setting such as `storage` is `storage = "s3://bucket/prefix"` at the top of the file or
`NIGHTSHIFT_STORAGE`; a nested section such as `[prometheus.queries]` reads
`NIGHTSHIFT_PROMETHEUS_QUERIES_GPU_UTIL`. An unknown key in the file, or a value that cannot be read as the
setting's type, stops the command with one line naming the setting; a secret's value is never printed.
Booleans read `1`/`true`/`yes`/`on` and `0`/`false`/`no`/`off`.

Environment variables that are not settings:

| variable | what it does |
|---|---|
| `NIGHTSHIFT_CONFIG` | the settings file (default `$NIGHTSHIFT_HOME/nightshift.toml`) |
| `MLFLOW_TRACKING_URI` | the MLflow tracking server and registry; over the setting `tracking_uri` |
| `MLFLOW_TRACKING_USERNAME`, `MLFLOW_TRACKING_PASSWORD` (or `MLFLOW_TRACKING_TOKEN`) | the user nightshift logs in as on a tracking server with authentication ([deployment.md](deployment.md#the-tracking-servers-users)); `nightshift config` and `info` name the user, never the password |
| `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` | the object store of an `s3://` storage root |
| `NIGHTSHIFT_LOG_FORMAT` | `json` or `console`: nightshift's logs on stderr (default: a readable line on a terminal, else Elastic Common Schema JSON lines with the service, version, host and job on each: [deployment.md](deployment.md#nightshifts-own-logs)) |
| `NIGHTSHIFT_LOG_LEVEL` | the level of those logs (default `INFO`) |
| `NIGHTSHIFT_PROGRESS` | `off`: no progress bar on a terminal (long steps, ingest, epochs and scoring, still log a line every 30 s elsewhere) |
| `NIGHTSHIFT_USER` | who `nightshift rollback` records (default: the login) |
| `NIGHTSHIFT_WORKER_NAME` | the name a worker gives Airflow (default: the machine's fully qualified name) |

Where each setting matters in a deployment: [deployment.md](deployment.md)."""


@dataclass(frozen=True)
class SettingDoc:
    """One leaf setting: `key` is its dotted name (`train.epochs`), `env` its environment variable."""

    key: str
    env: str
    type: str
    default: str
    help: str


@dataclass(frozen=True)
class SectionDoc:
    """One section of the tree: `name` is its TOML table (`prometheus.queries`; empty for the top level)."""

    name: str
    help: str
    settings: list[SettingDoc]


def _clean(text: str) -> str:
    """One line of help: whitespace collapsed."""
    return " ".join(text.split())


def _comments(source: str) -> tuple[dict[int, str], dict[int, str]]:
    """The source's comments by line number: (trailing comments after code, comments alone on their line)."""
    trailing: dict[int, str] = {}
    alone: dict[int, str] = {}
    code_lines: set[int] = set()
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            line = tok.start[0]
            (trailing if line in code_lines else alone)[line] = tok.string.lstrip("#").strip()
        elif tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT, tokenize.ENCODING):
            code_lines.update(range(tok.start[0], tok.end[0] + 1))
    return trailing, alone


def _field_help(source: str) -> dict[str, dict[str, str]]:
    """Help per class and field from the comments: the trailing comment on any line of the field's statement,
    else the block of comment lines directly above it (no blank line between)."""
    trailing, alone = _comments(source)
    found: dict[str, dict[str, str]] = {}
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.ClassDef):
            continue
        fields = found.setdefault(node.name, {})
        for stmt in node.body:
            if not (isinstance(stmt, ast.AnnAssign) and isinstance(stmt.target, ast.Name)):
                continue
            end = stmt.end_lineno or stmt.lineno
            after = [trailing[n] for n in range(stmt.lineno, end + 1) if n in trailing]
            above: list[str] = []
            line = stmt.lineno - 1
            while line in alone:
                above.insert(0, alone[line])
                line -= 1
            fields[stmt.target.id] = _clean(" ".join(after or above))
    return found


def _type_name(kind: typing.Any) -> str:
    if kind is Secret:
        return "secret"
    if kind is Path:
        return "path"
    return getattr(kind, "__name__", str(kind))


def _default(f: dataclasses.Field, kind: typing.Any) -> str:
    """The default as it is written in `nightshift.toml`."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return ""
    if isinstance(value, Secret):
        return '`""`'
    if isinstance(value, Path):  # the state folder's default differs per user: show it as ~
        home = Path.home()
        shown = "~/" + value.relative_to(home).as_posix() if value.is_relative_to(home) else value.as_posix()
        return f'`"{shown}"`'
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return "`" + repr(value).replace("'", '"') + "`" if '"' not in value else f"`'{value}'`"
    return f"`{value!r}`"


def settings_reference(cls: type = Settings, path: str = "", help_by_class: dict | None = None) -> list[SectionDoc]:
    """The sections of `cls` in field order: its own leaf settings first, then each nested section (depth first)."""
    if help_by_class is None:
        help_by_class = _field_help(inspect.getsource(config))
    hints = typing.get_type_hints(cls)
    own: list[SettingDoc] = []
    nested: list[SectionDoc] = []
    for f in dataclasses.fields(cls):
        kind = hints[f.name]
        key = f"{path}{f.name}"
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            nested += settings_reference(kind, f"{key}.", help_by_class)
            continue
        text = f.metadata.get("help") or help_by_class.get(cls.__name__, {}).get(f.name, "")
        env = "NIGHTSHIFT_" + key.replace(".", "_").upper()
        own.append(SettingDoc(key=key, env=env, type=_type_name(kind), default=_default(f, kind), help=_clean(text)))
    doc = inspect.getdoc(cls) if cls is not Settings else ""
    section = SectionDoc(name=path.rstrip("."), help=_clean_paragraphs(doc or ""), settings=own)
    return ([section] if own else []) + nested


def _clean_paragraphs(text: str) -> str:
    return "\n\n".join(_clean(p) for p in text.split("\n\n") if p.strip())


def missing_help(sections: list[SectionDoc] | None = None) -> list[str]:
    """The dotted names of the settings that have no help."""
    return [s.key for section in sections or settings_reference() for s in section.settings if not s.help]


def _cell(text: str) -> str:
    """Text for a Markdown table cell: pipes escaped, and outside code spans the characters that start markup."""
    parts = text.split("`")
    for i in range(0, len(parts), 2):  # outside code spans
        parts[i] = parts[i].replace("*", r"\*").replace("<", "&lt;")
    return "`".join(parts).replace("|", r"\|")


def render(sections: list[SectionDoc] | None = None) -> str:
    """The page, Markdown."""
    sections = sections if sections is not None else settings_reference()
    out = ["# Configuration", "",
           "<!-- Generated from pipelines/config.py by `make docs` (pipelines/config_docs.py): write a setting's help "
           "beside its field there, not here. -->", "", INTRO, ""]
    out += ["Sections: " + ", ".join(f"[{_title(s)}](#{_anchor(s)})" for s in sections), ""]
    for section in sections:
        out += [f"## {_title(section)}", ""]
        if section.help:
            out += [section.help, ""]
        out += ["| setting | environment | type | default | help |", "|---|---|---|---|---|"]
        for s in section.settings:
            out.append(f"| `{s.key}` | `{s.env}` | {s.type} | {_cell(s.default)} | {_cell(s.help)} |")
        out.append("")
    out += ["## Replaced settings", "",
            "These names are no longer read: one of them in the file or the environment stops the command with one line "
            "naming the setting that does its work now.", "",
            "| setting | environment | replaced by |", "|---|---|---|"]
    out += [f"| `{old}` | `{config.env_name(old)}` | `{new}` |" for old, new in config.REPLACED.items()]
    out.append("")
    return "\n".join(out)


def _title(section: SectionDoc) -> str:
    return f"[{section.name}]" if section.name else "Top level"


def _anchor(section: SectionDoc) -> str:
    """GitHub's heading anchor: lower case, punctuation other than - and _ dropped, spaces as -."""
    return re.sub(r"[^\w\- ]", "", _title(section).lower()).replace(" ", "-")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pipelines.config_docs", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DOCS_PAGE, help=f"the page to write (default: {DOCS_PAGE.relative_to(PROJECT_ROOT)})")
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 when the page is stale or a setting has no help")
    args = parser.parse_args(argv)
    sections = settings_reference()
    page = render(sections)
    if args.check:
        problems = [f"setting {key} has no help: add a `# comment` beside its field in pipelines/config.py"
                    for key in missing_help(sections)]
        if not args.out.is_file() or args.out.read_text() != page:
            problems.append(f"{args.out} is stale: run `make docs`")
        for problem in problems:
            print(problem, file=sys.stderr)
        return 1 if problems else 0
    args.out.write_text(page)
    print(f"wrote {args.out} ({sum(len(s.settings) for s in sections)} settings in {len(sections)} sections)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
