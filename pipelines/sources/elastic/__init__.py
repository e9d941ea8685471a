"""Elasticsearch: pull a window of labelled logs, write scores back, install the index templates and the roles.

A source URI is `http(s)://[user:password@]host:port/INDEX-PATTERN`, or `elasticsearch://INDEX-PATTERN` with the
endpoint from settings `[elasticsearch]`. A log source reads the window through one point-in-time; the sink writes the
`ml.*` fields back in bulk, onto each document or into a results index; scoring selects only what the current model
version has not scored and checkpoints as it writes, so a killed run resumes and writes nothing twice.

The package, by concern: `connection` (`Endpoint` and `parse_uri`, `client_options` from settings, `Connection` with
its retries and error wording, `ElasticsearchError`), `reader` (`ElasticsearchLogSource` and its point-in-time pull),
`writer` (`ElasticsearchLogSink` and its bulk sender, `DocRef`), `checkpoint` (`ScoringCheckpoint` and the
already-scored filter), `templates` (the index templates and the platform log stream), `roles` (the least-privilege
roles).
"""

from pipelines.sources.elastic.checkpoint import ScoringCheckpoint
from pipelines.sources.elastic.connection import (
    MAX_BACKOFF_S,
    RETRY_STATUSES,
    Connection,
    ElasticsearchError,
    Endpoint,
    PitExpired,
    client_options,
    parse_uri,
)
from pipelines.sources.elastic.reader import ElasticsearchLogSource
from pipelines.sources.elastic.roles import install_roles, load_roles, roles_yaml
from pipelines.sources.elastic.templates import (
    COMPONENT_TEMPLATE,
    LIFECYCLE_SETTING,
    LOGS_TEMPLATE,
    PLATFORM_ILM_POLICY,
    PLATFORM_TEMPLATE,
    RESULTS_TEMPLATE,
    TEMPLATE_DIR,
    install_platform_logs,
    install_templates,
    load_template,
    platform_stream,
)
from pipelines.sources.elastic.writer import DocRef, ElasticsearchLogSink

__all__ = [
    "COMPONENT_TEMPLATE", "LIFECYCLE_SETTING", "LOGS_TEMPLATE", "MAX_BACKOFF_S", "PLATFORM_ILM_POLICY", "PLATFORM_TEMPLATE",
    "RESULTS_TEMPLATE", "RETRY_STATUSES", "TEMPLATE_DIR", "Connection", "DocRef", "ElasticsearchError", "ElasticsearchLogSink",
    "ElasticsearchLogSource", "Endpoint", "PitExpired", "ScoringCheckpoint", "client_options", "install_platform_logs",
    "install_roles", "install_templates", "load_roles", "load_template", "parse_uri", "platform_stream", "roles_yaml",
]
