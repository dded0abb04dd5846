"""The memory budget: estimates hold against measured peaks, blocks fit, results don't move.

The measured peaks come from separate processes, never from the estimate itself: a fresh
interpreter imports the engine, warms the same solve path on a tiny set (so that torch,
the compiled kernels and their thread pools are loaded), resets the kernel's high-water
mark (VmHWM) and analyses one set. What the run adds above the resident size it started
from is what the plan sizes; the estimate's ``runtime`` term (interpreter and libraries)
is a host-dependent allowance, not something a plan can shrink, so it is compared apart.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from api_schemas import AnalysisParams
from api_schemas.models import CNNModel, MLPModel
from jobstate import memory_budget as memory_module
from jobstate.errors import InvalidInputError
from jobstate.memory_budget import (
    MAX_SOLVE_BLOCK,
    MemoryBudgetError,
    estimate_set_memory,
    plan_solve,
    plan_solve_block,
)
from jobstate.model_footprint import check_family_fits, family_parameters
from workers.geometry import EmbeddingSet, analyze
from workers.geometry.analysis import build_nnk_graph
from workers.geometry.metrics import (
    class_scores,
    encode_labels,
    per_class_metrics,
    point_metrics,
    reported_classes,
)
from workers.models.families import build_family_model, parameter_count

MIB = 1024**2

_PEAK_SCRIPT = textwrap.dedent(
    """
    import gc, json, sys
    import numpy as np
    from api_schemas import AnalysisParams
    from workers.geometry import EmbeddingSet, analyze, nnk_solve

    def status(field):
        with open("/proc/self/status") as lines:
            return next(int(l.split()[1]) * 1024 for l in lines if l.startswith(field + ":"))

    def run(n, dim, k, budget):
        rng = np.random.default_rng(0)
        points = rng.standard_normal((n, dim)).astype(np.float32)
        labels = rng.integers(0, 10, n)
        analyze([EmbeddingSet(name="s", embeddings=points, labels=labels)],
                params=AnalysisParams(k=k), n_threads=2, memory_budget_bytes=budget)

    n, dim, k, budget = (int(v) for v in sys.argv[1:5])
    if sys.argv[5] == "torch":
        # The batched torch solve (the GPU path, and the CPU path without numba): the
        # one whose (block, k, k) arrays the budget plans.
        nnk_solve.compiled_kernel = lambda: None
    run(200, 8, 20, None)  # lazy imports, kernels, thread pools: the runtime
    gc.collect()
    before = status("VmRSS")
    with open("/proc/self/clear_refs", "w") as clear:
        clear.write("5")  # resets VmHWM to the current resident size (Linux >= 4.0)
    run(n, dim, k, budget)
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over from the parent across fork and
    # exec, so a child of a big pytest would report the parent's peak.
    print(json.dumps({"runtime": before, "growth": status("VmHWM") - before}))
    """
)


def _measured_growth(
    n: int, dim: int, k: int, budget: int | None, *, solve_path: str
) -> tuple[int, int]:
    """(runtime, growth): the resident size of a fresh, warmed process, and how far its
    high-water mark rose above it while analysing one set; ``solve_path`` "torch" or
    "compiled"."""
    arguments = [str(n), str(dim), str(k), str(budget or 1 << 50), solve_path]
    completed = subprocess.run(
        [sys.executable, "-c", _PEAK_SCRIPT, *arguments],
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    measured = json.loads(completed.stdout.strip().splitlines()[-1])
    return measured["runtime"], measured["growth"]


@pytest.mark.slow
@pytest.mark.parametrize("solve_path", ["torch", "compiled"])
@pytest.mark.parametrize(("n", "dim", "k"), [(400, 64, 128), (1500, 256, 40)])
def test_a_run_planned_for_a_budget_peaks_below_it_and_below_its_estimate(
    n: int, dim: int, k: int, solve_path: str
) -> None:
    """What the run adds to a warmed process fits the share of the budget the plan gave
    its arrays (the budget less the runtime allowance), and the estimate of them."""
    if solve_path == "compiled":
        pytest.importorskip("numba")
    budget = 480 * MIB
    block, threads = plan_solve(n, dim, k, budget_bytes=budget, threads=2)
    estimate = estimate_set_memory(n, dim, k, n_classes=10, solve_block=block, threads=threads)
    allowance = estimate.terms["runtime"]
    runtime, growth = _measured_growth(n, dim, k, budget, solve_path=solve_path)
    context = {"runtime_mib": runtime / MIB, "growth_mib": growth / MIB, **estimate.terms}
    assert growth <= budget - allowance, context
    assert growth <= estimate.total - allowance, context


@pytest.mark.slow
def test_unplanned_blocks_would_have_overrun_the_same_budget() -> None:
    """The control: without the budget the torch solve's blocks grow well past the
    budget's share for arrays.

    The compiled solve needs no plan (a few k x k arrays per thread): unplanned, it
    stays within the share that the torch path overruns.
    """
    estimate = estimate_set_memory(400, 64, 128, n_classes=10, threads=2)
    share = 480 * MIB - estimate.terms["runtime"]
    _, growth = _measured_growth(400, 64, 128, None, solve_path="torch")
    assert growth > share, growth / MIB
    assert growth <= estimate.total - estimate.terms["runtime"], growth / MIB
    pytest.importorskip("numba")
    _, compiled_growth = _measured_growth(400, 64, 128, None, solve_path="compiled")
    assert compiled_growth <= share, compiled_growth / MIB


def test_plan_picks_the_largest_power_of_two_block_that_fits() -> None:
    n, dim, k = 5000, 32, 64
    for budget in (520 * MIB, 700 * MIB, 2048 * MIB):
        block = plan_solve_block(n, dim, k, budget_bytes=budget, threads=2)
        assert block & (block - 1) == 0 and block <= MAX_SOLVE_BLOCK
        assert estimate_set_memory(n, dim, k, solve_block=block, threads=2).total <= budget
        if block < MAX_SOLVE_BLOCK:
            bigger = estimate_set_memory(n, dim, k, solve_block=2 * block, threads=2)
            assert bigger.total > budget


def test_a_budget_that_one_row_cannot_fit_is_refused_naming_k() -> None:
    with pytest.raises(MemoryBudgetError) as refused:
        plan_solve(1100, 64, 1024, budget_bytes=512 * MIB, threads=2)
    assert refused.value.field == "params.k"
    assert "NNKGEO_WORKER_MEMORY_BYTES" in refused.value.message
    assert "512 MiB" in refused.value.message


def test_threads_are_given_up_before_the_job_is() -> None:
    n, dim, k = 1100, 64, 1024
    one_thread_one_row = estimate_set_memory(n, dim, k, solve_block=1, threads=1).total
    budget = one_thread_one_row + 10 * MIB
    assert plan_solve(n, dim, k, budget_bytes=budget, threads=2) == (1, 1)


def test_huge_dimension_is_refused_naming_the_embeddings() -> None:
    with pytest.raises(MemoryBudgetError) as refused:
        plan_solve(40, 2_000_000, 39, budget_bytes=512 * MIB, threads=1)
    assert refused.value.field == "embeddings"
    assert "kernel_vectors" in refused.value.message


def test_a_budget_that_fits_the_default_blocks_leaves_the_graph_bit_for_bit() -> None:
    points = np.random.default_rng(5).standard_normal((700, 16)).astype(np.float32)
    params = AnalysisParams(k=20)
    free = build_nnk_graph(points, params=params, n_threads=2)
    roomy = build_nnk_graph(points, params=params, n_threads=2, memory_budget_bytes=4 << 30)
    np.testing.assert_array_equal(free.weights, roomy.weights)
    np.testing.assert_array_equal(free.reconstruction_error, roomy.reconstruction_error)


def test_smaller_blocks_change_weights_only_in_the_last_bits() -> None:
    """Batched BLAS rounds differently by batch size: blocks below the default, chosen only
    when the budget needs them, move weights by a few ulps, never the support."""
    points = np.random.default_rng(5).standard_normal((700, 16)).astype(np.float32)
    params = AnalysisParams(k=20)
    free = build_nnk_graph(points, params=params, n_threads=2)
    tight_budget = estimate_set_memory(700, 16, 20, solve_block=8, threads=2).total
    tight = build_nnk_graph(points, params=params, n_threads=2, memory_budget_bytes=tight_budget)
    np.testing.assert_array_equal(free.candidate_indices, tight.candidate_indices)
    np.testing.assert_array_equal(free.weights > 0, tight.weights > 0)
    np.testing.assert_allclose(free.weights, tight.weights, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(
        free.reconstruction_error, tight.reconstruction_error, rtol=1e-10, atol=1e-15
    )


def test_class_scores_in_blocks_equal_the_whole_matrix(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(2)
    n, k, n_classes = 500, 12, 37
    candidates = np.stack(
        [rng.choice(np.delete(np.arange(n), i), k, replace=False) for i in range(n)]
    )
    weights = rng.random((n, k)) * (rng.random((n, k)) > 0.4)
    codes = rng.integers(0, n_classes, n)
    whole = class_scores(candidates, weights, codes, n_classes)  # one block: the reference
    # Blocks of 3 rows (3 x 37 x 8 bytes).
    monkeypatch.setattr(memory_module, "METRICS_BLOCK_BYTES", 3 * n_classes * 8)
    blocked = point_metrics(candidates, weights, weights, codes, n_classes)
    np.testing.assert_array_equal(blocked.predicted, whole.argmax(axis=1))
    total = whole.sum(axis=1)
    own = whole[np.arange(n), codes]
    expected_soft = 1.0 - np.divide(own, total, out=np.zeros(n), where=total > 0)
    np.testing.assert_array_equal(blocked.soft_error, expected_soft)


def test_per_class_lists_the_largest_classes_with_the_values_of_boolean_masks() -> None:
    rng = np.random.default_rng(4)
    labels = np.concatenate([np.arange(1200), rng.integers(0, 40, 3000)])
    classes, codes = encode_labels(labels)
    n, k = codes.size, 6
    candidates = rng.integers(0, n, (n, k))
    weights = rng.random((n, k))
    points = point_metrics(candidates, weights, weights, codes, classes.size)
    shown = reported_classes(codes, classes.size, limit=100)
    assert shown.size == 100
    counts = np.bincount(codes)
    assert counts[shown].min() >= np.delete(counts, shown).max()
    listed = per_class_metrics(points, classes, shown=shown)
    for item, code in zip(listed, shown, strict=True):
        mask = codes == code
        assert item.n == int(mask.sum())
        assert item.loo_error.soft_nnk_weighted == float(points.soft_error[mask].mean())
        assert item.homogeneity.nnk_mean == float(points.nnk_same_share[mask].mean())


def test_a_report_with_12000_classes_lists_1000_and_says_so() -> None:
    rng = np.random.default_rng(8)
    points = rng.standard_normal((12_000, 8)).astype(np.float32)
    analysis = analyze(
        [EmbeddingSet(name="s", embeddings=points, labels=np.arange(12_000))],
        params=AnalysisParams(k=5),
    )
    (report,) = analysis.report.sets
    assert len(report.per_class) == 1000 and len(report.nnk_degree.per_class or {}) == 1000
    assert any("1000 largest of 12000 classes" in warning for warning in report.warnings)
    assert len(analysis.report.model_dump_json()) < 1_000_000


@pytest.mark.parametrize(
    ("spec", "input_shape"),
    [
        (MLPModel(family="mlp", depth=1, width=7), (64,)),
        (MLPModel(family="mlp", depth=3, width=33), (1, 8, 8)),
        (CNNModel(family="cnn", width_multiplier=0.5), (1, 8, 8)),
        (CNNModel(family="cnn", width_multiplier=2.0), (3, 12, 10)),
    ],
)
def test_family_parameters_by_arithmetic_equal_the_built_model(spec, input_shape) -> None:
    torch.manual_seed(0)
    built = build_family_model(spec, input_shape=input_shape, n_classes=10)
    assert family_parameters(spec, input_shape=input_shape, n_classes=10) == parameter_count(built)


def test_giant_mlp_cannot_be_trained_within_a_4_gib_budget() -> None:
    giant = MLPModel(family="mlp", depth=32, width=16_384)
    assert family_parameters(giant, input_shape=(64,), n_classes=10) > 8_000_000_000
    with pytest.raises(InvalidInputError) as refused:
        check_family_fits(
            giant,
            input_shape=(64,),
            n_classes=10,
            batch_size=64,
            budget_bytes=4 * 1024**3,
            field="study.model.widths[0]",
        )
    assert refused.value.field == "study.model.widths[0]"
    check_family_fits(
        MLPModel(family="mlp", depth=2, width=512),
        input_shape=(64,),
        n_classes=10,
        batch_size=64,
        budget_bytes=4 * 1024**3,
        field="study.model.widths[0]",
    )
