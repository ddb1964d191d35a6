"""Graph neural networks of chapter 7: a graph convolutional network (Kipf & Welling, 2017) from scratch.

A graph with N nodes is given by its adjacency matrix ``A`` (N, N), symmetric, with
``A[i, j] = 1`` (or an edge weight) when i and j are linked. One GCN layer mixes every
node's features with its neighbours' and then applies a shared linear map::

    H' = A_hat @ H @ W,   A_hat = D^-1/2 (A + I) D^-1/2,   D = diag of the row sums of A + I

The self loops (``+ I``) keep a node's own features in the mix; the symmetric scaling
keeps the features' size from growing with a node's degree.
"""
from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn


def karate_club(dtype: torch.dtype = torch.float32):
    """Zachary's karate club (1977): 34 members, 78 friendships, split into two clubs.

    Returns ``(A, y, graph)``: the adjacency matrix (34, 34) with 0/1 entries (edge weights
    ignored), labels (34,) int64 with 0 for members who followed the instructor, Mr. Hi
    (node 0), and 1 for those who followed the officer (node 33), and the networkx graph
    itself (for drawing).
    """
    import networkx as nx

    graph = nx.karate_club_graph()
    A = torch.as_tensor(nx.to_numpy_array(graph, nodelist=range(34), weight=None), dtype=dtype)
    y = torch.tensor([0 if graph.nodes[i]["club"] == "Mr. Hi" else 1 for i in range(34)])
    return A, y, graph


def normalize_adjacency(A: Tensor) -> Tensor:
    """A_hat = D^-1/2 (A + I) D^-1/2 with D the degree matrix of A + I. A (N, N) -> (N, N), same dtype."""
    A_tilde = A + torch.eye(A.shape[0], dtype=A.dtype, device=A.device)
    d_inv_sqrt = A_tilde.sum(dim=1).rsqrt()
    return d_inv_sqrt[:, None] * A_tilde * d_inv_sqrt[None, :]


def gcn_layer(A_hat: Tensor, H: Tensor, W: Tensor) -> Tensor:
    """One graph convolution without its activation: A_hat (N, N), H (N, F_in), W (F_in, F_out) -> (N, F_out)."""
    return A_hat @ (H @ W)


class GCN(nn.Module):
    """Two GCN layers, ReLU between them, for node classification on one fixed graph.

    The graph (``A_hat``) and the node features ``X`` (N, F) are stored as buffers, so
    ``forward(idx)`` takes node indices (K,) and returns the logits (K, C) of those nodes:
    the whole graph is propagated every time, and only the asked-for rows are returned.
    That shape lets :func:`companion.training.fit` train it on ``(labelled_idx, labels)``.
    """

    def __init__(self, A_hat: Tensor, X: Tensor, hidden: int = 16, n_classes: int = 2, dropout: float = 0.0):
        super().__init__()
        self.register_buffer("A_hat", A_hat)
        self.register_buffer("X", X)
        self.W1 = nn.Parameter(_glorot(X.shape[1], hidden))
        self.b1 = nn.Parameter(torch.zeros(hidden))
        self.W2 = nn.Parameter(_glorot(hidden, n_classes))
        self.b2 = nn.Parameter(torch.zeros(n_classes))
        self.dropout = nn.Dropout(dropout)

    def embed(self, idx: Tensor | None = None) -> Tensor:
        """The hidden representation of every node (N, hidden), or of the nodes in ``idx``."""
        H = torch.relu(gcn_layer(self.A_hat, self.dropout(self.X), self.W1) + self.b1)
        return H if idx is None else H[idx]

    def forward(self, idx: Tensor | None = None) -> Tensor:
        H = self.dropout(self.embed())
        out = gcn_layer(self.A_hat, H, self.W2) + self.b2
        return out if idx is None else out[idx]


def _glorot(n_in: int, n_out: int) -> Tensor:
    bound = math.sqrt(6.0 / (n_in + n_out))
    return torch.empty(n_in, n_out).uniform_(-bound, bound)


def label_propagation(A: Tensor, labelled: Tensor, labels: Tensor, n_classes: int = 2, steps: int = 100) -> Tensor:
    """Classic label propagation (Zhu & Ghahramani, 2002): no learning, only the graph.

    Every node repeatedly takes the average label distribution of its neighbours, while
    the labelled nodes are clamped to their known labels. A (N, N); labelled (K,) node
    indices; labels (K,) their classes. Returns the predicted class of every node, (N,).
    """
    deg = A.sum(dim=1, keepdim=True).clamp(min=1)
    P = A / deg
    known = torch.zeros(A.shape[0], n_classes, dtype=A.dtype)
    known[labelled, labels] = 1.0
    F_ = known.clone()
    for _ in range(steps):
        F_ = P @ F_
        F_[labelled] = known[labelled]
    return F_.argmax(dim=1)


def spread_layout(graph, seed: int = 2) -> dict:
    """A fixed force-directed layout (networkx spring layout with ``seed``), for drawing."""
    import networkx as nx

    return nx.spring_layout(graph, seed=seed, k=0.35, iterations=200)


def draw(graph, colors: np.ndarray, pos: dict, ax, ring: np.ndarray | None = None, wrong: np.ndarray | None = None,
         title: str = "", cmap: str = "coolwarm"):
    """Draw ``graph`` at ``pos`` with node colours ``colors`` (N,) in [0, 1].

    ``ring`` (N,) bool marks labelled nodes with a thick black edge; ``wrong`` (N,) bool
    marks misclassified nodes with a cross.
    """
    import networkx as nx

    n = graph.number_of_nodes()
    ring = np.zeros(n, bool) if ring is None else np.asarray(ring, bool)
    nx.draw_networkx_edges(graph, pos, ax=ax, alpha=0.3)
    nx.draw_networkx_nodes(graph, pos, ax=ax, node_color=np.asarray(colors, float), cmap=cmap, vmin=0, vmax=1,
                           node_size=260, edgecolors=np.where(ring, "black", "white").tolist(),
                           linewidths=np.where(ring, 3.0, 1.0).tolist())
    nx.draw_networkx_labels(graph, pos, ax=ax, font_size=7)
    if wrong is not None and np.any(wrong):
        xy = np.array([pos[i] for i in np.flatnonzero(wrong)])
        ax.scatter(xy[:, 0], xy[:, 1], s=500, marker="x", c="black", linewidths=1.5, zorder=5)
    ax.set_title(title)
    ax.axis("off")
    return ax
