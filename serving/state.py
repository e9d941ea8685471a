"""What the routes share, one `Server` per app on `app.state.server`: the settings, the champions, the
batchers, the one worker thread for model code, and the metrics; with the steps the scoring routes take (count
and time the request, bound its rows, score texts with a BERT model in a shared pass: log-anomaly's and
failure-rca's routes, the PyTorch_pro demos' included).

A route gets it through the FastAPI dependency `CurrentServer`.
"""

from __future__ import annotations

import asyncio
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from fastapi import Depends, HTTPException, Request

from pipelines.config import Settings
from serving.batching import Batcher
from serving.champions import Champions, NoChampion, Slot
from serving.metrics import ServerMetrics
from serving.schemas import unprocessable


@dataclass
class Server:
    """What the routes share: settings, champions, batchers, the worker thread and the metrics."""

    settings: Settings
    champions: Champions
    metrics: ServerMetrics
    executor: ThreadPoolExecutor
    batchers: dict[str, Batcher]

    async def run(self, fn, *args):
        """Run blocking model code on the worker thread."""
        return await asyncio.get_running_loop().run_in_executor(self.executor, fn, *args)

    @asynccontextmanager
    async def observe(self, route: str, model: str):
        """Count and time one request; the handler sets `seen["version"]` once it knows which version answers."""
        seen = {"version": "none", "status": "200"}
        started = time.perf_counter()
        try:
            yield seen
        except HTTPException as exc:
            seen["status"] = str(exc.status_code)
            raise
        except NoChampion as exc:
            seen["status"] = "503"
            raise HTTPException(503, detail=str(exc)) from None
        except Exception:
            seen["status"] = "500"
            raise
        finally:
            self.metrics.requests.labels(route, model, seen["version"], seen["status"]).inc()
            self.metrics.latency.labels(route, model, seen["version"]).observe(time.perf_counter() - started)

    def check_rows(self, what: str, count: int) -> None:
        if count > self.settings.serve.max_rows:
            raise HTTPException(413, detail=f"{what}: {count} rows, more than the {self.settings.serve.max_rows} "
                                            "accepted per request (setting serve.max_rows)")

    async def classify(self, name: str, values: list[Any], field_name: str,
                       context: dict[str, list[Any]] | None = None) -> tuple[Slot, list[str | None], np.ndarray, list[int]]:
        """Score the readable rows of `values` with `name`'s champion in a shared forward pass; `context`: per-row
        values of context columns (one per row of `values`).

        Returns (slot, per-row problem or None, probabilities of the readable rows, their positions).
        """
        from nightshift_models.text_classifier import text_problem

        self.check_rows(field_name, len(values))
        self.champions.get(name)  # 503 before any work when there is no champion
        for column, given in (context or {}).items():
            if len(given) != len(values):
                raise unprocessable([column], f"{len(given)} values for {len(values)} rows of '{field_name}'")
        problems = [text_problem(v, self.settings.serve.max_text_chars) for v in values]
        if field_name == "texts":  # many rows: each error names its row
            problems = [f"'texts[{i}]' {p}" if p else None for i, p in enumerate(problems)]
        good = [i for i, p in enumerate(problems) if p is None]
        if not good:
            slot = self.champions.get(name)
            return slot, problems, np.zeros((0, 1), dtype=np.float32), good
        slot, probs = await self.batchers[name].probabilities([values[i] for i in good],
                                                              {c: [given[i] for i in good] for c, given in (context or {}).items()})
        return slot, problems, probs, good



def current_server(request: Request) -> Server:
    """The app's `Server` (a FastAPI dependency)."""
    return request.app.state.server


CurrentServer = Annotated[Server, Depends(current_server)]
