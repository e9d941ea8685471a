"""The seed project's four files (PyTorch_pro: log-anomaly-demo, train-failure-rca-demo, metric-predict-demo),
small copies in their own layout, brought in with the ingest commands and trained on, as on a fresh clone."""

import json

import numpy as np
import pytest

SEED_FILES = {
    "log-anomaly-demo/data/train.txt": (
        "0\t2025-09-10 12:30:01 INFO User login success uid=123\n"
        "0\t2025-09-10 12:30:05 INFO Nginx request 200 OK\n"
        "0\t2025-09-10 12:31:00 INFO Pod started successfully\n"
        "1\t2025-09-10 12:30:10 ERROR Failed to allocate GPU memory\n"
        "1\t2025-09-10 12:31:05 WARN Disk IO timeout node=172.20.191.185\n"
        "1\t2025-09-10 12:32:00 CRITICAL Nginx worker crashed with exit code 137\n"),
    "log-anomaly-demo/data/val.txt": (
        "0\t2025-09-11 13:00:00 INFO Health check passed latency=12ms\n"
        "1\t2025-09-11 13:05:00 ERROR OOMKilled: container exited with code 137\n"),
    "train-failure-rca-demo/data/train.tsv": (
        "CUDA_OutOfMemory,OOM\t2025-09-10 12:30:10 ERROR RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB\n"
        "CUDA_Driver_Mismatch\t2025-09-10 12:31:00 ERROR CUDA driver version is insufficient for CUDA runtime version\n"
        "DataLoader_Stuck\t2025-09-10 12:31:30 WARN DataLoader worker (pid 1234) is killed by signal: 9\n"
        "Disk_Full\t2025-09-10 12:32:00 ERROR No space left on device when writing checkpoints\n"
        "Permission_Denied\t2025-09-10 12:33:00 ERROR PermissionError: [Errno 13] Permission denied: '/data/train'\n"
        "Network_Timeout\t2025-09-10 12:34:00 ERROR ReadTimeout connecting to S3 endpoint s3://bucket/dataset\n"
        "Model_Code_Error\t2025-09-10 12:35:00 ERROR ValueError: dimension mismatch in forward()\n"),
    "train-failure-rca-demo/data/val.tsv": (
        "CUDA_OutOfMemory\t2025-09-11 13:05:00 ERROR CUDA out of memory during backward()\n"
        "Model_Code_Error\t2025-09-11 13:06:00 ERROR AssertionError: invalid tensor size in loss()\n"),
    "train-failure-rca-demo/labels.json": json.dumps({
        "labels": ["OOM", "CUDA_Driver_Mismatch", "CUDA_OutOfMemory", "DataLoader_Stuck", "Disk_Full", "Permission_Denied",
                   "Network_Timeout", "Model_Code_Error"],
        "actions": {"OOM": "Increase memory / reduce batch size / enable gradient checkpointing",
                    "CUDA_Driver_Mismatch": "Align driver and CUDA toolkit versions; verify nvidia-smi vs torch.cuda details",
                    "CUDA_OutOfMemory": "Reduce batch size / use mixed precision / accumulate gradients",
                    "DataLoader_Stuck": "Check num_workers, deadlocks, dataset __getitem__, and worker timeouts",
                    "Disk_Full": "Clean cache/checkpoints; expand persistent volume; rotate logs",
                    "Permission_Denied": "Fix file/directory permissions; check container security context",
                    "Network_Timeout": "Validate data source endpoints; increase timeouts; add retries",
                    "Model_Code_Error": "Run unit tests; enable anomaly detection; inspect stacktrace"}}, indent=2),
}


def seed_metrics_csv(points: int = 300) -> str:
    """What the seed's metric-predict-demo/train.py writes when it has no metrics.csv: a sample counter
    as `timestamp`, a trending, seasonal, noisy `value` (pandas `to_csv(index=False)`)."""
    x = np.linspace(0, 60, points, dtype=np.float32)
    y = 0.02 * x + np.sin(0.6 * x) + 0.5 * np.sin(0.05 * x) + np.random.default_rng(42).normal(0.0, 0.1, size=points)
    return "timestamp,value\n" + "".join(f"{i},{v:.6f}\n" for i, v in enumerate(y.astype(np.float32)))


@pytest.mark.slow  # trains all three models: `make test-fast` leaves it out
def test_the_seed_files_come_in_and_train_all_three_models(home, tiny_bert, tmp_path, monkeypatch, capsys):
    from nightshift.cli import main

    seed = tmp_path / "PyTorch_pro"
    for name, text in {**SEED_FILES, "metric-predict-demo/data/metrics.csv": seed_metrics_csv()}.items():
        (seed / name).parent.mkdir(parents=True, exist_ok=True)
        (seed / name).write_text(text)

    def run(*argv: str) -> dict:
        assert main([*argv, "--json"]) == 0, capsys.readouterr().err
        return json.loads(capsys.readouterr().out.splitlines()[-1])

    # log anomalies: both seed files, detected as label<TAB>text, the whole span
    logs = run("ingest", "logs", "--source", f"file://{seed}/log-anomaly-demo/data/*.txt", "--out", str(tmp_path / "snap-logs"))
    assert logs["rows"] == 8 and logs["window"] == {"start": "2025-09-10T12:30:01Z", "end": "2025-09-11T13:05:00.001Z"}
    anomaly = run("train", "log-anomaly", "--snapshot", str(tmp_path / "snap-logs"), "--base-model", str(tiny_bert))
    assert (anomaly["model"], anomaly["version"], anomaly["decision"]) == ("log-anomaly", "1", "promoted")

    # root causes: the seed's label file is the label space, its TSVs one failed job per line
    monkeypatch.setenv("NIGHTSHIFT_RCA_LABEL_SPACE", str(seed / "train-failure-rca-demo/labels.json"))
    monkeypatch.setenv("NIGHTSHIFT_RCA_EPOCHS", "2")
    jobs = run("ingest", "logs", "--source", f"file://{seed}/train-failure-rca-demo/data", "--out", str(tmp_path / "snap-rca"))
    assert jobs["rows"] == 9
    rca = run("train", "failure-rca", "--snapshot", str(tmp_path / "snap-rca"), "--base-model", str(tiny_bert))
    assert (rca["model"], rca["version"], rca["decision"]) == ("failure-rca", "1", "promoted")
    assert set(rca["thresholds"]) == set(json.loads(SEED_FILES["train-failure-rca-demo/labels.json"])["labels"])

    # metrics: timestamp,value with a sample counter (epoch seconds from 1970), one sample a second
    for name, value in {"LOOKBACK": "24", "HORIZON": "4"}.items():
        monkeypatch.setenv(f"NIGHTSHIFT_FORECAST_{name}", value)
    metrics = run("ingest", "metrics", "--source", f"file://{seed}/metric-predict-demo/data/metrics.csv", "--step", "1s",
                  "--out", str(tmp_path / "snap-metrics"))
    assert (metrics["series"], metrics["rows"]) == (1, 300)
    forecast = run("train", "metric-forecast", "--snapshot", str(tmp_path / "snap-metrics"))
    assert (forecast["model"], forecast["version"], forecast["decision"]) == ("metric-forecast", "1", "promoted")
