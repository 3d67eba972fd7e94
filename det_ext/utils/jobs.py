# Copyright (c) det_ext authors.
"""Running the jobs of a small dependency graph, in this process or in worker processes.

Benchmarks made of independent stages (e.g. four pre-trainings, then a detector per backbone)
use it to keep every core busy with one single-threaded job each, which on a small CPU gets more
work done per minute than one job spread over all cores.
"""
from __future__ import annotations

import logging
import multiprocessing
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Job:
    """One unit of work.

    Attributes:
        key: unique name, used by other jobs' ``after``.
        payload: the (picklable) argument of the job function.
        after: keys of the jobs that must finish first; a key that names no job in the run
            counts as finished (its work was done before).
    """

    key: str
    payload: Any
    after: Tuple[str, ...] = ()


def _next_ready(pending: List[Job], finished: set, scheduled: set) -> Optional[Job]:
    for job in pending:
        if all(k in finished or k not in scheduled for k in job.after):
            return job
    return None


def run_jobs(jobs: Sequence[Job], fn: Callable[[Any], Any],
             on_done: Callable[[Job, Any], None], processes: int = 1,
             initializer: Optional[Callable[..., None]] = None,
             initargs: Tuple[Any, ...] = ()) -> None:
    """Runs ``fn(job.payload)`` for every job, at most ``processes`` at a time.

    A job starts once every job in its ``after`` has finished; among the jobs that may start,
    the first in ``jobs`` goes first (list the longest ones first). ``on_done(job, result)`` is
    called in this process as each job finishes, so the caller can record progress (e.g. write a
    resumable state file) while the others still run.

    With ``processes`` 1 every job runs in this process, after ``initializer(*initargs)``.
    Otherwise each worker is a fresh ("spawn") process that calls ``initializer(*initargs)``
    once; ``fn``, ``initializer``, the payloads and results must be picklable, i.e. ``fn`` and
    ``initializer`` are module-level functions of an importable module.

    If a job raises, no further job starts, the running ones are finished and recorded, and the
    first error is raised.

    Raises:
        ValueError: duplicate keys, or a job that waits for itself or for a cycle.
    """
    keys = [job.key for job in jobs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate job keys in {keys}")
    pending, scheduled, finished = list(jobs), set(keys), set()
    if processes <= 1:
        if initializer is not None:
            initializer(*initargs)
        while pending:
            job = _next_ready(pending, finished, scheduled)
            if job is None:
                raise ValueError(f"jobs {[j.key for j in pending]} wait for each other")
            pending.remove(job)
            on_done(job, fn(job.payload))
            finished.add(job.key)
        return

    error: Optional[BaseException] = None
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=initializer,
                             initargs=initargs) as pool:
        running: Dict[Future, Job] = {}
        while pending or running:
            while error is None and len(running) < processes:
                job = _next_ready(pending, finished, scheduled)
                if job is None:
                    break
                pending.remove(job)
                logger.info("Starting %s (%d running, %d waiting)", job.key, len(running) + 1,
                            len(pending))
                running[pool.submit(fn, job.payload)] = job
            if not running:
                if error is None:
                    raise ValueError(f"jobs {[j.key for j in pending]} wait for each other")
                break
            done, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in done:
                job = running.pop(future)
                try:
                    result = future.result()
                except BaseException as e:  # noqa: B036 - re-raised below, after the others
                    logger.error("%s failed: %r", job.key, e)
                    error = error or e
                    continue
                on_done(job, result)
                finished.add(job.key)
    if error is not None:
        raise error
