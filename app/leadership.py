"""`Singleton`: a loop that one process of a deployment runs at a time, under a named lease
(app/store/leases.py), and that any other process takes over when the holder stops or dies.

Subclasses implement `lead(state)`: it runs while the lease is held, calls `keep()` often
(which renews the lease when due and says whether it is still held), checkpoints with
`save()`, and returns when it lost the lease. Invariant: a checkpoint is only written under
the holder's own lease, so whoever leads next resumes from the last one a leader wrote.

Taking and renewing are one `findAndModify` each (app/store/leases.py). A process that does
not hold the lease sends nothing until the holder's lease can have run out (the expiry the
failed take returned), so a follower costs one round trip per lease length; a holder that
stops releases its lease, and a follower takes it at that expiry at the latest.
"""

from __future__ import annotations

import asyncio
import time
import uuid

from .logs import get_logger


class Singleton:
    lease: str = ""

    def __init__(self, store, lease_seconds: float = 10.0) -> None:
        self.store = store
        self.lease_seconds = lease_seconds
        self.holder = f"{self.lease}-{uuid.uuid4().hex[:12]}"
        self.leading = False
        self.stopping = False  # set before cancelling: the driver may turn a cancel into an error
        self.log = get_logger(f"switchyard.{self.lease}")
        self._renewed = 0.0

    async def lead(self, state: dict) -> None:
        raise NotImplementedError

    async def run(self) -> None:
        while not self.stopping:
            try:
                lease = await self.store.leases.take(self.lease, self.holder, self.lease_seconds)
                self.leading = lease["holder"] == self.holder
                if not self.leading:
                    # A follower sends nothing until the holder's lease can run out: one
                    # round trip per lease length, however many processes follow.
                    await asyncio.sleep(self.until(lease["expires_at"]))
                    continue
                self._renewed = time.monotonic()
                await self.lead(lease["state"])
            except asyncio.CancelledError:
                if self.leading:  # hand over at once instead of after the lease runs out
                    # shielded: a stop cancels again each second (app/tasks.py), and the
                    # release, once sent, should finish rather than leave the lease to run out
                    release = asyncio.ensure_future(self.store.leases.release(self.lease, self.holder))
                    try:
                        await asyncio.wait_for(asyncio.shield(release), 2.0)
                    except (Exception, asyncio.CancelledError):
                        pass  # it runs out by itself
                raise
            except Exception as exc:
                self.log.warning(f"{self.lease}.error", error=repr(exc))
                await asyncio.sleep(1.0)

    def until(self, expires_at) -> float:
        """Seconds (on the database clock) until a lease expiring at `expires_at` is free."""
        left = (expires_at - self.store.clock.now()).total_seconds()
        return min(max(left, 0.0) + 0.05, self.lease_seconds)

    def renew_in(self) -> float:
        """Seconds until `keep()` next renews."""
        return max(0.0, self._renewed + self.lease_seconds / 3 - time.monotonic())

    async def keep(self) -> bool:
        """Renew the lease when a third of it has passed; False once another holds it."""
        if time.monotonic() - self._renewed >= self.lease_seconds / 3:
            if await self.store.leases.acquire(self.lease, self.holder, self.lease_seconds) is None:
                self.leading = False
                return False
            self._renewed = time.monotonic()
        return True

    async def save(self, state: dict) -> bool:
        return await self.store.leases.save(self.lease, self.holder, state)
