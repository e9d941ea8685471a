"""A rollback and a manual promote that reach the promotion lock at the same moment (the unit test on SQLite and
the integration test on an MLflow server share it)."""

from __future__ import annotations

import threading
from typing import Callable


def race_rollback_against_promote(monkeypatch, rollback: Callable[[], dict], promote: Callable[[], tuple],
                                  timeout: float = 60.0) -> tuple[dict, tuple]:
    """Run `rollback()` here and `promote()` in a thread, the rollback's `gate.promotion_lock` taken only once both
    are ready; returns (the rollback's result, the promote's `compare_and_set_champion` result)."""
    import pipelines.registry.gate as gate

    both = threading.Barrier(2, timeout=timeout)
    lock = gate.promotion_lock

    def promotion_lock(*args, **kwargs):  # the rollback's lock: taken once both are ready
        both.wait()
        return lock(*args, **kwargs)

    monkeypatch.setattr(gate, "promotion_lock", promotion_lock)
    results: dict = {}

    def promote_by_hand():
        both.wait()
        results["promote"] = promote()

    thread = threading.Thread(target=promote_by_hand)
    thread.start()
    rolled = rollback()
    thread.join(timeout)
    return rolled, results["promote"]
