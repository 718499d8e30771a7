"""``anywork jobs purge``, ``anywork jobs retry`` and the worker's retention and lost-limit
options, run as real subprocesses on a SQLite file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from work import Job, JobState, Status, SyncQueue
from work.cli._main import parse_duration
from work.stores import Outcome, open_store


def anywork(*args: str) -> subprocess.CompletedProcess[str]:
    """Run ``python -m work.cli`` with ``args``; return its result (never raises)."""
    return subprocess.run(
        [sys.executable, "-m", "work.cli", *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def _finish(url: str, ids: list[str], state: JobState) -> None:
    async with open_store(url) as store:
        claimed = await store.claim(["default"], limit=len(ids), lease=30, owner="t")
        assert sorted(c.record.id for c in claimed) == sorted(ids)
        status = Status.SUCCESS if state is JobState.SUCCEEDED else Status.INTERNAL_ERROR
        await store.complete("t", [Outcome(id=id, state=state, status=status) for id in ids])


@pytest.fixture
def url(tmp_path: Path) -> str:
    """A SQLite store with one SUCCEEDED, one FAILED and one QUEUED job (ids ok, bad, new)."""
    url = f"sqlite:///{tmp_path / 'jobs.db'}"
    with SyncQueue(url) as queue:
        queue.enqueue_many([Job("noop", id="ok"), Job("noop", id="bad")])
    anyio.run(_finish, url, ["ok"], JobState.SUCCEEDED)
    anyio.run(_finish, url, ["bad"], JobState.FAILED)
    with SyncQueue(url) as queue:
        queue.enqueue(Job("noop", id="new"))
    return url


def test_jobs_retry_requeues_a_failed_job(url: str) -> None:
    """`anywork jobs retry ID` makes a FAILED job QUEUED again and says so."""
    done = anywork("jobs", "retry", "bad", "--store", url)
    assert done.returncode == 0, done.stderr
    assert "retrying bad" in done.stdout and "queued" in done.stdout
    with SyncQueue(url) as queue:
        got = queue.get("bad")
    assert got is not None and got.state is JobState.QUEUED and got.attempts == 0


def test_jobs_retry_refuses_other_states_and_unknown_ids(url: str) -> None:
    """`anywork jobs retry` of a job that is not FAILED or CANCELLED exits 1 naming its
    state; of an unknown id, exits 1 saying so."""
    done = anywork("jobs", "retry", "ok", "--store", url)
    assert done.returncode == 1 and "succeeded" in done.stderr
    done = anywork("jobs", "retry", "nope", "--store", url)
    assert done.returncode == 1 and "no job with id 'nope'" in done.stderr


def test_jobs_purge_by_age_and_state(url: str) -> None:
    """`anywork jobs purge --older-than D [--state S]` deletes finished jobs only, and prints
    how many."""
    done = anywork("jobs", "purge", "--older-than", "1d", "--store", url)
    assert done.returncode == 0 and "purged 0 jobs" in done.stdout
    done = anywork("jobs", "purge", "--older-than", "0", "--state", "failed", "--store", url)
    assert done.returncode == 0 and "purged 1 job" in done.stdout
    done = anywork("jobs", "purge", "--older-than", "0s", "--store", url)
    assert done.returncode == 0 and "purged 1 job" in done.stdout
    with SyncQueue(url) as queue:
        assert [r.id for r in queue.list()] == ["new"]


def test_bad_durations_and_limits_exit_2(url: str) -> None:
    """A bad --older-than, --result-ttl or --lost-limit is a usage error: exit 2."""
    for args in (
        ("jobs", "purge", "--older-than", "soon", "--store", url),
        ("jobs", "purge", "--older-than", "-1d", "--store", url),
        ("jobs", "purge", "--older-than", "nan", "--store", url),
        ("jobs", "purge", "--older-than", "1d", "--state", "queued", "--store", url),
        ("worker", "tasks:worker", "--store", url, "--lost-limit", "0"),
        ("worker", "tasks:worker", "--store", url, "--result-ttl", "forever"),
    ):
        done = anywork(*args)
        assert done.returncode == 2, (args, done.stderr)


def test_parse_duration_units() -> None:
    """Durations are seconds, or a number with s, m, h, d or w."""
    assert parse_duration("90") == 90.0
    assert parse_duration("1.5m") == 90.0
    assert parse_duration("2h") == 7200.0
    assert parse_duration("7d") == 7 * 86400.0
    assert parse_duration("1W") == 7 * 86400.0
