"""The compiled half of the CPU NNK solve (numba): per-node QP, kernels, parallel loops.

:mod:`workers.geometry.nnk_kernel` is the interface and documents the method, the
semantics and the compilation cache. Everything compiled is in this one file on
purpose: numba invalidates a cached function when the file that defines it changes,
not when a function it calls from another file does. For the same reason the
tolerances shared with the torch path (:mod:`workers.geometry.nnk_common`) come in as
arguments, ``tolerances = (identical, pivot, relative_zero)``, and are not compiled in.

Every function works in caller-provided scratch: the parallel loops allocate one slot
of scratch per thread per call, and each node takes its thread's slot
(``get_thread_id``). Three habits keep a node at a few microseconds:

- arrays are indexed in place, never sliced or viewed (``a[i]``) in a loop, and the
  steps of the active set are written out, not called: numba updates the reference
  count of every view and every array argument of a call with an atomic instruction,
  and at k = 30 those cost more than the arithmetic;
- no branch depends on a candidate's state in the scans (mispredictions dominate
  otherwise);
- fastmath is off (the pivot and KKT tests compare small differences, NaN checks must
  survive) except reassociation and contraction in :func:`_inner_products`, where they
  only change the rounding of a dot product and let it vectorise.
"""

from __future__ import annotations

import math

import numpy as np
from numba import get_thread_id, njit, prange

# A new Cholesky pivot (squared) at or below this, relative to K_jj, means the entering
# column is (numerically) a combination of the free ones: it is kept out of F.
_SINGULAR_PIVOT = 1e-13
# A candidate kept out of F whose descent is still steeper than this at the end sends
# the node to the scipy fallback (the KKT contract is 1e-6).
_KEPT_OUT_KKT = 1e-9
# Rows of the float scratch of one node, ``work`` (4, k).
_HALF, _CANDIDATE, _GRADIENT, _INVERSE_DIAGONAL = 0, 1, 2, 3
# What each candidate is during the active set (``state``, (k,) int8): free to enter,
# in F, kept out of F (until the next feasible step), or not allowed at all.
_OPEN, _IN_FREE, _KEPT_OUT, _BARRED = 0, 1, 2, 3
# Subtracted from the descent of a candidate that is not open: no tolerance picks it.
_SUNK = 1e300


@njit(cache=True)
def prepare_node(gram, rhs, allowed, identical):  # pragma: no cover - compiled
    """Narrow ``allowed`` in place as the torch path does; the duplicate of the query or -1.

    b_j <= 0 is excluded; j is shadowed when an earlier allowed i has K_ij = 1 (the
    shadowing mask is the one before shadows are removed, as in the torch path, so j
    runs from the last to the first); the first allowed candidate with b_j = 1 is
    returned.
    """
    k = rhs.shape[0]
    threshold = 1.0 - identical
    for j in range(k):
        allowed[j] = allowed[j] and rhs[j] > 0.0
    # Shadows are rare: first count the entries off the diagonal at K = 1, in one pass
    # that vectorises.
    off_diagonal_ones = 0
    for j in range(k):
        for i in range(k):
            off_diagonal_ones += gram[j, i] >= threshold
        off_diagonal_ones -= gram[j, j] >= threshold
    first_shadowed = k - 1 if off_diagonal_ones > 0 else 0
    for j in range(first_shadowed, 0, -1):
        if allowed[j]:
            # Row j, not column j (K is symmetric): contiguous. An OR over the whole row,
            # not a search with an early exit, so that it vectorises.
            shadowed = False
            for i in range(j):
                shadowed |= (gram[j, i] >= threshold) & allowed[i]
            allowed[j] = not shadowed
    for j in range(k):
        if allowed[j] and rhs[j] >= threshold:
            return j
    return -1


@njit(cache=True)
def _remove(factor, work, free, size, position):  # pragma: no cover - compiled
    """Delete row/column ``position`` of the factor of K_FF (size x size) by Givens rotations.

    Deleting row p of L leaves rows p.. with one entry right of the diagonal; rotating
    columns (r, r+1) zeroes it and keeps L L' = K_FF without the deleted variable.
    """
    for row in range(position, size - 1):
        free[row] = free[row + 1]
        for col in range(row + 2):
            factor[row, col] = factor[row + 1, col]
    for row in range(position, size - 1):
        a = factor[row, row]
        b = factor[row, row + 1]
        norm = math.hypot(a, b)
        cos, sin = (1.0, 0.0) if norm == 0.0 else (a / norm, b / norm)
        for below in range(row, size - 1):
            left = factor[below, row]
            right = factor[below, row + 1]
            factor[below, row] = cos * left + sin * right
            factor[below, row + 1] = cos * right - sin * left
        factor[row, row] = norm
        factor[row, row + 1] = 0.0
        work[_INVERSE_DIAGONAL, row] = 1.0 / norm


@njit(cache=True)
def _active_set(
    gram, rhs, allowed, weights, factor, free, state, work, pivot
):  # pragma: no cover - compiled
    """Lawson-Hanson on one node, weights written in place; True when KKT holds.

    Scratch: ``factor`` (k, k), ``free`` (k,), ``state`` (k,) int8, ``work`` (4, k)
    (rows named above).

    The steps of an iteration are written out here, not called: numba increments and
    decrements (atomically) the reference count of every array passed to a call or
    taken as a view (``a[i]``, ``a[:n]``), and at this size those atomics cost more
    than the arithmetic. For the same reason arrays are indexed in place, never sliced.
    """
    k = rhs.shape[0]
    for j in range(k):
        weights[j] = 0.0
        state[j] = _OPEN if allowed[j] else _BARRED
    size = 0
    solved = 0  # rows of work[_HALF] still valid
    for _ in range(4 * k + 16):
        # K w - b by columns of K (rows, K being symmetric), in a fixed order.
        for j in range(k):
            work[_GRADIENT, j] = -rhs[j]
        for position in range(size):
            column = free[position]
            weight = weights[column]
            for j in range(k):
                work[_GRADIENT, j] += gram[column, j] * weight
        entering = -1
        steepest = pivot
        for j in range(k):
            # Arithmetic, not a branch on the state (LLVM turns even a select back into
            # one, and its mispredictions cost more than the rest of the scan): a
            # candidate not open sinks far below any tolerance.
            descent = -work[_GRADIENT, j] - _SUNK * (state[j] != _OPEN)
            if descent > steepest:
                steepest = descent
                entering = j
        if entering < 0:
            # A plain loop: numba compiles no generator expressions.
            for j in range(k):
                if state[j] == _KEPT_OUT and -work[_GRADIENT, j] > _KEPT_OUT_KKT:
                    return False
            return True
        # Append the entering column to L: solve L l = K[F, entering] by columns (each
        # solved entry updates the ones below it), so that the chain of dependent
        # operations is one multiply-add per entry, not a dot product per entry.
        for row in range(size):
            factor[size, row] = gram[entering, free[row]]
        for col in range(size):
            value = factor[size, col] * work[_INVERSE_DIAGONAL, col]
            factor[size, col] = value
            for row in range(col + 1, size):
                factor[size, row] -= factor[row, col] * value
        residual = gram[entering, entering]
        for col in range(size):
            residual -= factor[size, col] * factor[size, col]
        if not residual > _SINGULAR_PIVOT * gram[entering, entering]:
            state[entering] = _KEPT_OUT
            continue
        factor[size, size] = math.sqrt(residual)
        work[_INVERSE_DIAGONAL, size] = 1.0 / factor[size, size]
        free[size] = entering
        state[entering] = _IN_FREE
        size += 1
        first_step = True
        while True:
            # work[_CANDIDATE, :size] = K_FF^{-1} b_F. work[_HALF] = L^{-1} b_F is kept:
            # its rows before ``solved`` are still valid (L and F only grew since), so an
            # appended variable costs one row of the forward solve. The back substitution
            # runs by rows of L (columns of L'), without a reduction.
            for row in range(solved, size):
                total = rhs[free[row]]
                for col in range(row):
                    total -= factor[row, col] * work[_HALF, col]
                work[_HALF, row] = total * work[_INVERSE_DIAGONAL, row]
            for row in range(size):
                work[_CANDIDATE, row] = work[_HALF, row]
            for row in range(size - 1, -1, -1):
                value = work[_CANDIDATE, row] * work[_INVERSE_DIAGONAL, row]
                work[_CANDIDATE, row] = value
                for col in range(row):
                    work[_CANDIDATE, col] -= factor[row, col] * value
            solved = size
            feasible = True
            for position in range(size):
                if not math.isfinite(work[_CANDIDATE, position]):
                    return False
                feasible = feasible and work[_CANDIDATE, position] > 0.0
            if feasible:
                for position in range(size):
                    weights[free[position]] = work[_CANDIDATE, position]
                for j in range(k):
                    state[j] = _OPEN if state[j] == _KEPT_OUT else state[j]
                break
            if first_step and work[_CANDIDATE, size - 1] <= 0.0:
                # The entering variable cannot grow (rounding at the pivot tolerance):
                # leave it out, as Lawson and Hanson do, and pick another.
                size -= 1
                solved = size
                state[entering] = _KEPT_OUT
                break
            first_step = False
            # Step from the weights towards the candidate as far as feasibility allows.
            step = 1.0
            blocking = -1
            for position in range(size):
                if work[_CANDIDATE, position] <= 0.0:
                    current = weights[free[position]]
                    ratio = current / (current - work[_CANDIDATE, position])
                    if ratio < step:
                        step = ratio
                        blocking = position
            for position in range(size):
                current = weights[free[position]]
                weights[free[position]] = current + step * (work[_CANDIDATE, position] - current)
            if blocking >= 0:
                weights[free[blocking]] = 0.0
            for position in range(size - 1, -1, -1):
                if weights[free[position]] <= 0.0:
                    weights[free[position]] = 0.0
                    state[free[position]] = _OPEN
                    _remove(factor, work, free, size, position)
                    size -= 1
                    solved = min(solved, position)
            if size == 0:
                break
    return False


@njit(cache=True)
def rank_deficient(gram, factor):  # pragma: no cover - compiled
    """Whether K is numerically singular: a Cholesky pivot vanishes (``factor`` (k, k) scratch).

    The factorisation runs on the upper triangle of a copy, row by row (right looking,
    so that every update is a contiguous axpy), and stops at the first pivot at or below
    ``_SINGULAR_PIVOT * K_jj``: the rule by which the active set keeps a column out of
    F. Then the NNK optimum may not be unique (the solve still returns a basic one).
    O(k^3 / 6) when K is regular.
    """
    k = gram.shape[0]
    for a in range(k):
        for b in range(a, k):
            factor[a, b] = gram[a, b]
    for j in range(k):
        pivot = factor[j, j]
        if not pivot > _SINGULAR_PIVOT * gram[j, j]:
            return True
        inverse = 1.0 / math.sqrt(pivot)
        for a in range(j + 1, k):
            factor[j, a] *= inverse
        for b in range(j + 1, k):
            scaled = factor[j, b]
            for a in range(b, k):
                factor[b, a] -= scaled * factor[j, a]
    return False


@njit(cache=True)
def finish_node(gram, rhs, weights, support, relative_zero):  # pragma: no cover - compiled
    """Apply the relative zero cut; return e = 1 - 2 theta' b + theta' K theta.

    ``support`` is integer scratch of length k.
    """
    k = rhs.shape[0]
    largest = 0.0
    for j in range(k):
        largest = max(largest, weights[j])
    count = 0
    linear = 0.0
    for j in range(k):
        if weights[j] > relative_zero * largest:
            support[count] = j
            count += 1
            linear += weights[j] * rhs[j]
        else:
            weights[j] = 0.0
    quadratic = 0.0
    for a in range(count):
        row = support[a]
        total = 0.0
        for b in range(count):
            total += gram[row, support[b]] * weights[support[b]]
        quadratic += weights[row] * total
    return 1.0 - 2.0 * linear + quadratic


@njit(cache=True)
def solve_node(
    gram, rhs, allowed, weights, factor, free, state, work, identical, pivot
):  # pragma: no cover - compiled
    """One node from its K, b and mask (``allowed`` is narrowed in place); settled or not.

    Scratch: ``factor`` (k, k) float, ``free`` (k,) int, ``state`` (k,) int8,
    ``work`` (4, k) float.
    """
    duplicate = prepare_node(gram, rhs, allowed, identical)
    if duplicate >= 0:
        for j in range(weights.shape[0]):
            weights[j] = 0.0
        weights[duplicate] = 1.0
        return True
    return _active_set(gram, rhs, allowed, weights, factor, free, state, work, pivot)


@njit(cache=True)
def solver_scratch(slots, k):  # pragma: no cover - compiled
    """Per-thread scratch of :func:`solve_node`, ``slots`` of each.

    factor (k, k), free (k,), state (k,), work (4, k), mask (k,).
    """
    return (
        np.zeros((slots, k, k)),
        np.zeros((slots, k), dtype=np.int64),
        np.zeros((slots, k), dtype=np.int8),
        np.zeros((slots, 4, k)),
        np.zeros((slots, k), dtype=np.bool_),
    )


@njit(parallel=True, cache=True)
def solve_gram_batch(
    gram, rhs, allowed, tolerances, slots, weights, error, settled, deficient
):  # pragma: no cover - compiled
    """Every node of a batch from its K and b, nodes in parallel.

    ``slots`` is at least the number of threads: each thread works in its own slot of
    scratch (by ``get_thread_id``), allocated once per call, not once per node.
    ``deficient[node]`` gets :func:`rank_deficient` of the node's K.
    """
    identical, pivot, relative_zero = tolerances
    n_nodes, k = rhs.shape
    factor, free, state, work, mask = solver_scratch(slots, k)
    for node in prange(n_nodes):
        slot = get_thread_id()
        deficient[node] = rank_deficient(gram[node], factor[slot])
        mask[slot, :] = allowed[node]
        settled[node] = solve_node(
            gram[node],
            rhs[node],
            mask[slot],
            weights[node],
            factor[slot],
            free[slot],
            state[slot],
            work[slot],
            identical,
            pivot,
        )
        error[node] = finish_node(gram[node], rhs[node], weights[node], free[slot], relative_zero)


@njit(cache=True)
def padded(width):  # pragma: no cover - compiled
    """``width`` rounded up to a multiple of 4 (the products go by 4 x 4 tiles)."""
    return (width + 3) // 4 * 4


# Reassociation lets LLVM split each sum over dimensions into SIMD lanes (numba vectorises
# no reduction without it); contraction fuses multiply-adds. Both change only the rounding
# of a dot product (~1e-16 on kernel values; the tests hold K to 1e-12 of numpy's BLAS).
# No other fast-math flag: NaN and infinity checks downstream must keep working.
@njit(cache=True, fastmath={"reassoc", "contract"})
def _inner_products(rows, products):  # pragma: no cover - compiled
    """products[a, b] = rows[a] . rows[b] for b >= a (and in diagonal tiles), by 4 x 4 tiles.

    A tile keeps its 16 sums in registers, and each loaded element of a row serves four
    products (a plain pair loop loads two values per product). The tiles are written
    out here, not called: a call would cost atomic reference counts on both arrays.
    """
    width = rows.shape[0]
    for a in range(0, width, 4):
        for b in range(a, width, 4):
            s00 = s01 = s02 = s03 = 0.0
            s10 = s11 = s12 = s13 = 0.0
            s20 = s21 = s22 = s23 = 0.0
            s30 = s31 = s32 = s33 = 0.0
            for t in range(rows.shape[1]):
                p0 = rows[a, t]
                p1 = rows[a + 1, t]
                p2 = rows[a + 2, t]
                p3 = rows[a + 3, t]
                q0 = rows[b, t]
                q1 = rows[b + 1, t]
                q2 = rows[b + 2, t]
                q3 = rows[b + 3, t]
                s00 += p0 * q0
                s01 += p0 * q1
                s02 += p0 * q2
                s03 += p0 * q3
                s10 += p1 * q0
                s11 += p1 * q1
                s12 += p1 * q2
                s13 += p1 * q3
                s20 += p2 * q0
                s21 += p2 * q1
                s22 += p2 * q2
                s23 += p2 * q3
                s30 += p3 * q0
                s31 += p3 * q1
                s32 += p3 * q2
                s33 += p3 * q3
            products[a, b] = s00
            products[a, b + 1] = s01
            products[a, b + 2] = s02
            products[a, b + 3] = s03
            products[a + 1, b] = s10
            products[a + 1, b + 1] = s11
            products[a + 1, b + 2] = s12
            products[a + 1, b + 3] = s13
            products[a + 2, b] = s20
            products[a + 2, b + 1] = s21
            products[a + 2, b + 2] = s22
            products[a + 2, b + 3] = s23
            products[a + 3, b] = s30
            products[a + 3, b + 1] = s31
            products[a + 3, b + 2] = s32
            products[a + 3, b + 3] = s33


@njit(cache=True)
def node_kernels(
    embeddings, scales, query, candidates, gaussian, sigma, rows, products, gram, rhs
):  # pragma: no cover - compiled
    """K and b of one node, by the formulas of :func:`workers.geometry.kernels.candidate_kernels`.

    ``rows`` (padded(k+1) x dim scratch, zero past row k) gets the scaled candidates
    and, at row k, the scaled query: x / |x| (cosine, in float64) or x (gaussian).
    ``products`` (padded(k+1) square scratch) gets their inner products on and above
    the diagonal (:func:`_inner_products`).
    """
    k = candidates.shape[0]
    dim = embeddings.shape[1]
    for a in range(k + 1):
        point = query if a == k else candidates[a]
        scale = scales[point]
        for t in range(dim):
            rows[a, t] = np.float64(embeddings[point, t]) * scale
    _inner_products(rows, products)
    if not gaussian:
        for a in range(k):
            rhs[a] = min(max(products[a, k] * 0.5 + 0.5, 0.0), 1.0)
            # |cos| can exceed 1 by rounding; K stays in [0, 1] with an exact unit diagonal.
            gram[a, a] = 1.0
            for b in range(a + 1, k):
                value = min(max(products[a, b] * 0.5 + 0.5, 0.0), 1.0)
                gram[a, b] = value
                gram[b, a] = value
        return
    query_sq = products[k, k]
    farthest = 0.0
    for a in range(k):
        # Squared distances by |x|^2 + |z|^2 - 2<x, z>, as the torch path computes them.
        rhs[a] = max(query_sq + products[a, a] - 2.0 * products[a, k], 0.0)
        farthest = max(farthest, rhs[a])
    if sigma > 0.0:
        bandwidth = sigma
    else:
        bandwidth = math.sqrt(farthest) / 3.0
        # All candidates identical to the query: any sigma gives K = 1; 1 avoids 0/0.
        if not bandwidth > 0.0:
            bandwidth = 1.0
    two_sigma_sq = 2.0 * bandwidth * bandwidth
    for a in range(k):
        rhs[a] = math.exp(-rhs[a] / two_sigma_sq)
        gram[a, a] = 1.0
        for b in range(a + 1, k):
            distance = max(products[a, a] + products[b, b] - 2.0 * products[a, b], 0.0)
            value = math.exp(-distance / two_sigma_sq)
            gram[a, b] = value
            gram[b, a] = value


@njit(cache=True)
def kernel_scratch(slots, k, dim):  # pragma: no cover - compiled
    """Per-thread scratch of :func:`node_kernels`, ``slots`` of each: rows, products, gram."""
    width = padded(k + 1)
    return (
        np.zeros((slots, width, dim)),
        np.zeros((slots, width, width)),
        np.zeros((slots, k, k)),
    )


@njit(parallel=True, cache=True)
def solve_vectors_batch(
    embeddings,
    scales,
    queries,
    candidates,
    gaussian,
    sigma,
    ignore_identical,
    tolerances,
    slots,
    weights,
    rhs,
    error,
    settled,
    deficient,
):  # pragma: no cover - compiled
    """Every node of a batch: its K and b from the embeddings, then its solve, in parallel.

    Scratch as in :func:`solve_gram_batch`, one slot per thread; ``deficient`` as there.
    """
    identical, pivot, relative_zero = tolerances
    n_nodes, k = candidates.shape
    dim = embeddings.shape[1]
    rows, products, gram = kernel_scratch(slots, k, dim)
    factor, free, state, work, mask = solver_scratch(slots, k)
    for node in prange(n_nodes):
        slot = get_thread_id()
        node_rhs = rhs[node]
        node_gram = gram[slot]
        node_kernels(
            embeddings,
            scales,
            queries[node],
            candidates[node],
            gaussian,
            sigma,
            rows[slot],
            products[slot],
            node_gram,
            node_rhs,
        )
        # The cosine K_S has rank at most dim + 1: singular whenever k exceeds it.
        deficient[node] = (not gaussian and k > dim + 1) or rank_deficient(node_gram, factor[slot])
        node_mask = mask[slot]
        for j in range(k):
            node_mask[j] = not (ignore_identical and node_rhs[j] >= 1.0 - identical)
        settled[node] = solve_node(
            node_gram,
            node_rhs,
            node_mask,
            weights[node],
            factor[slot],
            free[slot],
            state[slot],
            work[slot],
            identical,
            pivot,
        )
        error[node] = finish_node(node_gram, node_rhs, weights[node], free[slot], relative_zero)


@njit(cache=True)
def inverse_norms(embeddings):  # pragma: no cover - compiled
    n_points, dim = embeddings.shape
    scales = np.empty(n_points)
    for point in range(n_points):
        total = 0.0
        for t in range(dim):
            value = np.float64(embeddings[point, t])
            total += value * value
        scales[point] = 1.0 / math.sqrt(total)
    return scales
