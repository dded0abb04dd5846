"""The submission's memory check counts a set's query points."""

from __future__ import annotations

import pytest

from api_schemas import AnalysisParams
from jobstate.memory_budget import MemoryBudgetError, estimate_set_memory
from service.jobs import JobMemoryPolicy


def test_queries_that_would_not_fit_beside_the_set_are_refused_naming_them() -> None:
    params = AnalysisParams(k=10)
    n_points, dim, n_queries = 20_000, 256, 20_000
    alone = estimate_set_memory(n_points, dim, 10, n_classes=n_points, solve_block=1).total
    together = estimate_set_memory(
        n_points + n_queries, dim, 10, n_classes=n_points + n_queries, solve_block=1
    ).total
    # Room for the set in its smallest blocks, not for the set and its queries.
    policy = JobMemoryPolicy(budget_bytes=(alone + together) // 2, shard_min_points=10**9)
    policy.check_set((n_points, dim), params=params, field="sets[s].embeddings")
    policy.check_query((n_points, dim), 10, params=params, field="sets[s].query.embeddings")
    with pytest.raises(MemoryBudgetError) as refused:
        policy.check_query(
            (n_points, dim), n_queries, params=params, field="sets[s].query.embeddings"
        )
    assert refused.value.field == "sets[s].query.embeddings"
