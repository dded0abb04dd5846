"""The compiled half of the CPU NNK solve (numba): per-node QP, kernels, parallel loops.

:mod:`workers.geometry.nnk_kernel` is the interface and documents the method, the
semantics and the compilation cache. Everything compiled is in this one file on
purpose: numba invalidates a cached function when the file that defines it changes,
not when a function it calls from another file does. For the same reason the
tolerances shared with the torch path (:mod:`workers.geometry.nnk_common`) come in as
arguments, ``tolerances = (identical, pivot, relative_zero)``, and are not compiled in.

Every function works in caller-provided scratch. The parallel loops hand out blocks of
nodes, and each block allocates its own scratch, once: per-thread slots of one array
shared cache lines between threads (``state`` and ``mask``, k bytes a slot, were one
line for both), and so did the reference count of every shared array a node took a
view of (``weights[node]``); each write there sends the line to the other core. A
block copies a node's inputs in and its outputs out element by element instead.
While a node is solved, the rows of the next node's candidates are prefetched: they
lie anywhere in the embeddings, mostly outside the core's caches. Five habits keep a
node at a few microseconds:

- indices are unsigned (``_at``, below), so that numba adds no wrap-around check;
- arrays are indexed in place, never sliced or viewed (``a[i]``) in a loop, and the
  steps of the active set are written out, not called: numba updates the reference
  count of every view and every array argument of a call with an atomic instruction,
  and at k = 30 those cost more than the arithmetic;
- a running sum is a chain of dependent additions, each waiting for the one before:
  where several independent sums are due (the entries of a triangular solve, the
  rows of theta' K theta), a loop carries two or four side by side, each still in
  its own order;
- no branch depends on a candidate's state in the scans (mispredictions dominate
  otherwise);
- fastmath is off (the pivot and KKT tests compare small differences, NaN checks must
  survive) except reassociation and contraction in :func:`_inner_products`, where they
  only change the rounding of a dot product and let it vectorise.
"""

from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import njit, prange, types
from numba.core import cgutils
from numba.extending import intrinsic

# numba wraps a negative index of a signed integer (``a[-1]``) on every access: a
# compare and a select that also keep LLVM from vectorising the loop around it. Indices
# that cannot be negative are cast to unsigned (``a[_at(i)]``), which numba takes as
# they are: at k = 30 that halves the rank test and takes a quarter off the active set.
_at = np.uint64

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


@intrinsic
def _prefetch(typingctx, array, index):  # pragma: no cover - compiled
    """Start loading the cache line of ``array[index]`` into L2, not waiting for it.

    ``index`` is an integer or a tuple of them, one per dimension. LLVM's
    ``llvm.prefetch`` (read, locality 2: a prefetcht1 on x86), which numba does not
    expose.
    """
    rank = len(index) if isinstance(index, types.BaseTuple) else 1

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        indices = cgutils.unpack_tuple(builder, args[1], rank) if rank > 1 else [args[1]]
        address = cgutils.get_item_pointer(
            context,
            builder,
            array_type,
            context.make_array(array_type)(context, builder, args[0]),
            indices,
            wraparound=False,
        )
        word = ir.IntType(32)
        prefetch = cgutils.get_or_insert_function(
            builder.module,
            ir.FunctionType(ir.VoidType(), [cgutils.voidptr_t, word, word, word]),
            "llvm.prefetch.p0",
        )
        builder.call(
            prefetch, [builder.bitcast(address, cgutils.voidptr_t), word(0), word(2), word(1)]
        )
        return context.get_dummy_value()

    return types.void(array, index), codegen


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
        allowed[_at(j)] = allowed[_at(j)] and rhs[_at(j)] > 0.0
    # Shadows are rare: first count the entries off the diagonal at K = 1: those of the
    # whole matrix in one pass over its k * k contiguous entries (long enough for the
    # vector loop; rows of k = 30 would each end in its scalar remainder), less the
    # diagonal's.
    entries = gram.reshape(k * k)
    off_diagonal_ones = 0
    for index in range(k * k):
        off_diagonal_ones += entries[_at(index)] >= threshold
    for j in range(k):
        off_diagonal_ones -= gram[_at(j), _at(j)] >= threshold
    first_shadowed = k - 1 if off_diagonal_ones > 0 else 0
    for j in range(first_shadowed, 0, -1):
        if allowed[_at(j)]:
            # Row j, not column j (K is symmetric): contiguous. An OR over the whole row,
            # not a search with an early exit, so that it vectorises.
            shadowed = False
            for i in range(j):
                shadowed |= (gram[_at(j), _at(i)] >= threshold) & allowed[_at(i)]
            allowed[_at(j)] = not shadowed
    for j in range(k):
        if allowed[_at(j)] and rhs[_at(j)] >= threshold:
            return j
    return -1


@njit(cache=True)
def _remove(factor, work, free, size, position):  # pragma: no cover - compiled
    """Delete row/column ``position`` of the factor of K_FF (size x size) by Givens rotations.

    Deleting row p of L leaves rows p.. with one entry right of the diagonal; rotating
    columns (r, r+1) zeroes it and keeps L L' = K_FF without the deleted variable.
    """
    for row in range(position, size - 1):
        free[_at(row)] = free[_at(row + 1)]
        for col in range(row + 2):
            factor[_at(row), _at(col)] = factor[_at(row + 1), _at(col)]
    for row in range(position, size - 1):
        a = factor[_at(row), _at(row)]
        b = factor[_at(row), _at(row + 1)]
        norm = math.hypot(a, b)
        cos, sin = (1.0, 0.0) if norm == 0.0 else (a / norm, b / norm)
        for below in range(row, size - 1):
            left = factor[_at(below), _at(row)]
            right = factor[_at(below), _at(row + 1)]
            factor[_at(below), _at(row)] = cos * left + sin * right
            factor[_at(below), _at(row + 1)] = cos * right - sin * left
        factor[_at(row), _at(row)] = norm
        factor[_at(row), _at(row + 1)] = 0.0
        work[_INVERSE_DIAGONAL, _at(row)] = 1.0 / norm


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
        weights[_at(j)] = 0.0
        state[_at(j)] = _OPEN if allowed[_at(j)] else _BARRED
    size = 0
    solved = 0  # rows of work[_HALF] still valid
    for _ in range(4 * k + 16):
        # K w - b by columns of K (rows, K being symmetric), in a fixed order. Two
        # columns a pass, added one after the other (the same rounding): each pass
        # loads and stores the gradient, and the next pass waits for those stores.
        for j in range(k):
            work[_GRADIENT, _at(j)] = -rhs[_at(j)]
        for position in range(0, size - 1, 2):
            column = _at(free[_at(position)])
            weight = weights[column]
            other = _at(free[_at(position + 1)])
            other_weight = weights[other]
            for j in range(k):
                work[_GRADIENT, _at(j)] = (
                    work[_GRADIENT, _at(j)] + gram[column, _at(j)] * weight
                ) + gram[other, _at(j)] * other_weight
        if size % 2 == 1:
            column = _at(free[_at(size - 1)])
            weight = weights[column]
            for j in range(k):
                work[_GRADIENT, _at(j)] += gram[column, _at(j)] * weight
        # The steepest descent among open candidates, the first of equals. Arithmetic,
        # not a branch on the state (LLVM turns even a select back into one, and its
        # mispredictions cost more than the rest of the scan): a candidate not open
        # sinks far below any tolerance. Two running maxima (even and odd candidates),
        # merged after: one is a chain of dependent compares, a few cycles a candidate.
        entering = -1
        steepest = pivot
        odd_entering = -1
        odd_steepest = pivot
        for even in range(0, k - 1, 2):
            descent = -work[_GRADIENT, _at(even)] - _SUNK * (state[_at(even)] != _OPEN)
            if descent > steepest:
                steepest = descent
                entering = even
            odd = even + 1
            descent = -work[_GRADIENT, _at(odd)] - _SUNK * (state[_at(odd)] != _OPEN)
            if descent > odd_steepest:
                odd_steepest = descent
                odd_entering = odd
        if k % 2 == 1:
            descent = -work[_GRADIENT, _at(k - 1)] - _SUNK * (state[_at(k - 1)] != _OPEN)
            if descent > steepest:
                steepest = descent
                entering = k - 1
        if odd_steepest > steepest or (odd_steepest == steepest and 0 <= odd_entering < entering):
            steepest = odd_steepest
            entering = odd_entering
        if entering < 0:
            # A plain loop: numba compiles no generator expressions.
            for j in range(k):
                if state[_at(j)] == _KEPT_OUT and -work[_GRADIENT, _at(j)] > _KEPT_OUT_KKT:
                    return False
            return True
        new = _at(entering)
        last = _at(size)
        # Append the entering column to L: solve L l = K[F, entering] by rows, each
        # entry a running difference kept in a register (the order of the operations
        # is that of a solve by columns; a solve by columns stores and reloads every
        # entry once per column, and each reload waits for the store before it). Four
        # rows at a time: each difference is a chain of dependent subtractions, and
        # four chains side by side fill the time that one spends waiting on the last.
        # Each entry still takes its terms in the same order.
        unfinished = 0
        while unfinished + 3 < size:
            r0 = _at(unfinished)
            r1 = r0 + _at(1)
            r2 = r0 + _at(2)
            r3 = r0 + _at(3)
            t0 = gram[new, _at(free[r0])]
            t1 = gram[new, _at(free[r1])]
            t2 = gram[new, _at(free[r2])]
            t3 = gram[new, _at(free[r3])]
            for col in range(unfinished):
                solved_entry = factor[last, _at(col)]
                t0 -= factor[r0, _at(col)] * solved_entry
                t1 -= factor[r1, _at(col)] * solved_entry
                t2 -= factor[r2, _at(col)] * solved_entry
                t3 -= factor[r3, _at(col)] * solved_entry
            y0 = t0 * work[_INVERSE_DIAGONAL, r0]
            factor[last, r0] = y0
            t1 -= factor[r1, r0] * y0
            t2 -= factor[r2, r0] * y0
            t3 -= factor[r3, r0] * y0
            y1 = t1 * work[_INVERSE_DIAGONAL, r1]
            factor[last, r1] = y1
            t2 -= factor[r2, r1] * y1
            t3 -= factor[r3, r1] * y1
            y2 = t2 * work[_INVERSE_DIAGONAL, r2]
            factor[last, r2] = y2
            t3 -= factor[r3, r2] * y2
            factor[last, r3] = t3 * work[_INVERSE_DIAGONAL, r3]
            unfinished += 4
        for row in range(unfinished, size):
            total = gram[new, _at(free[_at(row)])]
            for col in range(row):
                total -= factor[_at(row), _at(col)] * factor[last, _at(col)]
            factor[last, _at(row)] = total * work[_INVERSE_DIAGONAL, _at(row)]
        residual = gram[new, new]
        for col in range(size):
            residual -= factor[last, _at(col)] * factor[last, _at(col)]
        if not residual > _SINGULAR_PIVOT * gram[new, new]:
            state[new] = _KEPT_OUT
            continue
        factor[last, last] = math.sqrt(residual)
        work[_INVERSE_DIAGONAL, last] = 1.0 / factor[last, last]
        free[last] = entering
        state[new] = _IN_FREE
        size += 1
        first_step = True
        while True:
            # work[_CANDIDATE, :size] = K_FF^{-1} b_F. work[_HALF] = L^{-1} b_F is kept:
            # its rows before ``solved`` are still valid (L and F only grew since), so an
            # appended variable costs one row of the forward solve. The back substitution
            # keeps each entry's running difference in a register, as the append does.
            for row in range(solved, size):
                total = rhs[_at(free[_at(row)])]
                for col in range(row):
                    total -= factor[_at(row), _at(col)] * work[_HALF, _at(col)]
                work[_HALF, _at(row)] = total * work[_INVERSE_DIAGONAL, _at(row)]
            # Four columns at a time, as the append does rows.
            unfinished = size - 1
            while unfinished >= 3:
                c0 = _at(unfinished)
                c1 = c0 - _at(1)
                c2 = c0 - _at(2)
                c3 = c0 - _at(3)
                t0 = work[_HALF, c0]
                t1 = work[_HALF, c1]
                t2 = work[_HALF, c2]
                t3 = work[_HALF, c3]
                for row in range(size - 1, unfinished, -1):
                    solved_entry = work[_CANDIDATE, _at(row)]
                    t0 -= factor[_at(row), c0] * solved_entry
                    t1 -= factor[_at(row), c1] * solved_entry
                    t2 -= factor[_at(row), c2] * solved_entry
                    t3 -= factor[_at(row), c3] * solved_entry
                x0 = t0 * work[_INVERSE_DIAGONAL, c0]
                work[_CANDIDATE, c0] = x0
                t1 -= factor[c0, c1] * x0
                t2 -= factor[c0, c2] * x0
                t3 -= factor[c0, c3] * x0
                x1 = t1 * work[_INVERSE_DIAGONAL, c1]
                work[_CANDIDATE, c1] = x1
                t2 -= factor[c1, c2] * x1
                t3 -= factor[c1, c3] * x1
                x2 = t2 * work[_INVERSE_DIAGONAL, c2]
                work[_CANDIDATE, c2] = x2
                t3 -= factor[c2, c3] * x2
                work[_CANDIDATE, c3] = t3 * work[_INVERSE_DIAGONAL, c3]
                unfinished -= 4
            for col in range(unfinished, -1, -1):
                total = work[_HALF, _at(col)]
                for row in range(size - 1, col, -1):
                    total -= factor[_at(row), _at(col)] * work[_CANDIDATE, _at(row)]
                work[_CANDIDATE, _at(col)] = total * work[_INVERSE_DIAGONAL, _at(col)]
            solved = size
            feasible = True
            for position in range(size):
                if not math.isfinite(work[_CANDIDATE, _at(position)]):
                    return False
                feasible = feasible and work[_CANDIDATE, _at(position)] > 0.0
            if feasible:
                for position in range(size):
                    weights[_at(free[_at(position)])] = work[_CANDIDATE, _at(position)]
                for j in range(k):
                    state[_at(j)] = _OPEN if state[_at(j)] == _KEPT_OUT else state[_at(j)]
                break
            if first_step and work[_CANDIDATE, _at(size - 1)] <= 0.0:
                # The entering variable cannot grow (rounding at the pivot tolerance):
                # leave it out, as Lawson and Hanson do, and pick another.
                size -= 1
                solved = size
                state[new] = _KEPT_OUT
                break
            first_step = False
            # Step from the weights towards the candidate as far as feasibility allows.
            step = 1.0
            blocking = -1
            for position in range(size):
                if work[_CANDIDATE, _at(position)] <= 0.0:
                    current = weights[_at(free[_at(position)])]
                    ratio = current / (current - work[_CANDIDATE, _at(position)])
                    if ratio < step:
                        step = ratio
                        blocking = position
            for position in range(size):
                member = _at(free[_at(position)])
                current = weights[member]
                weights[member] = current + step * (work[_CANDIDATE, _at(position)] - current)
            if blocking >= 0:
                weights[_at(free[_at(blocking)])] = 0.0
            for position in range(size - 1, -1, -1):
                member = _at(free[_at(position)])
                if weights[member] <= 0.0:
                    weights[member] = 0.0
                    state[member] = _OPEN
                    _remove(factor, work, free, size, position)
                    size -= 1
                    solved = min(solved, position)
            if size == 0:
                break
    return False


@njit(cache=True)
def rank_deficient(gram, factor, panel):  # pragma: no cover - compiled
    """Whether K is numerically singular: a Cholesky pivot vanishes.

    Scratch: ``factor`` (k, k), ``panel`` (4, k) (the solve's ``work`` serves).

    The pivots are those of the Cholesky factorisation R'R = K in the order of the
    candidates, and the first at or below ``_SINGULAR_PIVOT * K_jj`` stops it: the rule
    by which the active set keeps a column out of F. Then the NNK optimum may not be
    unique (the solve still returns a basic one). O(k^3 / 6) when K is regular.

    Right looking, on the upper triangle of a copy, by panels of four rows: the rows of
    R in a panel are finished one after the other (each updated by the ones before it
    in the panel), then every row below takes the four updates in one pass. The
    operations and their order are those of the unblocked factorisation (the same
    rounding); a pass does four times the work of a rank-one update for the same
    cost of starting a short loop, which at k = 30 is most of the cost.
    """
    k = gram.shape[0]
    for a in range(k):
        for b in range(a, k):
            factor[_at(a), _at(b)] = gram[_at(a), _at(b)]
    for first in range(0, k, 4):
        height = min(4, k - first)
        for p in range(height):
            row = _at(first + p)
            for q in range(p):
                scaled = panel[_at(q), row]
                for a in range(first + p, k):
                    factor[row, _at(a)] -= scaled * panel[_at(q), _at(a)]
            pivot = factor[row, row]
            if not pivot > _SINGULAR_PIVOT * gram[row, row]:
                return True
            inverse = 1.0 / math.sqrt(pivot)
            for a in range(first + p, k):
                panel[_at(p), _at(a)] = factor[row, _at(a)] * inverse
        if height < 4:
            break
        for b in range(first + 4, k):
            below = _at(b)
            s0 = panel[0, below]
            s1 = panel[1, below]
            s2 = panel[2, below]
            s3 = panel[3, below]
            for a in range(b, k):
                at = _at(a)
                factor[below, at] = (
                    factor[below, at]
                    - s0 * panel[0, at]
                    - s1 * panel[1, at]
                    - s2 * panel[2, at]
                    - s3 * panel[3, at]
                )
    return False


@njit(cache=True)
def finish_node(gram, rhs, weights, support, relative_zero):  # pragma: no cover - compiled
    """Apply the relative zero cut; return e = 1 - 2 theta' b + theta' K theta.

    ``support`` is integer scratch of length k.
    """
    k = rhs.shape[0]
    largest = 0.0
    for j in range(k):
        largest = max(largest, weights[_at(j)])
    count = 0
    linear = 0.0
    for j in range(k):
        if weights[_at(j)] > relative_zero * largest:
            support[_at(count)] = j
            count += 1
            linear += weights[_at(j)] * rhs[_at(j)]
        else:
            weights[_at(j)] = 0.0
    # theta' K theta by rows of the support, each row's sum in the order of its columns
    # and the rows' in theirs; two rows a pass, so that their two chains of dependent
    # additions run side by side.
    quadratic = 0.0
    a = 0
    while a + 1 < count:
        row = _at(support[_at(a)])
        other = _at(support[_at(a + 1)])
        total = 0.0
        other_total = 0.0
        for b in range(count):
            column = _at(support[_at(b)])
            total += gram[row, column] * weights[column]
            other_total += gram[other, column] * weights[column]
        quadratic += weights[row] * total
        quadratic += weights[other] * other_total
        a += 2
    if a < count:
        row = _at(support[_at(a)])
        total = 0.0
        for b in range(count):
            column = _at(support[_at(b)])
            total += gram[row, column] * weights[column]
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
def solver_scratch(k):  # pragma: no cover - compiled
    """Scratch of :func:`solve_node` for one block of nodes.

    factor (k, k), free (k,), state (k,), work (4, k), mask (k,).
    """
    return (
        np.zeros((k, k)),
        np.zeros(k, dtype=np.int64),
        np.zeros(k, dtype=np.int8),
        np.zeros((4, k)),
        np.zeros(k, dtype=np.bool_),
    )


@njit(parallel=True, cache=True)
def solve_gram_batch(
    gram, rhs, allowed, tolerances, block, weights, error, settled, deficient
):  # pragma: no cover - compiled
    """Every node of a batch from its K and b, blocks of ``block`` nodes in parallel.

    Each block works in scratch of its own, allocated once per block: neither
    per-thread slots of one array (neighbouring slots share cache lines) nor views of
    the shared arrays (each view updates its array's reference count, one cache line
    that every thread writes). ``deficient[node]`` gets :func:`rank_deficient` of the
    node's K.
    """
    identical, pivot, relative_zero = tolerances
    n_nodes, k = rhs.shape
    for first in prange((n_nodes + block - 1) // block):
        factor, free, state, work, mask = solver_scratch(k)
        node_gram = np.empty((k, k))
        node_rhs = np.empty(k)
        node_weights = np.empty(k)
        for node in range(first * block, min(first * block + block, n_nodes)):
            at = _at(node)
            for a in range(k):
                node_rhs[_at(a)] = rhs[at, _at(a)]
                mask[_at(a)] = allowed[at, _at(a)]
                for b in range(k):
                    node_gram[_at(a), _at(b)] = gram[at, _at(a), _at(b)]
            deficient[at] = rank_deficient(node_gram, factor, work)
            settled[at] = solve_node(
                node_gram,
                node_rhs,
                mask,
                node_weights,
                factor,
                free,
                state,
                work,
                identical,
                pivot,
            )
            error[at] = finish_node(node_gram, node_rhs, node_weights, free, relative_zero)
            for a in range(k):
                weights[at, _at(a)] = node_weights[_at(a)]


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
    for first in range(0, width, 4):
        a = _at(first)
        for second in range(first, width, 4):
            b = _at(second)
            s00 = s01 = s02 = s03 = 0.0
            s10 = s11 = s12 = s13 = 0.0
            s20 = s21 = s22 = s23 = 0.0
            s30 = s31 = s32 = s33 = 0.0
            for step in range(rows.shape[1]):
                t = _at(step)
                p0 = rows[a, t]
                p1 = rows[a + _at(1), t]
                p2 = rows[a + _at(2), t]
                p3 = rows[a + _at(3), t]
                q0 = rows[b, t]
                q1 = rows[b + _at(1), t]
                q2 = rows[b + _at(2), t]
                q3 = rows[b + _at(3), t]
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
            products[a, b + _at(1)] = s01
            products[a, b + _at(2)] = s02
            products[a, b + _at(3)] = s03
            products[a + _at(1), b] = s10
            products[a + _at(1), b + _at(1)] = s11
            products[a + _at(1), b + _at(2)] = s12
            products[a + _at(1), b + _at(3)] = s13
            products[a + _at(2), b] = s20
            products[a + _at(2), b + _at(1)] = s21
            products[a + _at(2), b + _at(2)] = s22
            products[a + _at(2), b + _at(3)] = s23
            products[a + _at(3), b] = s30
            products[a + _at(3), b + _at(1)] = s31
            products[a + _at(3), b + _at(2)] = s32
            products[a + _at(3), b + _at(3)] = s33


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
    last = _at(k)
    for row in range(k + 1):
        a = _at(row)
        point = _at(query if row == k else candidates[a])
        scale = scales[point]
        for t in range(dim):
            rows[a, _at(t)] = np.float64(embeddings[point, _at(t)]) * scale
    _inner_products(rows, products)
    if not gaussian:
        for row in range(k):
            a = _at(row)
            rhs[a] = min(max(products[a, last] * 0.5 + 0.5, 0.0), 1.0)
            # |cos| can exceed 1 by rounding; K stays in [0, 1] with an exact unit diagonal.
            gram[a, a] = 1.0
            for column in range(row + 1, k):
                b = _at(column)
                value = min(max(products[a, b] * 0.5 + 0.5, 0.0), 1.0)
                gram[a, b] = value
                gram[b, a] = value
        return
    query_sq = products[last, last]
    farthest = 0.0
    for row in range(k):
        a = _at(row)
        # Squared distances by |x|^2 + |z|^2 - 2<x, z>, as the torch path computes them.
        rhs[a] = max(query_sq + products[a, a] - 2.0 * products[a, last], 0.0)
        farthest = max(farthest, rhs[a])
    if sigma > 0.0:
        bandwidth = sigma
    else:
        bandwidth = math.sqrt(farthest) / 3.0
        # All candidates identical to the query: any sigma gives K = 1; 1 avoids 0/0.
        if not bandwidth > 0.0:
            bandwidth = 1.0
    two_sigma_sq = 2.0 * bandwidth * bandwidth
    for row in range(k):
        a = _at(row)
        rhs[a] = math.exp(-rhs[a] / two_sigma_sq)
        gram[a, a] = 1.0
        for column in range(row + 1, k):
            b = _at(column)
            distance = max(products[a, a] + products[b, b] - 2.0 * products[a, b], 0.0)
            value = math.exp(-distance / two_sigma_sq)
            gram[a, b] = value
            gram[b, a] = value


@njit(cache=True)
def kernel_scratch(k, dim):  # pragma: no cover - compiled
    """Scratch of :func:`node_kernels` for one block of nodes: rows, products, gram."""
    width = padded(k + 1)
    return np.zeros((width, dim)), np.zeros((width, width)), np.zeros((k, k))


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
    block,
    weights,
    rhs,
    error,
    settled,
    deficient,
):  # pragma: no cover - compiled
    """Every node of a batch: its K and b from the embeddings, then its solve, in parallel.

    Blocks of ``block`` nodes, each in scratch of its own, as in
    :func:`solve_gram_batch`; ``deficient`` as there.
    """
    identical, pivot, relative_zero = tolerances
    n_nodes, k = candidates.shape
    dim = embeddings.shape[1]
    for first in prange((n_nodes + block - 1) // block):
        rows, products, gram = kernel_scratch(k, dim)
        factor, free, state, work, mask = solver_scratch(k)
        node_candidates = np.empty(k, dtype=np.int64)
        node_rhs = np.empty(k)
        node_weights = np.empty(k)
        for node in range(first * block, min(first * block + block, n_nodes)):
            at = _at(node)
            for j in range(k):
                node_candidates[_at(j)] = candidates[at, _at(j)]
            # The rows of the next node's candidates are scattered over the embeddings
            # (mostly outside L2): ask for them now, so they arrive during this solve.
            if node + 1 < n_nodes:
                for j in range(k + 1):
                    point = _at(queries[at + _at(1)] if j == k else candidates[at + _at(1), _at(j)])
                    _prefetch(scales, point)
                    for t in range(0, dim, 16):
                        _prefetch(embeddings, (point, _at(t)))
                    _prefetch(embeddings, (point, _at(dim - 1)))
            node_kernels(
                embeddings,
                scales,
                queries[at],
                node_candidates,
                gaussian,
                sigma,
                rows,
                products,
                gram,
                node_rhs,
            )
            # The cosine K_S has rank at most dim + 1: singular whenever k exceeds it.
            deficient[at] = (not gaussian and k > dim + 1) or rank_deficient(gram, factor, work)
            for j in range(k):
                mask[_at(j)] = not (ignore_identical and node_rhs[_at(j)] >= 1.0 - identical)
            settled[at] = solve_node(
                gram,
                node_rhs,
                mask,
                node_weights,
                factor,
                free,
                state,
                work,
                identical,
                pivot,
            )
            error[at] = finish_node(gram, node_rhs, node_weights, free, relative_zero)
            for j in range(k):
                weights[at, _at(j)] = node_weights[_at(j)]
                rhs[at, _at(j)] = node_rhs[_at(j)]


@njit(cache=True)
def inverse_norms(embeddings):  # pragma: no cover - compiled
    """1 / |x| of every row, in float64, each sum of squares in the order of the columns.

    Four rows a pass: a row's sum is a chain of dependent additions, and four chains
    side by side keep the adder busy (one row at a time, this serial step took a
    tenth of a node's time per node on two threads).
    """
    n_points, dim = embeddings.shape
    scales = np.empty(n_points)
    first = 0
    while first + 3 < n_points:
        r0 = _at(first)
        r1 = r0 + _at(1)
        r2 = r0 + _at(2)
        r3 = r0 + _at(3)
        t0 = t1 = t2 = t3 = 0.0
        for t in range(dim):
            v0 = np.float64(embeddings[r0, _at(t)])
            v1 = np.float64(embeddings[r1, _at(t)])
            v2 = np.float64(embeddings[r2, _at(t)])
            v3 = np.float64(embeddings[r3, _at(t)])
            t0 += v0 * v0
            t1 += v1 * v1
            t2 += v2 * v2
            t3 += v3 * v3
        scales[r0] = 1.0 / math.sqrt(t0)
        scales[r1] = 1.0 / math.sqrt(t1)
        scales[r2] = 1.0 / math.sqrt(t2)
        scales[r3] = 1.0 / math.sqrt(t3)
        first += 4
    for point in range(first, n_points):
        total = 0.0
        for t in range(dim):
            value = np.float64(embeddings[_at(point), _at(t)])
            total += value * value
        scales[_at(point)] = 1.0 / math.sqrt(total)
    return scales
