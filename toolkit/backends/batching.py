"""Concurrent ``agenerate`` calls gathered into ``generate_batch`` calls (:class:`Batcher`)."""

from __future__ import annotations

import asyncio
from typing import Any

from toolkit.backends.generation import GenerationConfig, Prompt


class Batcher:
    """Collects concurrent :meth:`Loaded.agenerate` calls on one event loop into batches. While a batch
    runs, new requests queue and form the next one, so a busy model keeps batching."""

    def __init__(self, model: Any, loop: asyncio.AbstractEventLoop) -> None:
        self.model = model  # a toolkit.backends.base.Loaded (not imported: base imports this module)
        self.loop = loop
        self.pending: list[tuple[Prompt, GenerationConfig, asyncio.Future]] = []
        self.running = False

    def submit(self, prompt: Prompt, config: GenerationConfig) -> asyncio.Future:
        future = self.loop.create_future()
        self.pending.append((prompt, config, future))
        if not self.running:
            self.running = True
            self.loop.create_task(self._drain())
        return future

    async def _drain(self) -> None:
        try:
            await asyncio.sleep(self.model.batch_window_s)
            while self.pending:
                batch, self.pending = self.pending[:self.model.max_batch], self.pending[self.model.max_batch:]
                groups: dict[str, tuple[GenerationConfig, list[tuple[Prompt, asyncio.Future]]]] = {}
                for prompt, config, future in batch:
                    groups.setdefault(repr(config), (config, []))[1].append((prompt, future))
                for config, items in groups.values():
                    await self._run(config, items)
        finally:
            self.running = False

    async def _run(self, config: GenerationConfig, items: list[tuple[Prompt, asyncio.Future]]) -> None:
        live = [(p, f) for p, f in items if not f.cancelled()]
        if not live:
            return
        try:
            results = await asyncio.to_thread(self.model.generate_batch, [p for p, _ in live], config)
        except Exception as exc:  # every caller of this batch sees the error
            for _, future in live:
                if not future.done():
                    future.set_exception(exc)
            return
        for (_, future), result in zip(live, results):
            result.batch_size = max(result.batch_size, len(live))
            if not future.done():
                future.set_result(result)
