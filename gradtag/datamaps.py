"""Data-map task grouping (STG-MTL: Sherif et al., "STG-MTL: Scalable Task Grouping for Multi-Task Learning Using
Data Maps", 2023), after dataset cartography (Swayamdipta et al., 2020).

While θ* trains, step 1 records p(true label) of every training (sample, task) pair at the end of every epoch (the
*trace*, ``--record-data-map``). A pair's *confidence* is the mean of its trace over epochs and its *variability*
the standard deviation (cartography's Eq. 1-2, population std); a task's data-map features are the means of both over
its pairs (STG-MTL's task features). Tasks are then clustered on these features: k-means (hard), or fuzzy c-means with
fuzziness m (STG-MTL's default 1.07), whose (k, n) membership matrix weighs each task in each group's model.

Pure numerics: no files, no printing.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

FUZZINESS = 1.07  # STG-MTL's fuzziness m: memberships nearly hard, yet a task can sit between two groups
QUANTILES = np.linspace(0.1, 0.9, 9)  # per-sample quantiles of the "quantiles" features (deciles)
FEATURES = ("mean", "quantiles")


def sigmoid_true_probability(logits: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """p(true label) of a binary classifier: sigmoid(z) where the label is 1, 1 − sigmoid(z) = sigmoid(−z) where 0.

    logits: (N,) any float dtype; labels: (N,) 0/1 (bool or int). Returns (N,) float32 in [0, 1].
    """
    z = np.where(np.asarray(labels).astype(bool), logits, -np.asarray(logits, dtype=np.float64))
    return (0.5 * (1.0 + np.tanh(0.5 * z))).astype(np.float32)  # tanh form: no overflow for large |z|


def pair_statistics(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per pair confidence and variability of a trace ``probabilities`` (E epochs, P pairs): the mean and the
    population standard deviation (ddof 0, as cartography) over epochs. Returns two (P,) float64 arrays."""
    trace = np.asarray(probabilities, dtype=np.float64)
    if trace.ndim != 2 or trace.shape[0] == 0:
        raise ValueError(f"a data-map trace is (epochs, pairs) with at least one epoch, got shape {trace.shape}")
    return trace.mean(axis=0), trace.std(axis=0)


def task_features(probabilities: np.ndarray, pair_tasks: np.ndarray, num_tasks: int, kind: str = "mean") -> np.ndarray:
    """Data-map features per task, (num_tasks, f) float64, from a trace (E, P) and each pair's task (P,) int.

    ``kind="mean"`` (STG-MTL, f = 2): [mean confidence, mean variability] over the task's pairs.
    ``kind="quantiles"`` (f = 2 + 2·9): those two, then the deciles 0.1..0.9 of its pairs' confidence and of their
    variability. Two means cannot tell apart a task whose samples are all half-learned from one with easy and hard
    samples in equal parts; the quantiles describe the shape of the task's data map, not only its centre.

    Every task 0..num_tasks−1 must own at least one pair (ValueError otherwise).
    """
    confidence, variability = pair_statistics(probabilities)
    pair_tasks = np.asarray(pair_tasks)
    if pair_tasks.shape != confidence.shape:
        raise ValueError(f"pair_tasks has shape {pair_tasks.shape}; the trace has {confidence.shape[0]} pairs")
    if kind not in FEATURES:
        raise ValueError(f"unknown data-map features {kind!r}; choose from {FEATURES}")
    rows = []
    for task in range(num_tasks):
        chosen = pair_tasks == task
        if not chosen.any():
            raise ValueError(f"task {task} has no pair in the data map")
        row = [confidence[chosen].mean(), variability[chosen].mean()]
        if kind == "quantiles":
            row += list(np.quantile(confidence[chosen], QUANTILES)) + list(np.quantile(variability[chosen], QUANTILES))
        rows.append(row)
    return np.asarray(rows, dtype=np.float64)


@dataclass
class FuzzyClustering:
    """memberships: (k, n) float64, columns summing to 1; labels: (n,) int argmax group per task; centers: (k, f);
    objective: the clustering's objective on the features (fuzzy: J_m = Σ u^m d²; k-means: inertia Σ d²)."""

    memberships: np.ndarray
    labels: np.ndarray
    centers: np.ndarray
    objective: float


def kmeans_memberships(features: np.ndarray, k: int, seed: int = 0, n_init: int = 10) -> FuzzyClustering:
    """k-means (sklearn, ``n_init`` seeded inits) of the task features (n, f); memberships are the 0/1 (k, n)
    indicator matrix of the partition."""
    from sklearn.cluster import KMeans

    features = np.asarray(features, dtype=np.float64)
    model = KMeans(n_clusters=k, n_init=n_init, random_state=seed).fit(features)
    labels = model.labels_.astype(np.int64)
    memberships = np.zeros((k, len(features)))
    memberships[labels, np.arange(len(features))] = 1.0
    return FuzzyClustering(memberships, labels, model.cluster_centers_, float(model.inertia_))


def fuzzy_memberships(
    features: np.ndarray, k: int, fuzziness: float = FUZZINESS, seed: int = 0, tol: float = 1e-10, max_iter: int = 1000
) -> FuzzyClustering:
    """Fuzzy c-means (Bezdek 1981; scikit-fuzzy's ``cmeans``) of the task features (n, f) into k clusters.

    Minimises J_m = Σ_g Σ_i u_gi^m ‖x_i − c_g‖² over memberships u (k, n), each column summing to 1, and centres c
    (k, f); fuzziness m > 1 (1.07 in STG-MTL), the update u_gi ∝ ‖x_i − c_g‖^(−2/(m−1)) hardens to 0/1 as m → 1.
    Started from the seeded k-means partition (:func:`kmeans_memberships`) instead of a random matrix: deterministic,
    independent of numpy's global random state, and a well separated set of tasks keeps k-means' groups.
    Returns memberships (k, n) float64, argmax labels (n,), centres (k, f) and J_m.
    """
    import skfuzzy

    if not fuzziness > 1:
        raise ValueError(f"fuzziness m must be > 1, got {fuzziness}")
    features = np.asarray(features, dtype=np.float64)
    start = kmeans_memberships(features, k, seed)
    if k == 1:
        return start
    init = np.clip(start.memberships, 1e-6, None)
    init /= init.sum(axis=0, keepdims=True)
    centers, memberships, _, _, objectives, _, _ = skfuzzy.cluster.cmeans(
        features.T, k, fuzziness, error=tol, maxiter=max_iter, init=init
    )
    memberships = memberships / memberships.sum(axis=0, keepdims=True)
    return FuzzyClustering(memberships, memberships.argmax(axis=0).astype(np.int64), centers, float(objectives[-1]))


def hard_groups(memberships: np.ndarray) -> list[list[int]]:
    """Groups (k lists of task ids, ascending) from a (k, n) membership matrix: each task in its argmax group; a group
    left empty takes, from a group with two or more tasks, the task of highest membership in it. Needs k <= n."""
    memberships = np.asarray(memberships, dtype=np.float64)
    k, n = memberships.shape
    if k > n:
        raise ValueError(f"{k} groups cannot all hold one of {n} tasks")
    labels = memberships.argmax(axis=0)
    for group in range(k):
        if not np.any(labels == group):
            sizes = np.bincount(labels, minlength=k)
            movable = np.flatnonzero(sizes[labels] > 1)
            labels[movable[np.argmax(memberships[group, movable])]] = group
    return [sorted(np.flatnonzero(labels == group).tolist()) for group in range(k)]
