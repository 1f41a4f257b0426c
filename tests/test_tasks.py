"""app/tasks.py: a stop returns even when a cancel is lost."""

import asyncio

from app.tasks import halt


async def test_halt_cancels_again_when_a_cancel_is_lost():
    seen = []

    async def loop_that_survives_one_cancel():
        # as a loop does when the driver turns a cancel into an error it logs
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                seen.append("cancel")
                if len(seen) == 2:
                    raise

    task = asyncio.create_task(loop_that_survives_one_cancel())
    await asyncio.sleep(0)
    await asyncio.wait_for(halt([task, None], retry=0.05), 5)
    assert task.cancelled() and seen == ["cancel", "cancel"]


async def test_halt_leaves_finished_tasks_as_they_ended():
    done = asyncio.create_task(asyncio.sleep(0, result=7))
    await done
    await halt([done])
    assert done.result() == 7
