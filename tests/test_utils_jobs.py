# Copyright (c) det_ext authors.
"""run_jobs: dependency order, results handed back as jobs finish, errors, worker processes."""
import math

import pytest

from det_ext.utils.jobs import Job, run_jobs


def _graph():
    # d waits for a and c; b waits for a; "done_before" is not part of this run
    return [Job("a", 4), Job("b", 9, after=("a",)), Job("c", 16, after=("done_before",)),
            Job("d", 25, after=("a", "c"))]


@pytest.mark.parametrize("processes", [1, 2])
def test_every_job_runs_once_after_its_dependencies(processes):
    finished = []
    run_jobs(_graph(), math.isqrt, lambda job, r: finished.append((job.key, r)),
             processes=processes)
    assert sorted(finished) == [("a", 2), ("b", 3), ("c", 4), ("d", 5)]
    order = [k for k, _ in finished]
    assert order.index("a") < order.index("b")
    assert order.index("d") > max(order.index("a"), order.index("c"))
    if processes == 1:
        assert order == ["a", "b", "c", "d"]  # the given order where dependencies allow


def test_sequential_order_follows_dependencies_not_the_list():
    finished = []
    jobs = [Job("late", 1, after=("early",)), Job("early", 2)]
    run_jobs(jobs, abs, lambda job, r: finished.append(job.key))
    assert finished == ["early", "late"]


@pytest.mark.parametrize("processes", [1, 2])
def test_an_error_stops_new_jobs_and_is_raised(processes):
    finished = []
    jobs = [Job("bad", -1), Job("after_bad", 4, after=("bad",))]
    with pytest.raises(ValueError, match="math domain error"):
        run_jobs(jobs, math.sqrt, lambda job, r: finished.append(job.key), processes=processes)
    assert finished == []  # the job waiting for the failed one never ran


@pytest.mark.parametrize("processes", [1, 2])
def test_cycles_and_duplicate_keys_are_errors(processes):
    cycle = [Job("x", 1, after=("y",)), Job("y", 2, after=("x",))]
    with pytest.raises(ValueError, match="wait for each other"):
        run_jobs(cycle, abs, lambda job, r: None, processes=processes)
    with pytest.raises(ValueError, match="duplicate job keys"):
        run_jobs([Job("x", 1), Job("x", 2)], abs, lambda job, r: None, processes=processes)
