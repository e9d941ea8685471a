"""Concurrent texts for one BERT model share a forward pass.

Whatever queued while the previous pass ran goes into the next (up to `serve.max_batch` texts, waiting at most
`serve.max_wait_ms` for more); every pass runs on one worker thread, so torch never competes with itself for the
cores. The version serving when a pass starts answers every text in it.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from serving.champions import Champions, Slot


class Batcher:
    """Queue texts for one BERT model; one forward pass answers every request queued together."""

    def __init__(self, name: str, champions: Champions, executor: ThreadPoolExecutor, max_batch: int, max_wait: float,
                 observe_batch):
        self.name, self.champions, self.executor = name, champions, executor
        self.max_batch, self.max_wait, self.observe_batch = max_batch, max_wait, observe_batch
        self.queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None

    async def probabilities(self, texts: list[str], context: dict[str, list[Any]] | None = None) -> tuple[Slot, np.ndarray]:
        """(the slot that answered, sigmoid outputs (len(texts), K)). `context`: per-row values of context columns
        (`level`, ...), read by a version that was trained with them.

        Raises:
            NoChampion: nothing is served for this model.
        """
        if self.queue is None:
            self.queue = asyncio.Queue()
            self._task = asyncio.create_task(self._work())
        future = asyncio.get_running_loop().create_future()
        await self.queue.put((texts, context or {}, future))
        return await future

    async def _work(self) -> None:
        from nightshift_models.text_classifier import context_fields

        loop = asyncio.get_running_loop()
        queue = self.queue
        assert queue is not None  # probabilities() creates it before it starts this task
        while True:
            batch = [await queue.get()]
            size = len(batch[0][0])
            deadline = loop.time() + self.max_wait
            while size < self.max_batch:
                try:
                    item = queue.get_nowait() if queue.qsize() else await asyncio.wait_for(
                        queue.get(), max(0.0, deadline - loop.time()))
                except (asyncio.TimeoutError, asyncio.QueueEmpty):
                    break
                batch.append(item)
                size += len(item[0])
            texts = [t for item_texts, _, _ in batch for t in item_texts]
            try:
                slot = self.champions.get(self.name)  # the version serving now answers the whole batch
                fields = context_fields(slot.model)
                context = {f: [v for item_texts, item_context, _ in batch for v in item_context.get(f) or [None] * len(item_texts)]
                           for f in fields}
                probs = await loop.run_in_executor(self.executor, slot.model.probabilities, texts, self.max_batch,
                                                   *((context,) if fields else ()))
            except Exception as exc:
                for _, _, future in batch:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.observe_batch(slot, len(texts))
            start = 0
            for item_texts, _, future in batch:
                if not future.done():
                    future.set_result((slot, probs[start:start + len(item_texts)]))
                start += len(item_texts)

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
