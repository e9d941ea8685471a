"""The index templates and the platform log stream: the JSON files under infra/elasticsearch/ (`load_template`), the
`ml.*` component template with the log and results index templates composed of it (`install_templates`), and the
lifecycle policy and data stream template of nightshift's own log lines (`platform_stream`, `install_platform_logs`).
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.config import ConfigError, Settings
from pipelines.resources import project_dir
from pipelines.sources.elastic.connection import Connection, ElasticsearchError, parse_uri
from pipelines.telemetry import get_logger

log = get_logger("elastic")

TEMPLATE_DIR = project_dir("infra/elasticsearch")  # the source tree's, or the installed package's copy
COMPONENT_TEMPLATE = "nightshift-ml-fields"
LOGS_TEMPLATE = "nightshift-logs"
RESULTS_TEMPLATE = "nightshift-ml-results"
PLATFORM_TEMPLATE = "nightshift-platform-logs-template"  # nightshift's own log lines: their data stream's template ...
PLATFORM_ILM_POLICY = "nightshift-platform-logs-ilm"  # ... and its lifecycle policy
LIFECYCLE_SETTING = "index.lifecycle.name"


def load_template(name: str) -> dict:
    """One of the JSON templates under infra/elasticsearch/."""
    return json.loads((TEMPLATE_DIR / f"{name}.json").read_text())


def platform_stream(settings: Settings) -> str:
    """The data stream of nightshift's own log lines: setting `elasticsearch.platform_logs`.

    Raises:
        ConfigError: the name is not one Elasticsearch accepts.
    """
    name = settings.elasticsearch.platform_logs.strip()
    if not name or name != name.lower() or any(c in name for c in ' "*\\/,|<>?#:'):
        raise ConfigError(f"setting elasticsearch.platform_logs (NIGHTSHIFT_ELASTICSEARCH_PLATFORM_LOGS): {name!r} is not a data "
                          "stream name (lowercase, no spaces or any of \" * \\ / , | < > ? # :)")
    return name


def _no_ilm(exc: ElasticsearchError) -> bool:
    """Whether the cluster answered that it has no ILM API (a distribution without the ILM module)."""
    return "no handler found for uri [/_ilm/" in str(exc)


def install_platform_logs(conn: Connection, settings: Settings) -> dict[str, Any]:
    """What nightshift's own log lines need (`pipelines.platform_logs`): the ILM policy
    (`infra/elasticsearch/nightshift-platform-logs-ilm.json`), then the data stream's index template that names it
    (`nightshift-platform-logs-template.json`), both named after setting `elasticsearch.platform_logs`; both PUTs
    replace what is there, so running it again changes nothing. A cluster without ILM (Elastic's minimal distribution)
    gets the template without a lifecycle.

    Returns `{"data_stream", "index_template", "ilm_policy"}`, `ilm_policy` None where the cluster has no ILM.

    Raises:
        ElasticsearchError: the cluster refused either request (the message names which).
    """
    name = platform_stream(settings)
    template = load_template(PLATFORM_TEMPLATE)
    policy: str | None = name
    try:
        body = load_template(PLATFORM_ILM_POLICY)
        conn.call(f"install lifecycle policy {name}", lambda c: c.ilm.put_lifecycle(name=name, policy=body))
    except ElasticsearchError as exc:
        if not _no_ilm(exc):
            raise
        policy = None
        log.warning("the cluster has no index lifecycle management: the platform log stream is kept until deleted by hand",
                    extra={"cluster": conn.where, "data_stream": name})
    template["index_patterns"] = [f"{name}*"]
    settings_block = template["template"].setdefault("settings", {})
    if policy:
        settings_block[LIFECYCLE_SETTING] = policy
    else:
        settings_block.pop(LIFECYCLE_SETTING, None)
    conn.call(f"install index template {name}", lambda c: c.indices.put_index_template(name=name, body=template))
    return {"data_stream": name, "index_template": name, "ilm_policy": policy}


def install_templates(url: str, settings: Settings, index_patterns: list[str] | None = None, update_existing: bool = False) -> dict:
    """Install the `ml.*` component template, the log index template composed of it (for `index_patterns`, default
    the file's) and the results-index template; with `update_existing`, also add the `ml.*` mapping to the indices
    that already match the patterns (a template only shapes indices created after it). First, the lifecycle policy
    and template of nightshift's own log lines (`install_platform_logs`; `platform_logs`)."""
    conn = Connection(parse_uri(url, need_index=False), settings.elasticsearch)
    try:
        platform_logs = install_platform_logs(conn, settings)  # nightshift's own log lines: lifecycle policy, then template
        component = load_template(COMPONENT_TEMPLATE)
        conn.call(f"install component template {COMPONENT_TEMPLATE}", lambda c: c.cluster.put_component_template(name=COMPONENT_TEMPLATE, body=component))
        logs = load_template(LOGS_TEMPLATE)
        if index_patterns:
            logs["index_patterns"] = index_patterns
        conn.call(f"install index template {LOGS_TEMPLATE}", lambda c: c.indices.put_index_template(name=LOGS_TEMPLATE, body=logs))
        results = load_template(RESULTS_TEMPLATE)
        conn.call(f"install index template {RESULTS_TEMPLATE}", lambda c: c.indices.put_index_template(name=RESULTS_TEMPLATE, body=results))
        updated: list[str] = []
        if update_existing:
            expression = ",".join(logs["index_patterns"])
            properties = component["template"]["mappings"]["properties"]
            conn.call(f"add the ml.* mapping to '{expression}'", lambda c: c.indices.put_mapping(
                index=expression, properties=properties, allow_no_indices=True, ignore_unavailable=True))
            updated = sorted(conn.call(f"list '{expression}'", lambda c: c.indices.get_mapping(
                index=expression, allow_no_indices=True, ignore_unavailable=True)).body)
        return {"cluster": conn.where, "component_template": COMPONENT_TEMPLATE, "index_templates": [LOGS_TEMPLATE, RESULTS_TEMPLATE],
                "index_patterns": logs["index_patterns"], "results_patterns": results["index_patterns"], "updated_indices": updated,
                "platform_logs": platform_logs}
    finally:
        conn.close()

