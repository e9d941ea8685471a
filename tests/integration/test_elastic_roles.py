"""Least privilege: the roles of infra/elasticsearch/roles/ run the nightly job against a real node, and allow nothing
more.

Each test runs three ways. On the session's node (security on): `api key`, the roles stored through the security
API by `nightshift es install-roles` as `elastic`, and each role's credential an API key made by `elastic` with that
role's body, as docs/deployment.md makes the nightly job's; `file realm`, the roles from `nightshift es install-roles
--print-yaml` in the node's roles.yml, with a file-realm user per role. Marked `live`, on the cluster named by `ES_URL`
(a superuser's credential): API keys as on the node. The roles cover only this module's `nstest-…` indices. The
template is installed first, with the administrator's credential, as a deployment does; scoring uses the stand-in
classifier.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import secrets
import time
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from datetime import datetime, timezone

import pytest

from tests.support.es_cluster import LIVE_URL, Cluster, day_index

pytestmark = pytest.mark.slow  # a real Elasticsearch node

NIGHTLY, ANALYST = "nightshift-nightly", "nightshift-analyst"
T0, T1 = datetime(2026, 11, 17, tzinfo=timezone.utc), datetime(2026, 11, 19, tzinfo=timezone.utc)
WINDOW = ["--start", "2026-11-17", "--end", "2026-11-19"]
REALM_FILES = ("roles.yml", "users", "users_roles")


@dataclass
class Realm:
    """A cluster with the roles installed for its prefix: the settings (env) of the administrator and of each role."""

    cluster: Cluster
    admin: dict[str, str]
    roles: dict[str, dict[str, str]] = field(default_factory=dict)
    secrets: list[str] = field(default_factory=list)
    api_keys: list[str] = field(default_factory=list)  # ids, invalidated at the end
    stored_roles: list[str] = field(default_factory=list)  # roles stored through the security API, deleted at the end


def run(*args: str) -> tuple[int, str]:
    """`nightshift ARGS` in this process: (exit code, stdout)."""
    from nightshift.cli import main

    out = io.StringIO()
    with redirect_stdout(out):
        code = main(list(args))
    return code, out.getvalue()


def role_patterns(cluster: Cluster) -> list[str]:
    return ["--index-pattern", cluster.name("logs-*"), "--results-pattern", cluster.name("nightshift-ml-results*")]


def platform_logs(cluster: Cluster) -> dict[str, str]:
    """The setting naming the data stream of nightshift's own log lines, for this module's stream."""
    return {"NIGHTSHIFT_ELASTICSEARCH_PLATFORM_LOGS": cluster.name("platform-logs")}


def pbkdf2(password: str) -> str:
    """A file-realm password hash, `{PBKDF2}COST$SALT$HASH` (PBKDF2-HMAC-SHA512, as Elasticsearch's own hasher)."""
    salt, cost = os.urandom(32), 10_000
    digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, cost, 32)
    return f"{{PBKDF2}}{cost}${base64.b64encode(salt).decode()}${base64.b64encode(digest).decode()}"


def settle(cluster: Cluster, users: dict[str, tuple[str, str]]) -> None:
    """Wait until the node has read its file realm again (it looks every 5 s): each user authenticates with its role."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if all(cluster.client.options(basic_auth=cred).security.authenticate()["roles"] == [role] for role, cred in users.items()):
                return
        except Exception:  # 401 until the users file is read again
            if time.monotonic() > deadline:
                raise
        time.sleep(0.5)


def on_node(node) -> Realm:
    cluster = Cluster.on(node)
    config = node.dir / "config"
    with pytest.MonkeyPatch.context() as env:
        for name, value in platform_logs(cluster).items():
            env.setenv(name, value)
        code, text = run("es", "install-roles", "--print-yaml", *role_patterns(cluster))
    assert code == 0 and set(line.split(":")[0] for line in text.splitlines()) == {NIGHTLY, ANALYST}
    users = {role: (f"{cluster.prefix}{role.rpartition('-')[2]}", secrets.token_urlsafe(16)) for role in (NIGHTLY, ANALYST)}
    with open(config / "roles.yml", "a") as f:  # appended in place: the file keeps its owner, the node's user
        f.write("\n" + text)
    with open(config / "users", "a") as f:
        f.writelines(f"{user}:{pbkdf2(password)}\n" for user, password in users.values())
    with open(config / "users_roles", "a") as f:
        f.writelines(f"{role}:{user}\n" for role, (user, _) in users.items())
    settle(cluster, users)
    user, password = node.credential
    return Realm(cluster, {"USERNAME": user, "PASSWORD": password},
                 {role: {"USERNAME": user, "PASSWORD": password} for role, (user, password) in users.items()},
                 [password for _, password in users.values()])


def with_api_keys(realm: Realm) -> Realm:
    """An API key per role, made by the realm's administrator (its cluster's client) with the role's body as its
    descriptor, as docs/deployment.md makes the nightly job's."""
    from pipelines.sources.elastic.roles import load_roles

    cluster, admin = realm.cluster, realm.admin
    roles = load_roles([cluster.name("logs-*")], [cluster.name("nightshift-ml-results*")], cluster.name("platform-logs"))
    for role, body in roles.items():
        key = cluster.client.security.create_api_key(name=f"{cluster.prefix}{role}", expiration="1h", role_descriptors={role: body})
        realm.roles[role] = {**{k: v for k, v in admin.items() if k in ("CA_CERTS", "VERIFY_CERTS")}, "API_KEY": key["encoded"]}
        realm.secrets.append(key["encoded"])
        realm.api_keys.append(key["id"])
    return realm


def on_node_with_api_keys(node, home) -> Realm:
    """`nightshift es install-roles` as `elastic` stores the roles (created, then the same again: updated), then an API
    key per role."""
    cluster = Cluster(node.url, basic_auth=("elastic", node.env["ES_SUPERUSER_PASSWORD"]))
    realm = Realm(cluster, {"USERNAME": "elastic", "PASSWORD": node.env["ES_SUPERUSER_PASSWORD"]})
    with pytest.MonkeyPatch.context() as env:
        env.setenv("NIGHTSHIFT_HOME", str(home))
        use(env, realm.admin)
        for name, value in platform_logs(cluster).items():
            env.setenv(name, value)
        for verb in ("created", "updated"):
            code, out = run("es", "install-roles", "--url", cluster.url, *role_patterns(cluster), "--json")
            realm.stored_roles = [ANALYST, NIGHTLY]
            assert code == 0 and sorted(json.loads(out)[verb]) == [ANALYST, NIGHTLY], out
    stored = cluster.client.security.get_role(name=NIGHTLY)[NIGHTLY]
    assert stored["indices"][0]["names"] == [cluster.name("logs-*")] and stored["metadata"]["managed_by"] == "nightshift"
    return with_api_keys(realm)


def on_live() -> Realm:
    """API keys only (the roles themselves go through the security API in
    test_install_roles_through_the_security_api_is_idempotent, which leaves a cluster's own roles of those names alone)."""
    admin = {k: os.environ[f"ES_{k}"] for k in ("API_KEY", "CA_CERTS", "VERIFY_CERTS") if os.environ.get(f"ES_{k}")}
    if not admin.get("API_KEY") and "@" in LIVE_URL:  # user:password in ES_URL: the admin commands get it in --url
        admin["URL_CREDENTIAL"] = LIVE_URL
    return with_api_keys(Realm(Cluster.live(), admin))


@pytest.fixture(scope="module", params=[pytest.param("api key"), pytest.param("file realm"),
                                        pytest.param("live", marks=[pytest.mark.live, pytest.mark.skipif(not LIVE_URL, reason="needs ES_URL")])])
def realm(request, tmp_path_factory):
    if request.param == "file realm":
        node = request.getfixturevalue("es_node")
        config = node.dir / "config"
        saved = {name: (config / name).read_text() for name in REALM_FILES}
        realm = on_node(node)
        yield realm
        for name, text in saved.items():  # the session's node goes back to its own users and roles
            (config / name).write_text(text)
    else:
        realm = on_node_with_api_keys(request.getfixturevalue("es_node"), tmp_path_factory.mktemp("home")) if request.param == "api key" else on_live()
        yield realm
        realm.cluster.client.security.invalidate_api_key(ids=realm.api_keys)
        for name in realm.stored_roles:
            realm.cluster.client.security.delete_role(name=name)
    realm.cluster.close()


def use(monkeypatch, credential: dict[str, str]) -> None:
    """nightshift's Elasticsearch settings hold exactly `credential` (and the TLS settings in it)."""
    for name in ("API_KEY", "USERNAME", "PASSWORD", "BEARER_TOKEN", "CA_CERTS", "VERIFY_CERTS"):
        monkeypatch.delenv(f"NIGHTSHIFT_ELASTICSEARCH_{name}", raising=False)
    for name, value in credential.items():
        if name != "URL_CREDENTIAL":
            monkeypatch.setenv(f"NIGHTSHIFT_ELASTICSEARCH_{name}", value)


def admin_url(realm: Realm) -> str:
    return realm.admin.get("URL_CREDENTIAL") or realm.cluster.url


@pytest.fixture(scope="module")
def demo_docs(tmp_path_factory) -> list[dict]:
    from pipelines.data.demo_logs import write_demo_logs

    path = write_demo_logs(tmp_path_factory.mktemp("es-roles-corpus"), per_day=40)
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture
def logs(realm, demo_docs, home, monkeypatch):
    """The administrator's part: the templates (for this module's indices), then the demo corpus in daily indices.
    Returns the number of documents in the window."""
    cluster = realm.cluster
    use(monkeypatch, realm.admin)
    for name, value in platform_logs(cluster).items():
        monkeypatch.setenv(name, value)
    code, _ = run("es", "install-template", "--url", admin_url(realm), "--index-pattern", cluster.name("logs-*"))
    assert code == 0
    cluster.templates += ["nightshift-logs", "nightshift-ml-results", cluster.name("platform-logs")]
    cluster.client.options(ignore_status=404).indices.delete(index=cluster.name("*"))
    cluster.load(demo_docs, day_index)
    return sum(T0 <= datetime.fromisoformat(d["@timestamp"].replace("Z", "+00:00")) < T1 for d in demo_docs)


def source(realm: Realm, pattern: str = "logs-*") -> str:
    return f"{realm.cluster.url}/{realm.cluster.name(pattern)}"


def score(realm: Realm, *args: str) -> tuple[int, dict]:
    code, out = run("score", "logs", "--model", "log-anomaly/1", "--source", source(realm), *WINDOW, "--json", *args)
    return code, json.loads(out) if out.strip() else {}


def test_the_nightly_role_pulls_and_writes_back_a_night(realm, logs, stand_in, monkeypatch, tmp_path, capsys):
    """With only the nightly credential: a pull for training, a night's write-back onto the documents and into a
    results index, each repeated without writing twice (the lookups need `read`), no refresh refused (`maintenance`),
    the point-in-times closed, and the night's own log lines shipped, once."""
    cluster = realm.cluster
    use(monkeypatch, realm.roles[NIGHTLY])
    code, out = run("ingest", "logs", "--source", source(realm), *WINDOW, "--out", str(tmp_path / "s"), "--json")
    assert code == 0 and json.loads(out)["rows"] == logs

    code, first = score(realm)
    assert code == 0 and (first["read"], first["written"], first["failed"]) == (logs, logs, 0), first
    scored = [d for d in cluster.docs("logs-*").values() if "ml" in d]
    assert len(scored) == logs and all(d["ml"]["model"]["version"] == "1" and "score" in d["ml"]["anomaly"] for d in scored)
    code, again = score(realm)
    assert code == 0 and (again["read"], again["written"], again["skipped"]) == (0, 0, logs)

    results = f"{cluster.url}/{cluster.name('nightshift-ml-results')}"
    code, into = score(realm, "--sink", results)
    assert code == 0 and (into["written"], into["failed"]) == (logs, 0), into
    cluster.refresh("nightshift-ml-results")  # as a night later: every write searchable
    code, again = score(realm, "--sink", results)
    assert code == 0 and (again["written"], again["skipped"]) == (0, logs)
    assert len(cluster.docs("nightshift-ml-results")) == logs

    night_log = tmp_path / "night.ndjson"
    night_log.write_text("".join(json.dumps({"@timestamp": f"2026-11-18T02:0{i}:00Z", "log.level": "info", "message": f"step {i}"}) + "\n"
                                 for i in range(3)))
    for shipped, already in ((3, 0), (0, 3)):
        code, out = run("es", "ship-logs", str(night_log), "--url", cluster.url, "--json")
        assert code == 0 and (json.loads(out)["shipped"], json.loads(out)["already_shipped"]) == (shipped, already)

    err = capsys.readouterr().err
    assert "refresh refused" not in err and "security_exception" not in err and "unauthorized" not in err
    assert cluster.open_contexts() == 0


def setting(realm: Realm, role: str) -> str:
    """How an error names where `role`'s credential came from."""
    if "API_KEY" in realm.roles[role]:
        return "setting elasticsearch.api_key (NIGHTSHIFT_ELASTICSEARCH_API_KEY)"
    return "settings elasticsearch.username (NIGHTSHIFT_ELASTICSEARCH_USERNAME) / elasticsearch.password (NIGHTSHIFT_ELASTICSEARCH_PASSWORD)"


def error_line(capsys) -> str:
    """The one error line of the command just run (warnings may come before it), without a traceback."""
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if ": error: " in line]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize("via", ["file source", "results index"])
def test_the_nightly_role_may_not_write_another_index(realm, logs, demo_docs, stand_in, monkeypatch, tmp_path, capsys, via):
    """Documents from a file indexed into another index (a bulk write), or scores sent to another index as results
    (its look-up comes first): one line naming the index, the action refused, the privileges that would grant it and
    the credential's setting; exit 2, nothing written, no secret."""
    cluster = realm.cluster
    other = cluster.name("audit-trail")
    cluster.client.indices.create(index=other)
    use(monkeypatch, realm.roles[NIGHTLY])
    if via == "file source":
        corpus = tmp_path / "logs.ndjson"
        corpus.write_text("".join(json.dumps(d) + "\n" for d in demo_docs))
        code, _ = run("score", "logs", "--model", "log-anomaly/1", "--source", f"file://{corpus}", "--sink", f"{cluster.url}/{other}")
        what, action, privileges = f"bulk write to {cluster.url}/{other}", "indices:data/write/bulk[s]", "create_doc, create, delete, index, write, all"
    else:
        code, _ = score(realm, "--sink", f"{cluster.url}/{other}")
        what, action, privileges = f"look up '{other}'", "indices:data/read/search", "read, all"
    line = error_line(capsys)
    assert code == 2 and line.endswith(f"{what}: the credential from {setting(realm, NIGHTLY)} is not allowed to run {action} on '{other}' at {cluster.url} "
                                       f"(403); its role needs one of the index privileges {privileges}"), line
    assert not any(secret in line for secret in realm.secrets)
    cluster.refresh("audit-trail")
    assert cluster.client.count(index=other)["count"] == 0


def test_the_analyst_role_reads_but_does_not_write(realm, logs, stand_in, monkeypatch, tmp_path, capsys):
    from elasticsearch import AuthorizationException

    cluster = realm.cluster
    use(monkeypatch, realm.roles[ANALYST])
    code, out = run("ingest", "logs", "--source", source(realm), *WINDOW, "--out", str(tmp_path / "s"), "--json")
    assert code == 0 and json.loads(out)["rows"] == logs

    code, _ = score(realm)
    line = error_line(capsys)
    assert code == 2 and line.endswith(f"bulk write to {source(realm)}: the credential from {setting(realm, ANALYST)} is not "
                                       f"allowed to run indices:data/write/bulk on '{cluster.name('logs-*')}' at {cluster.url} (403); "
                                       "its role needs one of the index privileges create_doc, create, delete, index, write, all"), line
    assert not any("ml" in d for d in cluster.docs("logs-*").values())

    from pipelines.config import load_settings
    from pipelines.sources.elastic.connection import Connection, parse_uri

    conn = Connection(parse_uri(source(realm)), load_settings().elasticsearch)
    try:  # the analyst's own client, outside nightshift's write path: the node refuses a plain index request too
        assert conn.client.count(index=cluster.name("logs-*"))["count"] == len(cluster.docs("logs-*"))
        with pytest.raises(AuthorizationException):
            conn.client.index(index=cluster.name("logs-2026.11.17"), document={"message": "an analyst's note"})
    finally:
        conn.close()


def test_install_roles_names_the_privilege_it_lacks(realm, home, monkeypatch, capsys):
    """Installing roles is an administrator's action: the nightly credential is refused, in one line."""
    use(monkeypatch, realm.roles[NIGHTLY])
    code, _ = run("es", "install-roles", "--url", realm.cluster.url, *role_patterns(realm.cluster))
    line = error_line(capsys)
    assert code == 2 and "install role nightshift-analyst: the credential from " in line
    assert line.endswith(f"is not allowed to run cluster:admin/xpack/security/role/put at {realm.cluster.url} (403); its role needs one of "
                         "the cluster privileges manage_security, all"), line


@pytest.mark.live
@pytest.mark.skipif(not LIVE_URL, reason="needs ES_URL")
def test_install_roles_through_the_security_api_is_idempotent(home, monkeypatch):
    """On a cluster with the security index: created, then updated with the same body; roles of these names that the
    cluster already had are left alone (the test is skipped)."""
    cluster = Cluster.live()
    try:
        existing = cluster.client.options(ignore_status=404).security.get_role(name=f"{NIGHTLY},{ANALYST}").body
        if existing:
            pytest.skip(f"the cluster already has roles {sorted(existing)}")
        realm = Realm(cluster, {k: os.environ[f"ES_{k}"] for k in ("API_KEY", "CA_CERTS", "VERIFY_CERTS") if os.environ.get(f"ES_{k}")})
        use(monkeypatch, realm.admin)
        try:
            for verb in ("created", "updated"):
                code, out = run("es", "install-roles", "--url", LIVE_URL, *role_patterns(cluster), "--json")
                assert code == 0 and sorted(json.loads(out)[verb]) == [ANALYST, NIGHTLY]
            role = cluster.client.security.get_role(name=NIGHTLY)[NIGHTLY]
            assert role["indices"][0]["names"] == [cluster.name("logs-*")] and role["metadata"]["managed_by"] == "nightshift"
        finally:
            for name in (NIGHTLY, ANALYST):
                cluster.client.options(ignore_status=404).security.delete_role(name=name)
    finally:
        cluster.close()
