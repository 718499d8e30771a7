"""``CallThread``, the SQLite store's own thread for its connection's calls: the semantics of
``anyio.to_thread.run_sync`` (cancellation, waiting, errors, context) at half the cost."""

from __future__ import annotations

import contextvars
import threading
from pathlib import Path

import anyio
import anyio.lowlevel
import pytest

from work import Job, Queue
from work.stores._thread import CallThread
from work.stores.sqlite import SQLiteStore

pytestmark = pytest.mark.anyio

_VAR: contextvars.ContextVar[str] = contextvars.ContextVar("anywork_test_var", default="")


@pytest.fixture(params=["asyncio", "trio"])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """On asyncio the thread of its own; on trio anyio's worker threads (same semantics)."""
    return str(request.param)


async def test_calls_run_in_order_outside_the_event_loop(anyio_backend: str) -> None:
    """Calls run in another thread than the caller's, one after another, with their results
    and exceptions handed back and the caller's context variables visible; on asyncio
    always the same thread, which ends on stop and starts again on the next call."""
    calls = CallThread("test")
    seen: list[int] = []

    def note() -> int:
        seen.append(threading.get_ident())
        return len(seen)

    assert [await calls.run(note) for _ in range(3)] == [1, 2, 3]
    assert threading.get_ident() not in seen
    if anyio_backend == "asyncio":
        assert len(set(seen)) == 1

    def fail() -> None:
        raise LookupError("from the thread")

    with pytest.raises(LookupError, match="from the thread"):
        await calls.run(fail)
    _VAR.set("caller's")
    assert await calls.run(_VAR.get) == "caller's"
    calls.stop()
    calls.stop()  # a second stop is a no-op
    assert await calls.run(note) == 4


async def test_a_cancelled_caller_starts_no_call() -> None:
    """A caller whose scope is already cancelled does not hand its call to the thread."""
    calls = CallThread("test")
    ran: list[int] = []
    with anyio.CancelScope() as scope:
        scope.cancel()
        await calls.run(lambda: ran.append(1))
    assert ran == []
    assert await calls.run(lambda: 7) == 7


async def test_a_started_call_is_waited_for_when_cancelled() -> None:
    """A caller cancelled while its call runs waits for the call to end (as run_sync
    without abandon_on_cancel): nothing it started keeps running behind its back."""
    calls = CallThread("test")
    started, release = threading.Event(), threading.Event()
    finished: list[bool] = []

    def slow() -> None:
        started.set()
        release.wait(10)
        finished.append(True)

    async def caller(scope: anyio.CancelScope) -> None:
        with scope:
            await calls.run(slow)

    scope = anyio.CancelScope()
    async with anyio.create_task_group() as tg:
        tg.start_soon(caller, scope)
        await anyio.to_thread.run_sync(started.wait)
        scope.cancel()
        await anyio.lowlevel.checkpoint()
        assert finished == []
        release.set()
    assert finished == [True]


async def test_sqlite_calls_use_the_store_thread(tmp_path: Path, anyio_backend: str) -> None:
    """On asyncio every statement of a SQLite store runs in its one thread; it ends when
    the store closes and a reopened store starts it again."""
    threads: list[str] = []

    class Noted(SQLiteStore):
        def _call(self, fn):  # type: ignore[no-untyped-def]
            threads.append(threading.current_thread().name)
            return super()._call(fn)

    store = Noted(f"sqlite:///{tmp_path / 'jobs.db'}")
    for _ in range(2):
        async with store:
            await Queue(store).enqueue(Job("noop"))
            assert await store.stats()
    if anyio_backend == "asyncio":
        assert set(threads) == {f"anywork-sqlite {store.path}"}
    else:
        assert f"anywork-sqlite {store.path}" not in threads
    name = f"anywork-sqlite {store.path}"
    with anyio.fail_after(10):  # the closed store's thread ends once it has seen the stop
        while any(t.name == name for t in threading.enumerate()):
            await anyio.sleep(0.01)


async def test_a_forked_child_starts_a_thread_of_its_own(anyio_backend: str) -> None:
    """A CallThread whose thread was started by another process (a fork copies the object,
    not the thread) starts a new one instead of handing calls to a thread that is not there."""
    calls = CallThread("test")
    assert await calls.run(threading.get_ident) != threading.get_ident()
    first = calls._thread
    calls._pid = -1  # as seen from a forked child
    assert await calls.run(lambda: 5) == 5
    if anyio_backend == "asyncio":
        assert calls._thread is not first
    calls.stop()
