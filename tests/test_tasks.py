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


async def test_a_halt_that_is_cancelled_still_sees_its_tasks_end():
    """Maintenance halts its runner, whose `finally` halts its own loops: the outer halt's
    second cancel must not leave an inner loop running after the stop returns."""
    cancels = []

    async def stubborn_child():
        for _ in range(30):  # ends by itself after 3 s, so a failing run ends too
            try:
                await asyncio.sleep(0.1)
            except asyncio.CancelledError:
                cancels.append(1)
                if len(cancels) == 3:
                    raise

    child = None

    async def runner():
        nonlocal child
        child = asyncio.create_task(stubborn_child())
        try:
            await asyncio.sleep(60)
        finally:
            await halt([child], retry=0.2)

    task = asyncio.create_task(runner())
    await asyncio.sleep(0.01)
    await asyncio.wait_for(halt([task], retry=0.05), 5)  # re-cancels the runner mid-halt
    assert task.cancelled() and child.done() and len(cancels) == 3
