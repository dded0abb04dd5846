"""Kernel values among each point's candidates: the data of its NNK problem.

Both kernels are normalised so that K(x, x) = 1 (DESIGN section 1):

- cosine:   K(x, z) = (1 + cos(x, z)) / 2
- gaussian: K(x, z) = exp(-|x - z|^2 / (2 sigma_i^2)), with sigma_i the distance from
  the query to its k-th candidate divided by 3 (the CW-DeepNNK rule), or a fixed sigma.

Everything is computed in float64 from the float32 embeddings: the solver's KKT
tolerance (1e-6) is far below float32's resolution on near-duplicate candidates.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

Kernel = Literal["cosine", "gaussian"]

_SIGMA_DIVISOR = 3.0


def kernel_vectors(embeddings: np.ndarray, *, kernel: Kernel, device: str = "cpu") -> torch.Tensor:
    """The embeddings as the kernels read them: float64, unit rows for the cosine kernel.

    Converted once per set, so that the per-block work is gathers and products only.
    """
    # A copy: the input may be a read-only memory map, which torch cannot wrap.
    vectors = torch.from_numpy(np.array(embeddings, dtype=np.float64)).to(device)
    if kernel == "cosine":
        vectors = vectors / torch.linalg.vector_norm(vectors, dim=1, keepdim=True)
    return vectors


def candidate_kernels(
    vectors: torch.Tensor,
    query_indices: np.ndarray,
    candidate_indices: np.ndarray,
    *,
    kernel: Kernel,
    sigma: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Kernel matrices of a block of queries over their candidates.

    Parameters
    ----------
    vectors : tensor of shape (n_points, dim), float64
        From :func:`kernel_vectors`, on the device the solve runs on.
    query_indices : ndarray of shape (n_queries,)
        Rows of ``vectors`` that are the queries of this block.
    candidate_indices : ndarray of shape (n_queries, k)
        The candidates of each query.
    kernel : {"cosine", "gaussian"}
    sigma : float, optional
        Fixed gaussian bandwidth; default is the per-query rule above.

    Returns
    -------
    candidate_gram : tensor of shape (n_queries, k, k), float64
        ``K[S_i, S_i]`` for each query i.
    query_kernel : tensor of shape (n_queries, k), float64
        ``K[S_i, i]`` for each query i.
    """
    device = vectors.device
    n_queries, k = candidate_indices.shape
    queries = torch.index_select(vectors, 0, torch.as_tensor(query_indices, device=device))
    flat_candidates = torch.as_tensor(
        np.ascontiguousarray(candidate_indices).ravel(), device=device
    )
    neighbours = torch.index_select(vectors, 0, flat_candidates).view(n_queries, k, -1)
    products = torch.bmm(neighbours, neighbours.mT)
    query_products = torch.bmm(neighbours, queries.unsqueeze(-1)).squeeze(-1)
    if kernel == "cosine":
        candidate_gram = products.mul_(0.5).add_(0.5)
        query_kernel = query_products.mul_(0.5).add_(0.5)
        # |cos| can exceed 1 by rounding; K must stay in [0, 1] with an exact unit diagonal.
        candidate_gram.clamp_(0.0, 1.0)
        candidate_gram.diagonal(dim1=1, dim2=2).fill_(1.0)
        query_kernel.clamp_(0.0, 1.0)
        return candidate_gram, query_kernel

    query_sq = (queries * queries).sum(dim=1)
    neighbour_sq = products.diagonal(dim1=1, dim2=2).clone()
    pair_sq = neighbour_sq.unsqueeze(2) + neighbour_sq.unsqueeze(1) - 2.0 * products
    pair_sq.clamp_(min=0.0).diagonal(dim1=1, dim2=2).fill_(0.0)
    query_sq_dist = (query_sq.unsqueeze(1) + neighbour_sq - 2.0 * query_products).clamp_(min=0.0)
    if sigma is None:
        bandwidth = torch.sqrt(query_sq_dist.max(dim=1).values) / _SIGMA_DIVISOR
        # All k candidates identical to the query: every distance is 0, any sigma gives
        # K = 1, and 1 avoids 0/0.
        bandwidth = torch.where(bandwidth > 0, bandwidth, torch.ones_like(bandwidth))
    else:
        bandwidth = torch.full_like(query_sq, float(sigma))
    two_sigma_sq = (2.0 * bandwidth * bandwidth)[:, None]
    candidate_gram = torch.exp(-pair_sq / two_sigma_sq.unsqueeze(2))
    query_kernel = torch.exp(-query_sq_dist / two_sigma_sq)
    return candidate_gram, query_kernel
