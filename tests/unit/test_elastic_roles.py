"""The Elasticsearch roles of infra/elasticsearch/roles/ as files: their patterns follow the templates', every
privilege of the nightly role says what needs it, and 403 answers become one line. A real node runs them in
tests/integration/test_elastic_roles.py."""

from __future__ import annotations

import json

from pipelines.sources.elastic.connection import _forbidden
from pipelines.sources.elastic.roles import load_roles, roles_yaml
from pipelines.sources.elastic.templates import load_template


def test_roles_cover_the_templates_indices_and_explain_each_privilege():
    roles = load_roles()
    assert set(roles) == {"nightshift-nightly", "nightshift-analyst"}
    logs, results = load_template("nightshift-logs")["index_patterns"], load_template("nightshift-ml-results")["index_patterns"]
    nightly = roles["nightshift-nightly"]
    assert nightly["cluster"] == [] and roles["nightshift-analyst"]["cluster"] == []
    assert [e["names"] for e in nightly["indices"]] == [logs, results, ["nightshift-platform-logs"]]
    explained = nightly["metadata"]["privileges"]
    granted = {f"{name} {privilege}" for entry in nightly["indices"] for name in entry["names"] for privilege in entry["privileges"]}
    assert granted == set(explained)
    analyst = roles["nightshift-analyst"]["indices"]
    assert analyst == [{"names": logs + results, "privileges": ["read", "view_index_metadata"]}]


def test_patterns_and_the_platform_log_stream_are_replaced_where_given():
    roles = load_roles(["filebeat-*", "app-*"], ["scores*"], "ops-logs")
    assert [e["names"] for e in roles["nightshift-nightly"]["indices"]] == [["filebeat-*", "app-*"], ["scores*"], ["ops-logs"]]
    assert roles["nightshift-analyst"]["indices"][0]["names"] == ["filebeat-*", "app-*", "scores*"]


def test_roles_yaml_holds_one_entry_a_line_with_the_body():
    roles = load_roles()
    lines = roles_yaml(roles).splitlines()
    assert {line.split(": ", 1)[0]: json.loads(line.split(": ", 1)[1]) for line in lines} == roles


def test_a_refusal_is_one_line_naming_action_index_privileges_and_setting():
    reason = ("action [indices:data/write/bulk[s]] is unauthorized for API key id [k1] of user [elastic] on indices [audit], "
              "this action is granted by the index privileges [create_doc,create,delete,index,write,all]")
    setting = "setting elasticsearch.api_key (NIGHTSHIFT_ELASTICSEARCH_API_KEY)"
    assert str(_forbidden("bulk write to https://es:9200/audit", setting, "https://es:9200", reason, "audit*")) == (
        f"bulk write to https://es:9200/audit: the credential from {setting} is not allowed to run indices:data/write/bulk[s] "
        "on 'audit' at https://es:9200 (403); its role needs one of the index privileges create_doc, create, delete, index, write, all")
    cluster = "action [cluster:monitor/health] is unauthorized for user [u] with effective roles [r], this action is granted by the cluster privileges [monitor,manage,all]"
    assert str(_forbidden("health", setting, "https://es:9200", cluster, "logs-*")).endswith(
        "is not allowed to run cluster:monitor/health at https://es:9200 (403); its role needs one of the cluster privileges monitor, manage, all")
    other = str(_forbidden("search", setting, "https://es:9200", "something else", "logs-*"))
    assert other == f"search: the credential from {setting} is not allowed to do this on https://es:9200 (403): something else"
