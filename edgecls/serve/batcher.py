"""Micro-batching: requests that arrive while the model is busy are run together in one call.

One model thread owns every forward pass (the model is shared safely and never runs twice at
once); the event loop only queues arrays and hands back result rows. There is no added wait:
a lone request runs at once as a batch of one, and under load each forward pass takes
whatever queued up during the previous one (at most `max_batch`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np


class MicroBatcher:
    def __init__(self, predict: Callable[[np.ndarray], np.ndarray], max_batch: int = 32):
        self._predict = predict
        self.max_batch = max(1, int(max_batch))
        self._queue: asyncio.Queue | None = None
        self._task: asyncio.Task | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="edgecls-model")
        self.batches = 0
        self.images = 0

    async def start(self) -> None:
        self._queue = asyncio.Queue()
        self._task = asyncio.create_task(self._loop(), name="edgecls-batcher")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self._executor.shutdown(wait=True)

    @property
    def pending(self) -> int:
        return self._queue.qsize() if self._queue is not None else 0

    async def predict(self, arrays: list[np.ndarray]) -> list[np.ndarray]:
        """Probability rows for preprocessed 3xHxW arrays, in order."""
        if self._queue is None:
            raise RuntimeError("MicroBatcher.start() was not called")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in arrays]
        for array, future in zip(arrays, futures):
            self._queue.put_nowait((array, future))
        return list(await asyncio.gather(*futures))

    async def _loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self._queue.get()]
            while len(items) < self.max_batch and not self._queue.empty():
                items.append(self._queue.get_nowait())
            items = [(a, f) for a, f in items if not f.cancelled()]  # clients that gave up
            if not items:
                continue
            batch = np.stack([array for array, _ in items])
            try:
                probs = await loop.run_in_executor(self._executor, self._predict, batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug in the model path: fail these requests, keep serving
                for _, future in items:
                    if not future.done():
                        future.set_exception(exc)
                continue
            self.batches += 1
            self.images += len(items)
            for row, (_, future) in zip(probs, items):
                if not future.done():
                    future.set_result(row)
