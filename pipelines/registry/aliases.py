"""Moving aliases safely: the promotion lock, the compare-and-set that moves `champion`,
`mark_challenger`, which every training run calls on its new version, and `retire_challenger`, which the
gate calls once it has decided (`challenger` means "waiting for the gate").

The lock is a file lock beside a local SQLite store, and for a remote tracking server a registered
model created as a mutex with an owner token (the registry refuses a second one with the same name,
atomically); see `promotion_lock` for how a holder releases it and how a waiter breaks an abandoned one.
"""

from __future__ import annotations

import fcntl
import os
import random
import socket
import time
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from pipelines.config import ConfigError, PromotionSettings
from pipelines.errors import PromotionError
from pipelines.registry.store import CHALLENGER, CHAMPION, PREVIOUS, ModelRef, alias_version, hidden_model, set_version_tags
from pipelines.registry.version_page import write_version_page
from pipelines.telemetry import get_logger

log = get_logger("promotion")


# ---- compare-and-set -------------------------------------------------------------------------

def _local_lock_dir(tracking_uri: str) -> Path | None:
    if tracking_uri.startswith("sqlite:///"):
        return Path(tracking_uri.removeprefix("sqlite:///")).parent / "locks"
    if tracking_uri.startswith("file:") or "://" not in tracking_uri:
        return Path(tracking_uri.removeprefix("file://")) / "locks"
    return None


class LockLost(PromotionError):
    """The holder ran past its lease: a waiter may have broken the lock, so nothing more is written."""


class Lease:
    """What a holder of the promotion lock knows: its owner token and how long it has held the lock.

    `check()` before each write inside the lock: a waiter breaks a lock only after seeing the same
    owner for a whole lease on its own clock, so a holder that is still inside `lease - margin` of
    its own clock is still the only holder.
    """

    def __init__(self, owner: str, lease: float | None):
        self.owner, self.lease, self.acquired = owner, lease, time.monotonic()
        # the margin covers a waiter's poll interval and one registry round trip
        self.margin = 0.0 if lease is None else min(10.0, lease / 4)

    @property
    def held(self) -> float:
        return time.monotonic() - self.acquired

    def alive(self) -> bool:
        return self.lease is None or self.held < self.lease - self.margin

    def check(self) -> None:
        """Raises `LockLost` when the lease has run out."""
        if not self.alive():
            raise LockLost(f"promotion lock held {self.held:.1f}s, past its lease of {self.lease}s less a margin of "
                           f"{self.margin:.1f}s (setting promotion.lock_lease): another gate may hold it now; nothing written")


def _mlflow_code(exc: Exception) -> str | None:
    return getattr(exc, "error_code", None)


def _owner_of(client, model: str) -> str | None:
    """The owner token on a registry mutex, or None when there is none (released meanwhile)."""
    from mlflow.exceptions import MlflowException

    try:
        return client.get_registered_model(model).tags.get("owner", "")
    except MlflowException as exc:
        if _mlflow_code(exc) == "RESOURCE_DOES_NOT_EXIST" or hidden_model(client, model, exc):
            return None
        raise


def _try_create(client, model: str, owner: str, description: str) -> bool:
    """Create the registered model `model` owned by `owner` (name and tag in one transaction); False when it exists."""
    from mlflow.exceptions import MlflowException

    try:
        client.create_registered_model(model, tags={"owner": owner, "host": socket.gethostname(), "pid": str(os.getpid())},
                                       description=description)
        return True
    except MlflowException as exc:
        if _mlflow_code(exc) in ("RESOURCE_ALREADY_EXISTS", "RESOURCE_DOES_NOT_EXIST"):
            return False  # exists; or raced a delete inside the server: look again
        raise


def _delete_if_owner(client, model: str, owner: str) -> bool:
    """Delete the registered model `model` when `owner` still owns it; True when deleted."""
    from mlflow.exceptions import MlflowException

    if _owner_of(client, model) != owner:
        return False
    try:
        client.delete_registered_model(model)
        return True
    except MlflowException as exc:
        if _mlflow_code(exc) == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise


def _break_abandoned(client, mutex: str, owner: str) -> bool:
    """Delete `mutex` held by `owner`, whom the caller has seen hold it for a whole lease.

    Of several waiters breaking the same lease only one may delete, or the second would delete the
    mutex the first has just created. A marker `MUTEX.break-OWNER`, created atomically, picks that
    one; it re-reads the owner before deleting. Returns True when this waiter broke it.
    """
    marker, me = f"{mutex}.break-{owner}", uuid.uuid4().hex
    if not _try_create(client, marker, me, f"a waiter is breaking the abandoned lock of {owner}"):
        return False
    try:
        broken = _delete_if_owner(client, mutex, owner)
    finally:
        # safe after the delete: a later breaker of `owner` re-reads the mutex and finds a new owner
        _delete_if_owner(client, marker, me)
    if broken:
        log.warning("broke an abandoned promotion lock", extra={"lock": mutex, "owner": owner})
    return broken


@contextmanager
def promotion_lock(client, name: str, timeout: float | None = None, lease: float | None = None) -> Iterator[Lease]:
    """Exclusive across processes for one registered model; yields the holder's `Lease`.

    A local store: `fcntl.flock` on `locks/NAME.lock` beside it (released by the OS if the process
    dies, so no lease). A tracking server: the registered model `NAME.promotion-lock`, created with
    an owner token (the registry's unique name makes the create atomic). The holder deletes it only
    while it still names its own token and its lease has not run out; a waiter that sees the same
    owner for a whole lease (on its own clock) breaks it through `_break_abandoned`.

    Raises:
        PromotionError: the lock is still held after `timeout` seconds.
        ConfigError: `timeout` is not longer than `lease` (a waiter would give up before it may break an abandoned lock).
    """
    defaults = PromotionSettings()
    timeout = defaults.lock_timeout if timeout is None else timeout
    lease = defaults.lock_lease if lease is None else lease
    deadline = time.monotonic() + timeout
    where = _local_lock_dir(client.tracking_uri)
    if where is not None:
        where.mkdir(parents=True, exist_ok=True)
        with open(where / f"{name}.lock", "w") as fh:
            while True:
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise PromotionError(f"promotion lock {where / (name + '.lock')} still held after {timeout}s "
                                             "(setting promotion.lock_timeout)") from None
                    time.sleep(0.05)
            try:
                yield Lease(uuid.uuid4().hex, None)
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)
        return

    if timeout <= lease:
        raise ConfigError(f"setting promotion.lock_timeout ({timeout}s) must be longer than promotion.lock_lease ({lease}s): "
                          "a gate retried after a crash would give up before the crashed gate's lock may be broken")
    mutex, me = f"{name}.promotion-lock", uuid.uuid4().hex
    seen: tuple[str | None, float] | None = None  # (owner, since when on this clock)
    while not _try_create(client, mutex, me, f"held while nightshift moves the champion of {name}"):
        owner = _owner_of(client, mutex)
        now = time.monotonic()
        if owner is None and now <= deadline:  # released meanwhile: create again at once
            seen = None
            continue
        if seen is None or seen[0] != owner:
            seen = (owner, now)
        elif now - seen[1] >= lease and owner is not None and _break_abandoned(client, mutex, owner):
            seen = None
            continue
        if now > deadline:
            raise PromotionError(f"registered model {mutex!r} (the promotion lock) still held by {owner} after {timeout}s "
                                 "(setting promotion.lock_timeout)")
        time.sleep(0.1 + random.random() * 0.1)  # jitter: waiters do not hit the registry in step
    held = Lease(me, lease)
    try:
        yield held
    finally:
        if held.alive():
            _delete_if_owner(client, mutex, me)
        else:  # a waiter may be breaking it right now; deleting could remove the next holder's mutex
            log.warning("promotion lock held past its lease; left for a waiter to break", extra={"lock": mutex, "held_s": round(held.held, 1)})


def compare_and_set_champion(client, name: str, expected: str | None, new: str, *, on_commit: Callable[[], None] | None = None,
                             timeout: float | None = None, lease: float | None = None) -> tuple[bool, str | None]:
    """Move `champion` to `new` only if it still is `expected` (None: no champion yet); the replaced
    champion becomes `previous`. Returns (moved, the champion now). `on_commit` runs under the lock,
    after the alias moved.

    Raises:
        LockLost: the lock's lease ran out before a write (nothing more is written).
        PromotionError: the lock could not be had within `timeout`.
    """
    with promotion_lock(client, name, timeout, lease) as held:
        current = alias_version(client, name, CHAMPION)
        if current != expected:
            return False, current
        held.check()
        if expected is not None and expected != new:
            client.set_registered_model_alias(name, PREVIOUS, expected)
        client.set_registered_model_alias(name, CHAMPION, new)
        if on_commit:
            held.check()
            on_commit()
        return True, new


FIRST_VERSION = "first version: no champion yet"  # `promotion.reason` of a version that became champion unopposed


def retire_challenger(client, ref: ModelRef) -> bool:
    """Remove the alias `challenger` when it points at `ref` (the gate has decided on it); True when removed.

    Call it under `promotion_lock`: `mark_challenger` moves the alias under the same lock, so a newer
    candidate's alias is never the one removed.
    """
    if alias_version(client, ref.name, CHALLENGER) != ref.version:
        return False
    client.delete_registered_model_alias(ref.name, CHALLENGER)
    return True


def mark_challenger(client, ref: ModelRef) -> str:
    """Make the new version `champion` when there is none yet, else alias it `challenger` ("waiting for the gate").

    A first version is champion at once (compare-and-set: of two first versions registered at once only one wins;
    the other waits as `challenger`) and never carries `challenger`. The version is tagged `promotion.decision`
    (`promoted` or `pending`) and `promotion.reason`, and its page describes it
    (`pipelines.registry.version_page`). The full gate (drift, fresh-holdout comparison) lives in
    `pipelines.registry.gate`; it also judges a first version on the holdout (`judge_first_version`).
    Returns "promoted" or "pending".

    Raises:
        PromotionError: the promotion lock could not be had in time (`LockLost`: its lease ran out).
        StoreUnreachable: the registry did not answer.
    """
    first = {"promotion.decision": "promoted", "promotion.reason": FIRST_VERSION}
    record: dict[str, Any] = {"model": ref.name, "challenger": ref.version, "champion": None}
    # Compare-and-set: of two first versions registered at once, only one becomes champion.
    if alias_version(client, ref.name, CHAMPION) is None and compare_and_set_champion(
            client, ref.name, None, ref.version, on_commit=lambda: set_version_tags(client, ref, first))[0]:
        log.info("first champion", extra={"model": ref.name, "version": ref.version})
        write_version_page(client, ref, {**record, "decision": "promoted", "champion_now": ref.version,
                                         "reasons": [FIRST_VERSION, "the gate judges it on the night's fresh holdout, for the record"]})
        return "promoted"
    with promotion_lock(client, ref.name) as held:  # the gate removes `challenger` under this lock (`retire_challenger`)
        held.check()
        client.set_registered_model_alias(ref.name, CHALLENGER, ref.version)
        set_version_tags(client, ref, {"promotion.decision": "pending", "promotion.reason": "awaiting the promotion gate"})
    write_version_page(client, ref, {**record, "decision": "pending", "champion": alias_version(client, ref.name, CHAMPION),
                                     "reasons": ["awaiting the promotion gate: it judges this version against the champion on the "
                                                 "night's fresh holdout"]})
    return "pending"
