"""The storage root: where the nightly tasks leave what the next task reads, on whichever machine it runs.

Setting `storage` (`NIGHTSHIFT_STORAGE`) names it: a local folder (empty: `NIGHTSHIFT_HOME`) or an object-store URI such
as `s3://bucket/prefix`. Under it: `snapshots/` (with each snapshot's validation report beside it), `scored/`, `runs/`
(the night's summary, validation verdicts and report). Tasks hand each other locations as strings (`uri`): a plain
path for a local root, `s3://…` otherwise; `path` turns one back into a path object.

Everything goes through fsspec (s3fs for `s3://`) behind `universal_pathlib`'s pathlib interface: a local location is a
plain `pathlib.Path`, a remote one a `UPath` with the same methods (`/`, `exists`, `read_text`, `glob`, …). The
object store's endpoint and credentials come from the standard AWS variables (`AWS_ENDPOINT_URL`,
`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`, `AWS_DEFAULT_REGION`), which botocore reads; nothing here prints them.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator, TypeAlias, Union

from upath import UPath

if TYPE_CHECKING:
    # A UPath has Path's interface (`/`, `exists`, `read_text`, `glob`, `open`, …): typed as Path, so that the code
    # that takes a snapshot folder reads the same for both
    StoragePath: TypeAlias = Path
else:
    StoragePath = Union[Path, UPath]  # a local Path, or a UPath on an object store
LOCAL_PROTOCOLS = ("", "file", "local")


def path(location: str | os.PathLike) -> StoragePath:
    """The path object of a location: `/a/b` or `file:///a/b` -> `Path`; `s3://bucket/key` (any fsspec URI) -> `UPath`."""
    if isinstance(location, (Path, UPath)):
        return location
    text = os.fspath(location)
    if text.startswith("file://"):
        return Path(text[len("file://"):])
    if "://" not in text:
        return Path(text)
    protocol = text.split("://", 1)[0]
    return UPath(text, **_options(protocol))


def _options(protocol: str) -> dict[str, Any]:
    # s3fs caches one filesystem per set of arguments: naming the endpoint keeps two stores (two tests) apart. No
    # listings cache: other workers write under the root, and a cached listing would hide their snapshots.
    if protocol in ("s3", "s3a"):
        endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        return {"use_listings_cache": False, **({"endpoint_url": endpoint} if endpoint else {})}
    return {}


def is_remote(p: StoragePath) -> bool:
    """Whether `p` lies on an object store (not the local disk)."""
    return isinstance(p, UPath) and p.protocol not in LOCAL_PROTOCOLS


def uri(p: StoragePath) -> str:
    """The string a task hands the next one, and a lineage tag holds: a plain path for a local location, `s3://…` otherwise."""
    return str(p)


def arrow(p: StoragePath) -> tuple[str, Any]:
    """`(path, filesystem)` for pyarrow (`pq.read_table(path, filesystem=fs)`): None for the local disk, else the fsspec
    filesystem, which pyarrow wraps."""
    if is_remote(p):
        assert isinstance(p, UPath)
        return p.path, p.fs
    return str(p), None


def write_text(p: StoragePath, text: str) -> None:
    """Write a whole file, all or nothing: locally a temp file renamed into place; on an object store one PUT, which
    readers see whole or not at all."""
    if is_remote(p):
        p.write_text(text)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, p)
    finally:
        tmp.unlink(missing_ok=True)


def upload(local: Path, p: StoragePath) -> None:
    """Copy a finished local file to `p` (a plain rename when `p` is local too)."""
    if is_remote(p):
        assert isinstance(p, UPath)
        p.fs.put_file(str(local), p.path)
        return
    p.parent.mkdir(parents=True, exist_ok=True)
    os.replace(local, p)


def copy(src: StoragePath, dest: StoragePath) -> None:
    """Copy one file within the same store (server-side on an object store)."""
    if is_remote(src):
        assert isinstance(src, UPath) and isinstance(dest, UPath)
        src.fs.copy(src.path, dest.path)
        return
    shutil.copyfile(src, dest)


def remove_tree(p: StoragePath) -> None:
    """Remove a folder (a prefix) and everything under it; nothing when it is absent."""
    if is_remote(p):
        assert isinstance(p, UPath)
        try:
            p.fs.rm(p.path, recursive=True)
        except FileNotFoundError:
            pass
        if p.protocol in ("s3", "s3a"):  # SeaweedFS lists an emptied folder until its own `key/` entry goes too
            bucket, _, key = p.path.partition("/")
            p.fs.call_s3("delete_object", Bucket=bucket, Key=key.rstrip("/") + "/")
        p.fs.invalidate_cache(p.path)
        return
    shutil.rmtree(p, ignore_errors=True)


def makedirs(p: StoragePath) -> None:
    """Create a local folder and its parents (an object store has no folders: nothing to do)."""
    if not is_remote(p):
        p.mkdir(parents=True, exist_ok=True)


@contextmanager
def local_copy(p: StoragePath) -> Iterator[Path]:
    """A local folder holding what is under `p` (for tools that read local files only: MLflow's `log_artifacts`):
    `p` itself when local, else a temporary download, removed afterwards."""
    if not is_remote(p):
        yield Path(p)
        return
    assert isinstance(p, UPath)
    with tempfile.TemporaryDirectory(prefix="nightshift-") as tmp:
        for key in p.fs.find(p.path):
            local = Path(tmp, key[len(p.path):].lstrip("/"))
            local.parent.mkdir(parents=True, exist_ok=True)
            p.fs.get_file(key, str(local))
        yield Path(tmp)
