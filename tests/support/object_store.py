"""A real S3 object store for the tests and benchmarks: SeaweedFS (`weed server -s3`) started by
infra/scripts/start_seaweedfs.sh on free loopback ports, with its data in its own temporary folder and one static
identity (requests need the access key and secret).

    with ObjectStore() as store:
        monkeypatch.setenv("NIGHTSHIFT_STORAGE", store.uri("night-1"))
        for key, value in store.env().items(): monkeypatch.setenv(key, value)
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
START_SCRIPT = ROOT / "infra" / "scripts" / "start_seaweedfs.sh"


class ObjectStore:
    """One SeaweedFS server and its bucket (created). `stop()` stops it and removes its data."""

    def __init__(self, bucket: str = "nightshift"):
        self.bucket = bucket
        self.dir = Path(tempfile.mkdtemp(prefix="nightshift-seaweedfs-"))
        self._env: dict[str, str] = {}

    def start(self) -> "ObjectStore":
        cmd = ["bash", str(START_SCRIPT), "--dir", str(self.dir), "--bucket", self.bucket]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=180)
        if done.returncode != 0:
            shutil.rmtree(self.dir, ignore_errors=True)
            raise RuntimeError(f"SeaweedFS did not start:\n{done.stderr[-3000:]}")
        self._env = dict(line.split("=", 1) for line in (self.dir / "store.env").read_text().splitlines() if "=" in line)
        return self

    def __enter__(self) -> "ObjectStore":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def endpoint_url(self) -> str:
        return self._env["AWS_ENDPOINT_URL"]

    @property
    def access_key(self) -> str:
        return self._env["AWS_ACCESS_KEY_ID"]

    @property
    def secret_key(self) -> str:
        return self._env["AWS_SECRET_ACCESS_KEY"]

    def uri(self, prefix: str = "") -> str:
        """s3://bucket/prefix; an empty prefix gives a fresh unique one, so that tests sharing the store never meet."""
        return f"s3://{self.bucket}/{(prefix or uuid.uuid4().hex[:12]).strip('/')}"

    def env(self) -> dict[str, str]:
        """The standard variables that s3fs/botocore and MLflow read to reach this store."""
        keys = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_ENDPOINT_URL", "AWS_DEFAULT_REGION", "MLFLOW_S3_ENDPOINT_URL")
        return {key: self._env[key] for key in keys}

    def filesystem(self):
        """An s3fs filesystem on this store (for tests that look at the objects themselves)."""
        import s3fs

        return s3fs.S3FileSystem(
            key=self.access_key, secret=self.secret_key, endpoint_url=self.endpoint_url, client_kwargs={"region_name": "us-east-1"}
        )

    def stop(self) -> None:
        if self._env:
            subprocess.run(["bash", str(START_SCRIPT), "--stop", str(self.dir)], capture_output=True, timeout=60)
            self._env = {}
        shutil.rmtree(self.dir, ignore_errors=True)
