"""What the domain needs from the durable job queue: to queue work for a worker, as part
of the caller's unit of work (a job exists iff the writes that asked for it commit), and to
withdraw work no worker has started. The queue itself lives in ``control.jobs``."""

from __future__ import annotations

from typing import Protocol

from control.domain.records import Job


class JobEnqueuer(Protocol):
    def enqueue(self, kind: str, subject_id: str, *, tenant_id: str | None, max_attempts: int = 2) -> Job:
        """Queue a ``kind`` job for ``subject_id`` in the open unit of work; idle workers wake
        when it commits."""
        ...

    def cancel_queued(self, subject_id: str) -> int:
        """Cancel the subject's jobs that no worker has claimed; how many were."""
        ...
