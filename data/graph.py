"""Community-detection graphs as multitask node classification: the dataset object, splits, features.

A graph with n chosen communities becomes n binary node tasks (paper Sec. 5.1.2). Node features are a structural
embedding computed locally from the graph (spectral, with a fixed eigensolver start vector and a sign convention so
identical runs give identical numbers) plus optional noise dimensions, propagated into SIGN hop features
X, ÂX, ..., Â^K X with torch-geometric's ``T.SIGN`` transform.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from scipy.sparse.linalg import eigsh
from threadpoolctl import threadpool_limits

from gradtag.artifacts import fingerprint

SPLITS = ("train", "val", "test")
# A task needs a positive node to train on and one left to evaluate (F1 scores the positives), and a negative to train on.
MIN_POSITIVES, MIN_NEGATIVES = 2, 1


@dataclass
class GraphDataset:
    """Everything a step needs about a dataset.

    features: (N, num_hops + 1, F) float32 SIGN hop features.
    labels:   (N, n) bool, node i belongs to community/task j.
    masks:    split name -> (N, n) bool, node i is a ``split`` sample of task j (splits are per task).
    """

    name: str
    features: torch.Tensor
    labels: np.ndarray
    masks: dict[str, np.ndarray]
    task_names: list[str]
    fingerprint: str
    options: dict
    planted_groups: list[list[int]] | None = None
    recommended: dict = field(default_factory=dict)

    domain = "graph"  # which model family and step implementations apply (see data/__init__.py)

    @property
    def num_tasks(self) -> int:
        return self.labels.shape[1]

    @property
    def num_nodes(self) -> int:
        return self.labels.shape[0]

    def samples(self, task: int, split: str) -> np.ndarray:
        """Node indices (int64, ascending) of task ``task``'s ``split`` samples."""
        return np.flatnonzero(self.masks[split][:, task])

    def task_labels(self, task: int, split: str) -> np.ndarray:
        """(len(samples),) bool labels of task ``task``'s ``split`` samples, in :meth:`samples` order."""
        return self.labels[self.samples(task, split), task]


def paper_splits(labels: np.ndarray, train_frac: float, val_frac: float, seed: int) -> dict[str, np.ndarray]:
    """Per-task splits of Sec. 5.1.2: ``train_frac`` of the community's nodes as positive training samples and
    ``train_frac`` of the nodes outside it as negatives; ``val_frac`` of the remaining nodes for validation; the rest test.

    labels: (N, n) bool. Returns split -> (N, n) bool masks, disjoint per task and covering every node. Each task draws
    from its own generator seeded by (seed, task), so adding tasks leaves the others' splits unchanged.
    """
    num_nodes, num_tasks = labels.shape
    masks = {split: np.zeros((num_nodes, num_tasks), dtype=bool) for split in SPLITS}
    for task in range(num_tasks):
        rng = np.random.default_rng([seed, task])
        positives, negatives = np.flatnonzero(labels[:, task]), np.flatnonzero(~labels[:, task])
        train = np.concatenate(
            [
                rng.choice(positives, max(1, round(train_frac * len(positives))), replace=False),
                rng.choice(negatives, max(1, round(train_frac * len(negatives))), replace=False),
            ]
        )
        rest = np.setdiff1d(np.arange(num_nodes), train)
        val = rng.choice(rest, round(val_frac * len(rest)), replace=False)
        masks["train"][train, task] = True
        masks["val"][val, task] = True
        masks["test"][:, task] = ~(masks["train"][:, task] | masks["val"][:, task])
    return masks


def normalized_adjacency(edges: np.ndarray, num_nodes: int) -> sp.csr_matrix:
    """D^-1/2 A D^-1/2 of the undirected graph with edge list ``edges`` (E, 2) int; isolated nodes get zero rows."""
    rows = np.concatenate([edges[:, 0], edges[:, 1]])
    cols = np.concatenate([edges[:, 1], edges[:, 0]])
    adjacency = sp.coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(num_nodes, num_nodes)).tocsr()
    adjacency.data[:] = 1.0
    degree = np.asarray(adjacency.sum(axis=1)).ravel()
    inv_sqrt = np.where(degree > 0, 1.0 / np.sqrt(np.maximum(degree, 1e-12)), 0.0)
    return sp.diags(inv_sqrt) @ adjacency @ sp.diags(inv_sqrt)


def spectral_embedding(edges: np.ndarray, num_nodes: int, dim: int) -> np.ndarray:
    """Top-``dim`` eigenvectors of the normalised adjacency, (N, dim) float32, each scaled to unit RMS.

    Deterministic: a fixed all-ones start vector for ARPACK and each vector's sign chosen so its largest-magnitude
    entry is positive.
    """
    operator = normalized_adjacency(edges, num_nodes)
    dim = min(dim, num_nodes - 2)
    if num_nodes <= 2000:
        with threadpool_limits(1):  # multithreaded BLAS is much slower here on a loaded machine; results are equal
            _, vectors = np.linalg.eigh(operator.toarray())
        vectors = vectors[:, ::-1][:, :dim]
    else:
        start = np.ones(num_nodes) / np.sqrt(num_nodes)
        values, vectors = eigsh(operator, k=dim, which="LA", v0=start, tol=1e-6)
        vectors = vectors[:, np.argsort(-values)]
    signs = np.sign(vectors[np.abs(vectors).argmax(axis=0), np.arange(vectors.shape[1])])
    vectors = vectors * signs * np.sqrt(num_nodes)
    return vectors.astype(np.float32)


def sign_hop_features(x: np.ndarray, edges: np.ndarray, num_hops: int) -> torch.Tensor:
    """SIGN's precomputed propagation X, ÂX, ..., Â^K X via torch-geometric's ``T.SIGN(K)``: (N, K + 1, F) float32."""
    import torch_geometric.transforms as T
    from torch_geometric.data import Data
    from torch_geometric.utils import to_undirected

    edge_index = to_undirected(torch.as_tensor(edges.T, dtype=torch.long), num_nodes=len(x))
    data = Data(x=torch.as_tensor(x), edge_index=edge_index)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch's beta-sparse notices, not actionable here
        data = T.SIGN(num_hops)(data)
    return torch.stack([data.x] + [data[f"x{k}"] for k in range(1, num_hops + 1)], dim=1).float()


def build_features(
    edges: np.ndarray, num_nodes: int, embedding_dim: int, noise_dims: int, num_hops: int, seed: int
) -> torch.Tensor:
    """Structural embedding (+ ``noise_dims`` Gaussian columns drawn from ``seed``) propagated to SIGN hops."""
    x = spectral_embedding(edges, num_nodes, embedding_dim)
    if noise_dims:
        noise = np.random.default_rng([seed, 7]).standard_normal((num_nodes, noise_dims)).astype(np.float32)
        x = np.concatenate([x, noise], axis=1)
    return sign_hop_features(x, edges, num_hops)


def make_dataset(
    name: str,
    features: torch.Tensor,
    labels: np.ndarray,
    task_names: list[str],
    options: dict,
    planted_groups: list[list[int]] | None = None,
    recommended: dict | None = None,
) -> GraphDataset:
    """Splits and fingerprint for a graph whose tasks are the columns of ``labels`` (N, n) bool."""
    masks = paper_splits(labels, options["train_frac"], options["val_frac"], options["split_seed"])
    digest = fingerprint(
        name,
        task_names,
        labels,
        *(masks[split] for split in SPLITS),
        {key: options[key] for key in ("embedding_dim", "noise_dims", "num_hops")},
    )
    return GraphDataset(
        name=name,
        features=features,
        labels=labels,
        masks=masks,
        task_names=task_names,
        fingerprint=digest,
        options=options,
        planted_groups=planted_groups,
        recommended=recommended or {},
    )
