"""The retry adapter: runs the inner handler again while its status says another try may help."""

from __future__ import annotations

from typing import Any

import anyio

from work import Handler, Job, RetryLater, RetryPolicy, Status

from ._common import job_ctx

__all__ = ["Retry", "retry"]

# The policy's default ``retry_on`` (408, 429 and 5xx), which never retries a 200.
_DEFAULT_RETRY_ON = RetryPolicy().retry_on


class Retry:
    """Adapter that re-invokes the inner handler while the policy says to try again.

    Each attempt starts with ``ctx.status`` reset to ``Status.UNKNOWN``; ``ctx.attempt`` counts
    1, 2, 3 … After a failed attempt whose status ``policy.retry_on`` accepts, it pauses
    ``policy.delay(attempt)`` seconds and tries again, up to ``policy.max_attempts`` in all.
    A :class:`~work.RetryLater` raised inside waits its ``delay`` and tries again *without*
    using an attempt, at most ``policy.max_deferrals`` times; after that a RetryLater counts
    as an ordinary 429 failure (the pause is the longer of its delay and the backoff).

    The last attempt's outcome is the execution's: its return value, or its exception, which
    propagates. Cancellation is never retried.

    Args:
        policy: when and how often to try again.
    """

    __slots__ = ("policy",)

    def __init__(self, *, policy: RetryPolicy) -> None:
        if not isinstance(policy, RetryPolicy):
            raise TypeError(f"policy must be a RetryPolicy, got {type(policy).__name__}")
        self.policy = policy

    def __call__(self, handler: Handler) -> Handler:
        """Wrap ``handler`` so it is retried.

        Args:
            handler: the inner handler.

        Returns:
            The retrying handler.
        """
        policy = self.policy
        # A plain RetryPolicy with the default retry_on lets a 200 return without asking it.
        plain = type(policy) is RetryPolicy
        success, unknown = Status.SUCCESS, Status.UNKNOWN

        async def retrying(job: Job) -> Any:
            ctx = job.ctx
            if ctx is None:
                ctx = job_ctx(job)  # raises the usual error
            deferrals = 0
            while True:
                ctx.status = unknown
                try:
                    result = await handler(job)
                except RetryLater as exc:
                    if deferrals < policy.max_deferrals:
                        deferrals += 1
                        await anyio.sleep(exc.delay)
                        continue
                    if not policy.should_retry(exc.status, ctx.attempt):
                        raise
                    pause = max(exc.delay, policy.delay(ctx.attempt))
                except Exception:
                    # The Worker's settle step inside has set the attempt's final status.
                    if not policy.should_retry(ctx.status, ctx.attempt):
                        raise
                    pause = policy.delay(ctx.attempt)
                else:
                    status = ctx.status
                    if status is success and plain and policy.retry_on is _DEFAULT_RETRY_ON:
                        return result
                    if not policy.should_retry(status, ctx.attempt):
                        return result
                    pause = policy.delay(ctx.attempt)
                await anyio.sleep(pause)
                ctx.attempt += 1

        return retrying

    def __repr__(self) -> str:
        return f"retry(policy={self.policy!r})"


def retry(policy: RetryPolicy | None = None, **policy_kwargs: Any) -> Retry:
    """Return an adapter that retries the inner handler per a :class:`~work.RetryPolicy`.

    Args:
        policy: the policy to follow; by default ``RetryPolicy(**policy_kwargs)``.
        **policy_kwargs: ``max_attempts``, ``backoff``, ``retry_on``, ``max_deferrals`` for a
            new policy (only without ``policy``).

    Returns:
        The adapter.

    Raises:
        TypeError: both ``policy`` and keyword settings were given.
    """
    if policy is not None and policy_kwargs:
        names = ", ".join(sorted(policy_kwargs))
        raise TypeError(f"retry() takes a policy or policy settings, not both (got {names})")
    return Retry(policy=policy if policy is not None else RetryPolicy(**policy_kwargs))
