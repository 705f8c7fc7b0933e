"""The api's background loops (queue watch, spool drainer, key mirror): started in the lifespan, stopped at shutdown."""

from __future__ import annotations

import asyncio
import logging

log = logging.getLogger(__name__)

STOP_WAIT_S = 5.0  # at most one round (a few Redis or Postgres round trips) is in flight when asked to stop


class BackgroundLoop:
    """A task running `_run()` from `start()` until `stop()`; `stop()` returns within STOP_WAIT_S whatever the task does."""

    task_name = "background"
    _task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        raise NotImplementedError

    async def pause(self, seconds: float) -> None:
        """Sleep between rounds, first honouring a stop request the round may have swallowed.

        stop() cancels the task, but Python 3.11 can lose that cancellation:
        asyncio.wait_for, which the Redis client waits with, returns the inner result
        instead when it is ready at the same moment (bpo-42130, fixed in 3.12).
        Measured: about half the cancellations landing in a command that Redis answers
        with an error (an error reply, LOADING, ...). So the request is read here too,
        or the loop would run on and shutdown wait forever.
        """
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise asyncio.CancelledError
        await asyncio.sleep(seconds)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        # asyncio.wait, not `await task`: shutdown must end even if the task never does.
        done, _ = await asyncio.wait({task}, timeout=STOP_WAIT_S)
        if not done:
            log.warning("%s did not stop within %s s; left behind", self.task_name, STOP_WAIT_S)
