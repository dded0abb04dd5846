"""The NNK solve: one small non-negative quadratic program per point, batched.

For query i with candidate kernel matrix K = K[S_i, S_i] and b = K[S_i, i]:

    theta_i = argmin_{theta >= 0} 1/2 theta' K theta - b' theta          (DESIGN sec. 1)

The exact solver satisfies the KKT conditions: theta >= 0, gradient K theta - b >= 0
off the support and = 0 on it (to 1e-6). It runs block principal pivoting (Kim & Park,
"Fast nonnegative matrix factorization", SIAM J. Sci. Comput. 2011, Alg. 2), which
exchanges every infeasible variable at once and so needs a handful of batched
Cholesky solves instead of Lawson-Hanson's one per variable; Murty's single-pivot
backup rule makes it terminate. Nodes whose candidate matrix is singular (embedding
dimension below k) or that do not settle go to a batched Lawson-Hanson active set
(Lawson & Hanson 1974, ch. 23), which keeps every sub-system non-singular; the few
left after that, if any, go to scipy's NNLS one by one. All nodes step together in
torch, so the same code runs on a CPU or a CUDA device.

This is the GPU path (and the CPU path of the "authors" solver, or where numba is not
installed). The exact solve on a CPU normally runs compiled
(:mod:`workers.geometry.nnk_kernel`), with the same semantics and tolerances
(:mod:`workers.geometry.nnk_common`); tests/unit/test_nnk_kernel.py checks that the two
agree.
"""

from __future__ import annotations

from typing import Literal

import torch

# Shared with the compiled CPU kernel (nnk_kernel), so both paths cut and dedupe alike.
from workers.geometry.nnk_common import (
    IDENTICAL_TOLERANCE,
    RELATIVE_ZERO_WEIGHT,
    SINGULAR_PIVOT,
    scipy_nnls,
)
from workers.geometry.nnk_common import PIVOT_TOLERANCE as _PIVOT_TOLERANCE

__all__ = ["IDENTICAL_TOLERANCE", "RELATIVE_ZERO_WEIGHT", "Solver", "nnk_weights", "rank_deficient"]
_BPP_BACKUP_STEPS = 3
# The authors' solver's tolerance for graphs, and its iteration cap.
AUTHORS_TOLERANCE = 1e-6
_AUTHORS_MAX_ITER = 50_000

Solver = Literal["exact", "authors"]


def _free_set_solve(
    gram: torch.Tensor,
    rhs: torch.Tensor,
    free: torch.Tensor,
    *,
    ridge: float = 0.0,
    strict: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve K_FF x_F = b_F for every node, x = 0 off F; also report which factorised.

    Nodes are grouped by the size of their free set and each group is solved as one
    batch of |F| x |F| systems: a batched Cholesky costs roughly (size)^3, so packing
    the free variables is several times cheaper than masking full k x k systems once
    the free sets have shrunk to the support (~k/2). ``strict``: a node whose factor
    has a pivot at or below ``SINGULAR_PIVOT`` counts as not factorised.
    """
    n_nodes, k = rhs.shape
    solution = torch.zeros_like(rhs)
    factorised = torch.ones(n_nodes, dtype=torch.bool, device=rhs.device)
    sizes = free.sum(dim=1)
    # Free variables first, each node's own order kept.
    packing = torch.argsort((~free).to(torch.int8), dim=1, stable=True)
    for size in torch.unique(sizes).tolist():
        if size == 0:
            continue
        nodes = torch.nonzero(sizes == size).squeeze(1)
        columns = packing[nodes, :size]
        # One flat index_select: several times faster than 3-D advanced indexing on CPU.
        flat = (nodes * (k * k))[:, None, None] + columns.unsqueeze(2) * k + columns.unsqueeze(1)
        system = torch.index_select(gram.reshape(-1), 0, flat.reshape(-1)).view(-1, size, size)
        if ridge:
            system.diagonal(dim1=1, dim2=2).add_(ridge)
        factor, info = torch.linalg.cholesky_ex(system)
        packed_rhs = rhs[nodes.unsqueeze(1), columns].unsqueeze(-1)
        # Two triangular solves are several times faster than cholesky_solve on CPU batches.
        half = torch.linalg.solve_triangular(factor, packed_rhs, upper=False)
        packed = torch.linalg.solve_triangular(factor.mT, half, upper=True).squeeze(-1)
        # A pivot at the singular threshold fails the node, as the compiled kernel keeps
        # such a column out of F: the free columns stay independent (a basic optimum).
        pivots = factor.diagonal(dim1=1, dim2=2) ** 2
        regular = (pivots > SINGULAR_PIVOT * system.diagonal(dim1=1, dim2=2)).all(dim=1)
        # The authors' solver (not strict) fails only where their Cholesky does.
        regular |= not strict
        node_ok = (info == 0) & regular & torch.isfinite(packed).all(dim=1)
        solution[nodes.unsqueeze(1), columns] = torch.where(node_ok.unsqueeze(1), packed, 0.0)
        factorised[nodes] = node_ok
    return solution, factorised


def _gradient(gram: torch.Tensor, weights: torch.Tensor, rhs: torch.Tensor) -> torch.Tensor:
    return torch.bmm(gram, weights.unsqueeze(-1)).squeeze(-1) - rhs


def _block_principal_pivoting(
    gram: torch.Tensor, rhs: torch.Tensor, allowed: torch.Tensor, *, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kim & Park's block principal pivoting; returns (weights, solved mask)."""
    n_nodes, k = rhs.shape
    device = rhs.device
    weights = torch.zeros_like(rhs)
    solved = torch.zeros(n_nodes, dtype=torch.bool, device=device)
    columns = torch.arange(k, device=device)
    # The working set: nodes still pivoting, compacted when it has halved, since
    # copying k x k matrices costs about as much as factorising them.
    node_ids = torch.arange(n_nodes, device=device)
    work_gram, work_rhs, work_allowed = gram, rhs, allowed
    running = torch.ones(n_nodes, dtype=torch.bool, device=device)
    free = allowed.clone()
    fewest_infeasible = torch.full((n_nodes,), k + 1, device=device)
    backup_left = torch.full((n_nodes,), _BPP_BACKUP_STEPS, device=device)
    for _ in range(max_iter):
        n_running = int(running.sum())
        if n_running == 0:
            break
        if n_running <= running.numel() // 2:
            keep = torch.nonzero(running).squeeze(1)
            node_ids, running = node_ids[keep], running[keep]
            work_gram = torch.index_select(work_gram, 0, keep)
            work_rhs, work_allowed, free = work_rhs[keep], work_allowed[keep], free[keep]
            fewest_infeasible, backup_left = fewest_infeasible[keep], backup_left[keep]
        candidate, factorised = _free_set_solve(work_gram, work_rhs, free & running.unsqueeze(1))
        gradient = _gradient(work_gram, candidate, work_rhs)
        infeasible = (free & (candidate < -_PIVOT_TOLERANCE)) | (
            ~free & work_allowed & (gradient < -_PIVOT_TOLERANCE)
        )
        n_infeasible = infeasible.sum(dim=1)
        finished = running & factorised & (n_infeasible == 0)
        weights[node_ids[finished]] = candidate[finished].clamp(min=0.0)
        solved[node_ids[finished]] = True
        running &= factorised & ~finished

        improved = n_infeasible < fewest_infeasible
        fewest_infeasible = torch.where(improved, n_infeasible, fewest_infeasible)
        use_block = improved | (backup_left > 0)
        backup_left = torch.where(
            improved,
            torch.full_like(backup_left, _BPP_BACKUP_STEPS),
            torch.where(use_block, backup_left - 1, backup_left),
        )
        # Murty's rule: exchange only the infeasible variable of largest index.
        last_infeasible = torch.where(infeasible, columns, -1).max(dim=1).values
        single = columns.unsqueeze(0) == last_infeasible.unsqueeze(1)
        exchange = torch.where(use_block.unsqueeze(1), infeasible, single)
        free = torch.where(running.unsqueeze(1), free ^ exchange, free)
    return weights, solved


def _lawson_hanson(
    gram: torch.Tensor, rhs: torch.Tensor, allowed: torch.Tensor, *, max_iter: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batched Lawson-Hanson active set in the NNK form; returns (weights, solved mask)."""
    n_nodes = rhs.shape[0]
    device = rhs.device
    weights = torch.zeros_like(rhs)
    free = torch.zeros_like(allowed)
    solved = torch.zeros(n_nodes, dtype=torch.bool, device=device)
    adding = torch.ones(n_nodes, dtype=torch.bool, device=device)
    active = torch.arange(n_nodes, device=device)
    for _ in range(max_iter):
        if active.numel() == 0:
            break
        node_gram, node_rhs = gram[active], rhs[active]
        node_weights, node_free = weights[active], free[active]
        node_adding = adding[active]

        descent = -_gradient(node_gram, node_weights, node_rhs)
        descent = torch.where(~node_free & allowed[active], descent, -torch.inf)
        best_descent, entering = descent.max(dim=1)
        optimal = node_adding & (best_descent <= _PIVOT_TOLERANCE)
        solved[active[optimal]] = True
        node_free = node_free.clone()
        grow = node_adding & ~optimal
        node_free[grow, entering[grow]] = True

        keep = ~optimal
        active, node_gram, node_rhs = active[keep], node_gram[keep], node_rhs[keep]
        node_weights, node_free = node_weights[keep], node_free[keep]
        candidate, factorised = _free_set_solve(node_gram, node_rhs, node_free)
        positive = (~node_free | (candidate > _PIVOT_TOLERANCE)).all(dim=1)
        # Step back towards the candidate only as far as feasibility allows.
        blocking = node_free & (candidate <= _PIVOT_TOLERANCE)
        ratio = node_weights / (node_weights - candidate).clamp(min=1e-300)
        step = torch.where(blocking, ratio, torch.inf).min(dim=1).values.clamp(0.0, 1.0)
        step = torch.where(positive, torch.ones_like(step), step)
        new_weights = node_weights + step.unsqueeze(1) * (candidate - node_weights)
        node_free = node_free & (positive.unsqueeze(1) | (new_weights > _PIVOT_TOLERANCE))
        new_weights = torch.where(node_free, new_weights, torch.zeros_like(new_weights))

        healthy = factorised
        weights[active[healthy]] = new_weights[healthy]
        free[active[healthy]] = node_free[healthy]
        adding[active[healthy]] = positive[healthy]
        active = active[healthy]
    return weights, solved


def _exact_weights(gram: torch.Tensor, rhs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    n_nodes, k = rhs.shape
    weights = torch.zeros_like(rhs)
    pending = torch.arange(n_nodes, device=rhs.device)
    for method, max_iter in ((_block_principal_pivoting, 5 * k), (_lawson_hanson, 6 * k)):
        if pending.numel() == 0:
            return weights
        found, solved = method(gram[pending], rhs[pending], allowed[pending], max_iter=max_iter)
        weights[pending[solved]] = found[solved]
        pending = pending[~solved]
    for node in pending.tolist():
        weights[node] = torch.from_numpy(
            scipy_nnls(
                gram[node].cpu().numpy(), rhs[node].cpu().numpy(), allowed[node].cpu().numpy()
            )
        ).to(weights)
    return weights


def _authors_weights(gram: torch.Tensor, rhs: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The prune-only solver of PyNNK's ``non_negative_qpsolver`` (DESIGN appendix)."""
    tol = AUTHORS_TOLERANCE
    weights = torch.zeros_like(rhs)
    free = allowed & (rhs > tol)
    # Step 1: a candidate (nearly) identical to the query returns b masked to such ones.
    duplicate = free & (rhs > 1.0 - tol)
    has_duplicate = duplicate.any(dim=1)
    weights[has_duplicate] = torch.where(duplicate[has_duplicate], rhs[has_duplicate], 0.0)
    active = torch.nonzero(~has_duplicate).squeeze(1)
    for _ in range(_AUTHORS_MAX_ITER):
        if active.numel() == 0:
            break
        node_gram, node_rhs, node_free = gram[active], rhs[active], free[active]
        candidate, factorised = _free_set_solve(node_gram, node_rhs, node_free, strict=False)
        if not bool(factorised.all()):
            # As the authors do on a failed Cholesky: add tol * I and solve again.
            retry, _ = _free_set_solve(
                node_gram[~factorised],
                node_rhs[~factorised],
                node_free[~factorised],
                ridge=tol,
                strict=False,
            )
            candidate[~factorised] = retry
        negative = candidate < tol
        check = torch.where(negative, candidate.abs(), torch.zeros_like(candidate)).amax(dim=1)
        weights[active] = candidate
        free[active] = node_free & (candidate > tol)
        active = active[check > tol]
    return torch.where(weights < tol, torch.zeros_like(weights), weights)


def nnk_weights(
    candidate_gram: torch.Tensor,
    query_kernel: torch.Tensor,
    *,
    solver: Solver = "exact",
    allowed: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Solve the NNK problems of a batch of queries.

    Parameters
    ----------
    candidate_gram : tensor of shape (n_queries, k, k), float64
        ``K[S_i, S_i]`` per query; symmetric positive semi-definite, unit diagonal.
    query_kernel : tensor of shape (n_queries, k), float64
        ``K[S_i, i]`` per query.
    solver : {"exact", "authors"}
        ``"exact"`` satisfies the KKT conditions; ``"authors"`` is the prune-only
        heuristic of the published code, for comparison only.
    allowed : bool tensor of shape (n_queries, k), optional
        Candidates that may take weight (default: all). Excluded ones get weight 0.

    Returns
    -------
    weights : tensor of shape (n_queries, k), float64
        theta_i, non-negative; weights at or below 1e-6 of the node's largest are 0.
    reconstruction_error : tensor of shape (n_queries,), float64
        e_i = 1 - 2 theta_i' b_i + theta_i' K_i theta_i.

    Notes
    -----
    A candidate identical to its query (K = 1) takes all the weight: theta = e_j is
    the exact optimum, with objective -1/2 and zero gradient. Among several identical
    candidates the nearest one takes it. A candidate identical to an earlier candidate
    is left out of the problem: the two columns of K are equal, so the optimum can put
    their joint weight on the first one.
    """
    gram, rhs = candidate_gram, query_kernel
    k = rhs.shape[1]
    allowed = torch.ones_like(rhs, dtype=torch.bool) if allowed is None else allowed.clone()
    if solver == "authors":
        weights = _authors_weights(gram, rhs, allowed)
    else:
        # b_j <= 0 means the gradient (K theta - b)_j >= 0 for any theta >= 0 (K >= 0):
        # such a candidate takes no weight at the optimum.
        allowed &= rhs > 0
        upper = torch.triu(torch.ones(k, k, dtype=torch.bool, device=rhs.device), diagonal=1)
        identical_pair = (gram >= 1.0 - IDENTICAL_TOLERANCE) & upper
        shadowed = (identical_pair & allowed.unsqueeze(2)).any(dim=1)
        allowed &= ~shadowed
        identical_to_query = allowed & (rhs >= 1.0 - IDENTICAL_TOLERANCE)
        has_duplicate = identical_to_query.any(dim=1)
        weights = torch.zeros_like(rhs)
        first = identical_to_query.to(torch.int8).argmax(dim=1)
        weights[has_duplicate, first[has_duplicate]] = 1.0
        rest = torch.nonzero(~has_duplicate).squeeze(1)
        if rest.numel():
            weights[rest] = _exact_weights(gram[rest], rhs[rest], allowed[rest])
    largest = weights.amax(dim=1, keepdim=True)
    weights = torch.where(weights > RELATIVE_ZERO_WEIGHT * largest, weights, 0.0)
    reconstruction_error = (
        1.0
        - 2.0 * (weights * rhs).sum(dim=1)
        + (weights * torch.bmm(gram, weights.unsqueeze(-1)).squeeze(-1)).sum(dim=1)
    )
    return weights, reconstruction_error


def rank_deficient(candidate_gram: torch.Tensor) -> torch.Tensor:
    """Whether each node's K is numerically singular (its NNK optimum may not be unique).

    Parameters
    ----------
    candidate_gram : tensor of shape (n_nodes, k, k), float64
        ``K[S_i, S_i]`` per node.

    Returns
    -------
    bool tensor of shape (n_nodes,)
        True where a Cholesky pivot of K, taken column by column, is at or below
        ``SINGULAR_PIVOT`` times its diagonal entry: the test of the compiled kernel
        (:func:`workers.geometry.nnk_compiled.rank_deficient`), batched.
    """
    schur = candidate_gram.clone()
    k = schur.shape[1]
    deficient = torch.zeros(schur.shape[0], dtype=torch.bool, device=schur.device)
    for j in range(k):
        pivot = schur[:, j, j]
        singular = ~(pivot > SINGULAR_PIVOT * candidate_gram[:, j, j])
        deficient |= singular
        # Nodes already deficient are decided: a unit pivot keeps their arithmetic finite.
        pivot = torch.where(deficient, torch.ones_like(pivot), pivot)
        column = schur[:, j + 1 :, j] / pivot.sqrt().unsqueeze(1)
        schur[:, j + 1 :, j + 1 :] -= column.unsqueeze(2) * column.unsqueeze(1)
    return deficient
