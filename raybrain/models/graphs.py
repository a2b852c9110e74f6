"""K-nearest-neighbour graphs as torch-geometric ``edge_index`` tensors (pure torch).

``torch_geometric.nn.knn_graph`` needs pyg-lib, which cannot be installed here
(DESIGN.md section 7), so the graphs are built with ``torch.cdist`` / a given distance
matrix and ``topk``. Edges point from a neighbour to the node whose neighbour it is
(``edge_index[0]`` = source ``j``, ``edge_index[1]`` = target ``i``), so messages flow
into each node from its ``k`` nearest neighbours (torch-geometric's
``flow="source_to_target"``).
"""

from __future__ import annotations

import torch

from raybrain.errors import SpecError

__all__ = ["pairwise_distances", "knn_graph", "cross_knn_edges"]


def pairwise_distances(x: torch.Tensor, y: torch.Tensor | None = None,
                       metric: str = "cosine") -> torch.Tensor:
    """Distances between the rows of ``x`` and ``y`` (default ``y = x``).

    Parameters
    ----------
    x : torch.Tensor, shape (n, d)
    y : torch.Tensor, shape (m, d), optional
    metric : {"cosine", "euclidean"}
        ``1 - cos`` (in [0, 2]) or ``torch.cdist``.

    Returns
    -------
    torch.Tensor, shape (n, m)
    """
    y = x if y is None else y
    if x.ndim != 2 or y.ndim != 2 or x.shape[1] != y.shape[1]:
        raise SpecError(f"pairwise_distances expects (n, d) and (m, d), got {tuple(x.shape)} "
                        f"and {tuple(y.shape)}")
    if metric == "cosine":
        u = torch.nn.functional.normalize(x, dim=1)
        v = torch.nn.functional.normalize(y, dim=1)
        return (1.0 - u @ v.T).clamp(0.0, 2.0)
    if metric == "euclidean":
        return torch.cdist(x, y)
    raise SpecError(f"metric must be 'cosine' or 'euclidean', got {metric!r}")


def knn_graph(k: int, x: torch.Tensor | None = None, dist: torch.Tensor | None = None,
              metric: str = "cosine") -> torch.Tensor:
    """Directed k-nearest-neighbour graph of ``n`` nodes, no self-loops.

    Give either features ``x`` (distances by ``metric``) or a distance matrix ``dist``.
    Ties are broken by ``topk`` (lower index first on CPU).

    Parameters
    ----------
    k : int
        Neighbours per node, 1 <= k <= n - 1.
    x : torch.Tensor, shape (n, d), optional
    dist : torch.Tensor, shape (n, n), optional
    metric : str
        See :func:`pairwise_distances`.

    Returns
    -------
    torch.Tensor of int64, shape (2, n * k)
        ``[source j, target i]`` for each of node ``i``'s ``k`` nearest others ``j``; on the
        device of the input. No gradient.
    """
    if (x is None) == (dist is None):
        raise SpecError("knn_graph needs exactly one of x (features) or dist (distances)")
    with torch.no_grad():
        d = pairwise_distances(x, metric=metric) if dist is None else dist.detach()
        if d.ndim != 2 or d.shape[0] != d.shape[1]:
            raise SpecError(f"knn_graph: dist must be square (n, n), got {tuple(d.shape)}")
        n = d.shape[0]
        if isinstance(k, bool) or int(k) != k or not 1 <= k <= n - 1:
            raise SpecError(f"knn_graph: k must be an integer in [1, n - 1 = {n - 1}], got {k!r}")
        d = d.clone().float()
        d.fill_diagonal_(float("inf"))
        nbr = d.topk(int(k), dim=1, largest=False).indices  # (n, k)
        target = torch.arange(n, device=d.device).repeat_interleave(int(k))
        return torch.stack([nbr.reshape(-1), target]).long()


def cross_knn_edges(dist: torch.Tensor, k: int, offset_rows: int = 0,
                    offset_cols: int | None = None) -> torch.Tensor:
    """Edges between two node sets from their cross distances, in both directions.

    Each row node receives edges from its ``k`` nearest column nodes and each column node
    from its ``k`` nearest row nodes. Indices are shifted so that both sets live in one
    stacked graph (rows at ``offset_rows + i``, columns at ``offset_cols + j``, by default
    right after the rows).

    Parameters
    ----------
    dist : torch.Tensor, shape (n, m)
    k : int
        1 <= k <= min(n, m).
    offset_rows, offset_cols : int

    Returns
    -------
    torch.Tensor of int64, shape (2, (n + m) * k)
    """
    with torch.no_grad():
        d = dist.detach()
        if d.ndim != 2:
            raise SpecError(f"cross_knn_edges: dist must be 2-D (n, m), got {tuple(d.shape)}")
        n, m = d.shape
        if isinstance(k, bool) or int(k) != k or not 1 <= k <= min(n, m):
            raise SpecError(f"cross_knn_edges: k must be an integer in [1, {min(n, m)}], got "
                            f"{k!r}")
        k = int(k)
        oc = n + offset_rows if offset_cols is None else offset_cols
        col_of_row = d.topk(k, dim=1, largest=False).indices  # (n, k): columns near row i
        row_of_col = d.topk(k, dim=0, largest=False).indices.T  # (m, k): rows near column j
        to_rows = torch.stack([col_of_row.reshape(-1) + oc,
                               torch.arange(n, device=d.device).repeat_interleave(k)
                               + offset_rows])
        to_cols = torch.stack([row_of_col.reshape(-1) + offset_rows,
                               torch.arange(m, device=d.device).repeat_interleave(k) + oc])
        return torch.cat([to_rows, to_cols], dim=1).long()
