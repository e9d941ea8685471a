"""The least-privilege roles of infra/elasticsearch/roles/ (`nightshift-nightly`, `nightshift-analyst`), with the index
patterns of the templates installed: put through the security API (`install_roles`), or as a file realm's roles.yml
entries (`roles_yaml`).
"""

from __future__ import annotations

import json
from typing import Any

from pipelines.config import ElasticsearchSettings, Settings
from pipelines.sources.elastic.connection import Connection, parse_uri
from pipelines.sources.elastic.templates import LOGS_TEMPLATE, RESULTS_TEMPLATE, TEMPLATE_DIR, load_template


def load_roles(index_patterns: list[str] | None = None, results_patterns: list[str] | None = None,
               platform_logs: str | None = None) -> dict[str, dict]:
    """The roles under infra/elasticsearch/roles/ (bodies of `PUT _security/role/NAME`), by name. The templates' index
    patterns in them (`logs-*`, `nightshift-ml-results*`) are replaced by `index_patterns` / `results_patterns` where
    given, so that a role covers the same indices as the templates installed with those patterns, and the default data
    stream of nightshift's own log lines by `platform_logs` (setting `elasticsearch.platform_logs`)."""
    swap: dict[str, list[str]] = {}
    if platform_logs:
        swap[ElasticsearchSettings.platform_logs] = [platform_logs]
    for template, patterns in ((LOGS_TEMPLATE, index_patterns), (RESULTS_TEMPLATE, results_patterns)):
        if patterns:
            swap.update((default, patterns) for default in load_template(template)["index_patterns"])
    roles = {}
    for path in sorted((TEMPLATE_DIR / "roles").glob("*.json")):
        body = json.loads(path.read_text())
        for entry in body.get("indices", []):
            entry["names"] = list(dict.fromkeys(new for name in entry["names"] for new in swap.get(name, [name])))
        roles[path.stem] = body
    return roles


def roles_yaml(roles: dict[str, dict]) -> str:
    """`roles` as entries of a file realm's roles.yml (each body as one JSON line, which YAML reads as it is)."""
    return "".join(f"{name}: {json.dumps(body)}\n" for name, body in roles.items())


def install_roles(url: str, settings: Settings, index_patterns: list[str] | None = None, results_patterns: list[str] | None = None) -> dict:
    """Create or update the roles of `load_roles` (with the data stream of setting `elasticsearch.platform_logs`)
    through the security API (an administrator's credential: the cluster privilege `manage_security`). Idempotent: a
    role that exists is overwritten with the same body.

    Raises:
        ElasticsearchError: the cluster refused a role (the message names it; a 403 names the missing privilege).
    """
    conn = Connection(parse_uri(url, need_index=False), settings.elasticsearch)
    try:
        created: dict[str, bool] = {}
        for name, body in load_roles(index_patterns, results_patterns, settings.elasticsearch.platform_logs).items():
            def put(c: Any, name: str = name, body: dict = body) -> Any:
                return c.security.put_role(name=name, body=body)

            created[name] = bool(conn.call(f"install role {name}", put)["role"]["created"])
        return {"cluster": conn.where, "created": [n for n, new in created.items() if new], "updated": [n for n, new in created.items() if not new],
                "index_patterns": index_patterns or load_template(LOGS_TEMPLATE)["index_patterns"],
                "results_patterns": results_patterns or load_template(RESULTS_TEMPLATE)["index_patterns"]}
    finally:
        conn.close()
