"""The embedded demo corpus: several days of labelled logs from a small GPU training platform.

Four services (an nginx front end, Kubernetes, PyTorch training jobs, Ceph storage) write templated
lines with variable ids, IPs, paths, durations and sizes. Anomalies come in incident bursts. One
family of anomaly templates (and one phrasing per root cause) is held back from every day but the
last, so evaluating on the last day measures generalisation to unseen messages, not memory.

The hard variant (`variant="hard"`, `nightshift demo-data --hard`) adds, from a random stream of its own (the
default corpus stays the same line for line): on the last day, incident bursts whose words never occur on
any earlier day (`ANOMALY_NOVEL`); every day, a share of Chinese lines (`ZH_SHARE` of the normal traffic,
with Chinese incidents, new phrasings on the last day); and on the earlier days, a share of mislabelled
lines (`MISLABELLED_SHARE` of the lines outside training jobs, the anomaly flag flipped), as hand-labelled
logs have.
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable, Iterator

Fill = Callable[[random.Random], str]


def _ip(r: random.Random) -> str:
    return f"10.{r.randint(0, 255)}.{r.randint(0, 255)}.{r.randint(1, 254)}"


def _pod(r: random.Random) -> str:
    app = r.choice(["checkout", "payments", "search", "auth", "catalog", "feature-store", "inference"])
    return f"{app}-{r.getrandbits(36):09x}-{''.join(r.choices('abcdefghjkmnpqrstvwxz23456789', k=5))}"


def _node(r: random.Random) -> str:
    return f"gpu-node-{r.randint(1, 48):02d}"


def _path(r: random.Random) -> str:
    return "/" + "/".join([r.choice(["data", "mnt", "srv", "var"]), r.choice(["ckpt", "shards", "datasets", "cache"]), f"run{r.randint(100, 999)}", r.choice(["model.pt", "part-0001.parquet", "index.json", "optimizer.bin"])])


def _url(r: random.Random) -> str:
    return r.choice(["/api/v1/orders", "/api/v1/cart", "/api/v2/search", "/login", "/static/app.js", "/api/v1/users/me", "/healthz", "/api/v2/recommendations"]) + (f"/{r.randint(1, 99999)}" if r.random() < 0.3 else "")


def _user(r: random.Random) -> str:
    return r.choice(["alice", "bob", "mlops", "svc-train", "carol", "dave", "ci-runner"])


@dataclass(frozen=True)
class Template:
    service: str
    level: str
    render: Callable[[random.Random], str]
    causes: tuple[str, ...] = ()


T = Template

NORMAL: list[Template] = [
    T("nginx", "info", lambda r: f'{_ip(r)} - - "GET {_url(r)} HTTP/1.1" 200 {r.randint(200, 90000)} "-" "Mozilla/5.0" rt={r.uniform(0.001, 0.4):.3f}'),
    T("nginx", "info", lambda r: f'{_ip(r)} - - "POST {_url(r)} HTTP/1.1" 201 {r.randint(50, 4000)} "-" "python-requests/2.32" rt={r.uniform(0.01, 0.6):.3f}'),
    T("nginx", "info", lambda r: f'{_ip(r)} - - "GET {_url(r)} HTTP/1.1" 304 0 "-" "Mozilla/5.0" rt={r.uniform(0.001, 0.05):.3f}'),
    T("nginx", "info", lambda r: f"upstream keepalive connection to {_ip(r)}:8080 reused, pool size {r.randint(8, 64)}"),
    T("nginx", "info", lambda r: f"reloading configuration, {r.randint(3, 40)} server blocks loaded in {r.randint(2, 90)}ms"),
    T("kubernetes", "info", lambda r: f"Successfully assigned default/{_pod(r)} to {_node(r)}"),
    T("kubernetes", "info", lambda r: f'Pulling image "registry.local/{r.choice(["trainer", "api", "worker"])}:v{r.randint(1, 9)}.{r.randint(0, 30)}"'),
    T("kubernetes", "info", lambda r: f"Started container {r.choice(['main', 'sidecar', 'istio-proxy'])} in pod {_pod(r)}"),
    T("kubernetes", "info", lambda r: f"Readiness probe succeeded for pod {_pod(r)} after {r.randint(1, 30)}s"),
    T("kubernetes", "info", lambda r: f"Scaled deployment {r.choice(['checkout', 'search', 'inference'])} from {r.randint(2, 5)} to {r.randint(3, 8)} replicas"),
    T("kubernetes", "info", lambda r: f"Node {_node(r)} status is now: NodeReady, allocatable gpu={r.choice([4, 8])}"),
    T("pytorch", "info", lambda r: f"epoch {r.randint(1, 90)} step {r.randint(1, 20000)} loss={r.uniform(0.05, 3):.4f} lr={r.uniform(1e-5, 1e-3):.2e} throughput={r.randint(200, 4000)} samples/s"),
    T("pytorch", "info", lambda r: f"Saved checkpoint to {_path(r)} ({r.randint(100, 9000)} MB) in {r.uniform(1, 60):.1f}s"),
    T("pytorch", "info", lambda r: f"rank {r.randint(0, 63)}: NCCL communicator initialised, world_size={r.choice([8, 16, 32, 64])}"),
    T("pytorch", "info", lambda r: f"validation accuracy={r.uniform(0.6, 0.99):.4f} f1={r.uniform(0.5, 0.98):.4f} at step {r.randint(100, 20000)}"),
    T("pytorch", "info", lambda r: f"DataLoader started {r.choice([4, 8, 16])} workers, prefetch_factor={r.choice([2, 4])}, pin_memory=True"),
    T("pytorch", "info", lambda r: f"job {r.randint(10000, 99999)} submitted by {_user(r)} with {r.choice([1, 2, 4, 8])} GPUs on {_node(r)}"),
    T("ceph", "info", lambda r: f"osd.{r.randint(0, 120)} scrub ok, {r.randint(10, 900)} objects, {r.randint(1, 500)} GiB checked"),
    T("ceph", "info", lambda r: f"pool {r.choice(['rbd', 'datasets', 'ckpt'])} usage {r.randint(20, 70)}% of {r.randint(50, 400)} TiB"),
    T("ceph", "info", lambda r: f"client.{r.randint(1000, 9999)} mounted {_path(r)} read-write"),
    T("ceph", "info", lambda r: f"placement group {r.randint(1, 30)}.{r.randint(0, 255):x} active+clean"),
    T("ceph", "info", lambda r: f"snapshot {r.choice(['daily', 'hourly'])}-{r.randint(1, 999)} of volume vol-{r.getrandbits(32):08x} created in {r.randint(20, 900)}ms"),
]

# Anomaly templates seen on the training days.
ANOMALY_SEEN: list[Template] = [
    T("nginx", "error", lambda r: f"upstream timed out (110: Connection timed out) while reading response header from upstream, client: {_ip(r)}, request: \"GET {_url(r)}\""),
    T("nginx", "error", lambda r: f'{_ip(r)} - - "GET {_url(r)} HTTP/1.1" 502 157 "-" "Mozilla/5.0" rt={r.uniform(5, 30):.3f} bad gateway'),
    T("nginx", "error", lambda r: f"connect() failed (111: Connection refused) while connecting to upstream {_ip(r)}:8080"),
    T("kubernetes", "error", lambda r: f"Back-off restarting failed container main in pod {_pod(r)}"),
    T("kubernetes", "error", lambda r: f"Liveness probe failed for pod {_pod(r)}: HTTP probe failed with statuscode: 500"),
    T("kubernetes", "error", lambda r: f"Failed to pull image \"registry.local/trainer:v{r.randint(1, 9)}\": rpc error: code = NotFound"),
    T("kubernetes", "warning", lambda r: f"Evicted pod {_pod(r)}: the node was low on resource: memory"),
    T("ceph", "error", lambda r: f"osd.{r.randint(0, 120)} heartbeat_check: no reply from {_ip(r)} for {r.randint(20, 90)} seconds, marking down"),
    T("ceph", "error", lambda r: f"slow request {r.randint(30, 600)}s old, blocked on pg {r.randint(1, 30)}.{r.randint(0, 255):x}, client.{r.randint(1000, 9999)}"),
    T("ceph", "error", lambda r: f"pg {r.randint(1, 30)}.{r.randint(0, 255):x} is inconsistent: checksum mismatch on object {_path(r)}"),
]

# Held back: different words for the same kinds of trouble, only on the last day.
ANOMALY_HELD_BACK: list[Template] = [
    T("nginx", "error", lambda r: f"no live upstreams while connecting to upstream, client: {_ip(r)}, request: \"POST {_url(r)}\", all backends unavailable"),
    T("nginx", "error", lambda r: f'{_ip(r)} - - "POST {_url(r)} HTTP/1.1" 503 190 "-" "python-requests/2.32" rt={r.uniform(5, 30):.3f} service unavailable'),
    T("kubernetes", "error", lambda r: f"Container main in pod {_pod(r)} crashed with exit code 137, restart count {r.randint(3, 20)}"),
    T("kubernetes", "error", lambda r: f"Readiness probe failed for pod {_pod(r)}: connection refused, marking endpoint not ready"),
    T("kubernetes", "warning", lambda r: f"Node {_node(r)} status is now: NodeNotReady, kubelet stopped posting node status"),
    T("ceph", "error", lambda r: f"osd.{r.randint(0, 120)} failed to read block at {_path(r)}: Input/output error, marking osd down"),
    T("ceph", "error", lambda r: f"HEALTH_ERR: {r.randint(2, 40)} pgs degraded, {r.randint(1, 9)} objects unfound, data unavailable"),
]

# Training-job failures: (root causes, phrasings seen on training days, phrasing held back).
FAILURES: list[tuple[tuple[str, ...], list[Fill], Fill]] = [
    (("OOM",),
     [lambda r: f"Out of memory: Killed process {r.randint(1000, 99999)} (python) total-vm:{r.randint(10, 90)}GB, anon-rss:{r.randint(10, 60)}GB",
      lambda r: f"worker {r.randint(0, 15)} was killed by the kernel OOM killer, host RAM exhausted on {_node(r)}"],
     lambda r: f"oom-kill: task python pid {r.randint(1000, 99999)} terminated, memory cgroup limit of {r.randint(16, 256)}Gi reached"),
    (("CUDA_OutOfMemory",),
     [lambda r: f"RuntimeError: CUDA out of memory. Tried to allocate {r.uniform(0.5, 8):.2f} GiB (GPU {r.randint(0, 7)}; 79.15 GiB total capacity)",
      lambda r: f"torch.OutOfMemoryError: CUDA error: out of memory on device cuda:{r.randint(0, 7)} while allocating activations"],
     lambda r: f"CUDA caching allocator could not allocate {r.randint(512, 8192)} MiB on GPU {r.randint(0, 7)}: device memory exhausted"),
    (("CUDA_Driver_Mismatch",),
     [lambda r: "RuntimeError: The NVIDIA driver on your system is too old (found version 11040)",
      lambda r: f"CUDA initialization: CUDA driver version is insufficient for CUDA runtime version on {_node(r)}"],
     lambda r: f"libcuda reports driver API {r.randint(11, 12)}.{r.randint(0, 8)} but the CUDA runtime needs a newer driver; cudaErrorInsufficientDriver"),
    (("DataLoader_Stuck",),
     [lambda r: f"RuntimeError: DataLoader worker (pid {r.randint(1000, 99999)}) is killed by signal: Killed, dataloader hang",
      lambda r: f"DataLoader timed out after {r.randint(300, 1800)} seconds waiting for batch from worker {r.randint(0, 15)}"],
     lambda r: f"no batch produced by DataLoader workers for {r.randint(10, 60)} minutes, input pipeline stalled"),
    (("Disk_Full",),
     [lambda r: f"OSError: [Errno 28] No space left on device: '{_path(r)}'",
      lambda r: f"failed to write checkpoint {_path(r)}: disk quota exceeded on volume"],
     lambda r: f"checkpoint writer aborted: filesystem full while writing {_path(r)} ({r.randint(1, 50)} GB needed)"),
    (("Permission_Denied",),
     [lambda r: f"PermissionError: [Errno 13] Permission denied: '{_path(r)}'",
      lambda r: f"access denied for user {_user(r)} opening {_path(r)}: operation not permitted"],
     lambda r: f"open {_path(r)} failed: EACCES, user {_user(r)} lacks read permission on dataset bucket"),
    (("Network_Timeout",),
     [lambda r: f"requests.exceptions.ConnectTimeout: connection to {_ip(r)}:443 timed out after {r.randint(10, 120)}s",
      lambda r: f"socket timeout fetching shard from {_ip(r)}:9000, network unreachable"],
     lambda r: f"download of dataset shard from object store at {_ip(r)} exceeded deadline of {r.randint(30, 300)}s, network timeout"),
    (("Model_Code_Error",),
     [lambda r: f"RuntimeError: mat1 and mat2 shapes cannot be multiplied ({r.randint(2, 64)}x{r.randint(100, 999)} and {r.randint(100, 999)}x{r.randint(2, 64)})",
      lambda r: "TypeError: forward() got an unexpected keyword argument 'attention_mask' in model code"],
     lambda r: f"ValueError: Expected input batch_size ({r.randint(2, 64)}) to match target batch_size ({r.randint(65, 128)}) in model forward"),
    (("NCCL_Timeout",),
     [lambda r: f"Watchdog caught collective operation timeout: WorkNCCL(SeqNum={r.randint(100, 99999)}, OpType=ALLREDUCE) ran for {r.randint(600000, 1800000)} milliseconds",
      lambda r: f"NCCL error: unhandled system error, rank {r.randint(0, 63)} timed out in allreduce"],
     lambda r: f"collective broadcast on NCCL communicator stalled past timeout, rank {r.randint(0, 63)} aborting"),
    (("GPU_Xid_Error",),
     [lambda r: f"NVRM: Xid (PCI:0000:{r.randint(10, 99)}:00): {r.choice([79, 48, 63])}, GPU has fallen off the bus",
      lambda r: f"NVRM: Xid {r.choice([31, 43, 94])} on GPU {r.randint(0, 7)}, uncorrectable ECC error detected"],
     lambda r: f"kernel reports Xid {r.choice([45, 61, 119])} for GPU {r.randint(0, 7)} on {_node(r)}, GPU reset required"),
    (("Checkpoint_Corrupt",),
     [lambda r: f"RuntimeError: PytorchStreamReader failed reading zip archive: failed finding central directory in {_path(r)}",
      lambda r: f"checkpoint {_path(r)} is corrupt: unexpected EOF while loading state_dict"],
     lambda r: f"torch.load could not unpickle {_path(r)}: truncated checkpoint file, checksum mismatch"),
    (("Node_NotReady",),
     [lambda r: f"node {_node(r)} became NotReady during training, pod evicted",
      lambda r: f"lost contact with kubelet on {_node(r)}, training pod terminated"],
     lambda r: f"{_node(r)} went unreachable and was cordoned, training job preempted"),
    # Multi-label failures: one job, two causes.
    (("Disk_Full", "Checkpoint_Corrupt"),
     [lambda r: f"OSError: [Errno 28] No space left on device while saving {_path(r)}; checkpoint left truncated and unreadable"],
     lambda r: f"filesystem full during checkpoint save, {_path(r)} written partially and now corrupt"),
    (("Network_Timeout", "DataLoader_Stuck"),
     [lambda r: f"DataLoader worker {r.randint(0, 15)} stuck: connection to {_ip(r)}:9000 timed out while streaming shards"],
     lambda r: f"input pipeline stalled because remote shard reads from {_ip(r)} keep timing out"),
    (("CUDA_OutOfMemory", "Model_Code_Error"),
     [lambda r: f"RuntimeError: CUDA out of memory in model forward: attention mask of shape ({r.randint(64, 512)}, {r.randint(4096, 65536)}) built by mistake"],
     lambda r: f"model code materialises a dense {r.randint(4096, 65536)}x{r.randint(4096, 65536)} tensor, GPU memory exhausted"),
]

# Failures whose cause is outside the label space (no root cause): the knowledge base's territory.
# The last day's causes are new altogether, not just new words.
UNLABELLED_SEEN: list[Fill] = [
    lambda r: f"FloatingPointError: loss became nan at step {r.randint(100, 20000)}, stopping the run",
    lambda r: f"ModuleNotFoundError: No module named '{r.choice(['apex', 'flash_attn', 'deepspeed', 'bitsandbytes'])}'",
    lambda r: f"KeyError: 'optimizer.{r.choice(['betas', 'eps', 'warmup_steps'])}' missing from training config {_path(r)}",
]
UNLABELLED_HELD_BACK: list[Fill] = [
    lambda r: f"slurmstepd: error: *** JOB {r.randint(10000, 99999)} ON {_node(r)} CANCELLED DUE TO TIME LIMIT ***",
    lambda r: "exec /opt/conda/bin/python: exec format error, image built for arm64 but the node is amd64",
    lambda r: "Illegal instruction (core dumped) in libtorch_cpu.so: the CPU lacks the AVX-512 instructions the build needs",
]

# Hard variant, last day only: incidents in words that no earlier line uses (the tests check it).
ANOMALY_NOVEL: list[Template] = [
    T("kubernetes", "critical", lambda r: f"thermal trip: junction {r.randint(95, 110)} celsius, throttling engaged, shutdown imminent"),
    T("ceph", "critical", lambda r: f"PSU {r.randint(1, 4)} redundancy gone; voltage sag {r.uniform(10.5, 11.4):.2f} volts observed, chassis brownout"),
    T("nginx", "critical", lambda r: f"TLS handshake aborted: certificate expired {r.randint(1, 30)} hours ago, peer rejected"),
    T("pytorch", "critical", lambda r: f"InfiniBand link flapped {r.randint(3, 40)} times, fabric partition isolated, RDMA queue pairs destroyed"),
]
ZH_SHARE = 0.1  # Chinese lines per day, as a share of the normal lines
ZH_NORMAL: list[Fill] = [
    lambda r: f"用户 {_user(r)} 登录成功，会话 {r.randint(1000, 9999)} 已建立",
    lambda r: f"任务 {r.randint(10000, 99999)} 完成，耗时 {r.randint(1, 900)} 秒",
    lambda r: f"数据同步完成，共 {r.randint(100, 99999)} 条记录",
    lambda r: f"定时备份已开始，目标卷 vol-{r.getrandbits(32):08x}",
    lambda r: f"服务健康检查通过，延迟 {r.randint(1, 80)} 毫秒",
    lambda r: f"缓存命中率 {r.randint(60, 99)}%，节点 {_node(r)}",
]
ZH_ANOMALY_SEEN: list[Fill] = [
    lambda r: f"磁盘空间不足，写入检查点 {_path(r)} 失败",
    lambda r: f"内存溢出，进程 {r.randint(1000, 99999)} 被终止",
    lambda r: f"网络连接超时，重试 {r.randint(2, 9)} 次后失败",
]
ZH_ANOMALY_NOVEL: list[Fill] = [
    lambda r: f"显卡驱动崩溃，训练中断，节点 {_node(r)} 需要重启",
    lambda r: f"存储集群降级，{r.randint(2, 40)} 个数据副本丢失",
]
MISLABELLED_SHARE = 0.03  # lines outside training jobs on the earlier days whose anomaly flag is flipped
VARIANTS = ("default", "hard")

TRACEBACK = "Traceback (most recent call last):"


def _frame(r: random.Random) -> str:
    return f'  File "/opt/trainer/{r.choice(["train.py", "model.py", "data.py"])}", line {r.randint(10, 900)}, in {r.choice(["forward", "train_step", "main", "__next__"])}'


def _doc(ts: datetime, service: str, level: str, message: str, host: str, anomaly: bool, causes: tuple[str, ...] = (), job: str | None = None) -> dict:
    labels: dict = {"anomaly": anomaly, "root_cause": list(causes)}
    if job is not None:
        labels["job_id"] = job
    return {
        "@timestamp": ts.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "message": message,
        "service": {"name": service},
        "log": {"level": level},
        "host": {"name": host},
        "labels": labels,
    }


def _bursts(r: random.Random, day_start: datetime, fills: list[Fill], service: str, level: str) -> list[dict]:
    """Two or three incidents of one phrasing each, a few minutes long."""
    docs = []
    for _ in range(r.randint(2, 3)):
        fill, burst_start = r.choice(fills), day_start + timedelta(seconds=r.uniform(0, 86000))
        docs += [_doc(burst_start + timedelta(seconds=r.uniform(0, 600)), service, level, fill(r), _node(r), True) for _ in range(r.randint(6, 12))]
    return docs


def harden(docs: list[dict], start: datetime, days: int, per_day: int, seed: int) -> list[dict]:
    """The hard variant's lines added to (and labels flipped in) the default corpus `docs`, from a random stream of its own."""
    r = random.Random(f"hard-{seed}")
    last_day_date = (start + timedelta(days=days - 1)).date().isoformat()
    for doc in docs:  # label noise on the earlier days, outside the training jobs (the root-cause labels stay right)
        if doc["@timestamp"][:10] < last_day_date and "job_id" not in doc["labels"] and r.random() < MISLABELLED_SHARE:
            doc["labels"]["anomaly"] = not doc["labels"]["anomaly"]
    extra: list[dict] = []
    for day in range(days):
        day_start, last_day = start + timedelta(days=day), day == days - 1
        for _ in range(int(per_day * ZH_SHARE)):
            extra.append(_doc(day_start + timedelta(seconds=r.uniform(0, 86400)), r.choice(["pytorch", "ceph"]), "info",
                              r.choice(ZH_NORMAL)(r), _node(r), False))
        extra += _bursts(r, day_start, ZH_ANOMALY_NOVEL if last_day else ZH_ANOMALY_SEEN, "ceph", "error")
        if last_day:
            for t in r.sample(ANOMALY_NOVEL, 2):
                extra += _bursts(r, day_start, [t.render], t.service, t.level)
    return docs + extra


def generate_logs(start: datetime, days: int = 6, per_day: int = 1500, seed: int = 7, variant: str = "default") -> Iterator[dict]:
    """Yield the corpus in time order: normal traffic, incident bursts and failing training jobs; with
    `variant="hard"`, the hard variant's lines too (`harden`).

    Raises:
        ValueError: an unknown variant.
    """
    if variant not in VARIANTS:
        raise ValueError(f"demo corpus variant {variant!r}: expected one of {', '.join(VARIANTS)}")
    r = random.Random(seed)
    docs: list[dict] = []
    for day in range(days):
        last_day = day == days - 1
        day_start = start + timedelta(days=day)
        anomalies = ANOMALY_HELD_BACK if last_day else ANOMALY_SEEN
        for _ in range(per_day):
            ts = day_start + timedelta(seconds=r.uniform(0, 86400))
            t = r.choice(NORMAL)
            docs.append(_doc(ts, t.service, t.level, t.render(r), _node(r), False))
        # Incidents: bursts of one anomaly template, a few minutes long.
        for _ in range(r.randint(2, 3)):
            t = r.choice(anomalies)
            burst_start = day_start + timedelta(seconds=r.uniform(0, 86000))
            for _ in range(r.randint(6, 12)):
                ts = burst_start + timedelta(seconds=r.uniform(0, 600))
                docs.append(_doc(ts, t.service, t.level, t.render(r), _node(r), True))
        # Training jobs that fail: a few error lines each, with the job's root causes. Every failure kind
        # each day (fewer on small corpora), so each cause recurs across the training days.
        failing = r.sample(FAILURES, min(len(FAILURES), max(5, per_day // 100)))
        failing += [((), [f], f) for f in r.sample(UNLABELLED_HELD_BACK if last_day else UNLABELLED_SEEN, r.randint(1, 2))]
        for causes, seen, held_back in failing:
            job = f"job-{uuid.UUID(int=r.getrandbits(128)).hex[:12]}"
            host = _node(r)
            ts = day_start + timedelta(seconds=r.uniform(0, 86000))
            docs.append(_doc(ts, "pytorch", "info", f"job {job} started on {host} with {r.choice([1, 2, 4, 8])} GPUs", host, False, job=job))
            # The stack trace is one multi-line document, as a multiline codec ships it to ELK; the error is its own line.
            lines = ["\n".join([TRACEBACK, _frame(r)]), (held_back if last_day else r.choice(seen))(r)]
            if r.random() < 0.3:
                lines.append((held_back if last_day else r.choice(seen))(r))
            lines.append(f"job {job} failed with exit code {r.choice([1, 134, 137, 139])}")
            for i, line in enumerate(lines):
                docs.append(_doc(ts + timedelta(seconds=30 + i * 0.2), "pytorch", "error", line, host, True, causes, job))
    if variant == "hard":
        docs = harden(docs, start, days, per_day, seed)
    docs.sort(key=lambda d: d["@timestamp"])
    yield from docs


DEMO_START = datetime(2026, 11, 16, tzinfo=timezone.utc)
DEMO_DAYS = 6


def write_demo_logs(out_dir: Path, start: datetime = DEMO_START, days: int = DEMO_DAYS, per_day: int = 1500, seed: int = 7,
                    variant: str = "default") -> Path:
    """Write `out_dir/logs.ndjson` (`generate_logs`'s `variant`), atomically; return its path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / "logs.ndjson"
    tmp = path.with_suffix(".ndjson.tmp")
    with tmp.open("w") as fh:
        for doc in generate_logs(start, days, per_day, seed, variant):
            fh.write(json.dumps(doc) + "\n")
    tmp.replace(path)
    return path
