"""Datasets by name: ``load_dataset(name, **options)`` gives a :class:`GraphDataset` for every script.

Graphs (:class:`GraphDataset`): ``planted`` is the embedded default (generated, offline); ``youtube``, ``amazon``,
``dblp``, ``livejournal``, ``orkut`` read SNAP's files; ``amazon_clare`` reads the CLARE-derived Amazon files.
Text (:class:`~data.text.TextDataset`, one task per instruction): ``text_planted`` is the embedded text default
(generated, offline); ``rte`` and ``wic`` read SuperGLUE JSONL from ``--data-dir`` (or the Hugging Face hub) with the
instructions of ``--instructions``. A dataset's ``domain`` ("graph" or "text") tells the steps which model family,
training loop and gradient collection apply. Options left at ``None`` take the dataset's own default
(``DATASETS[name]["defaults"]``), so each dataset documents its settings in one place; an option a dataset does not
take is refused.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import numpy as np
import torch

from data.graph import SPLITS, GraphDataset, build_features, make_dataset
from data.planted import generate_planted
from data.snap import SNAP_URL, load_snap
from data.templates import load_instructions
from data.text import TextDataset, build_text_dataset, load_text_splits
from data.text_planted import load_text_default
from gradtag.artifacts import UsageError, atomic_path, fingerprint, save_torch, write_json
from gradtag.checks import NONNEGATIVE_INT, OPEN_FRACTION, POSITIVE, POSITIVE_INT, PROBABILITY
from gradtag.results import read_subsets, write_subsets

# Node features are cached here (a hash of the graph and the feature options names each file); the environment
# variable GRADTAG_CACHE_DIR moves it, e.g. to a node-local disk on a cluster.
CACHE_ENV = "GRADTAG_CACHE_DIR"
TEXT_KINDS = ("text", "text_planted")
TEXT_OPTIONS = ("examples_per_task", "eval_per_task", "instructions")  # options only text datasets take
DEFAULT_CACHE_DIR = Path("datasets") / "cache"
_SNAP_DEFAULTS = dict(num_tasks=100, train_frac=0.1, val_frac=0.2, embedding_dim=64, noise_dims=0, num_hops=3)


def _snap(name: str) -> dict:
    return dict(
        kind="snap",
        defaults=_SNAP_DEFAULTS,
        edge_stems=[f"com-{name}.ungraph.txt"],
        community_stems=[f"com-{name}.top5000.cmty.txt", f"com-{name}.all.cmty.txt"],
        recommended=dict(hop_width=256, head_width=256),
    )


DATASETS = {
    # The embedded default. Chosen so that true affinities have structure (see README, "the embedded default"):
    # tasks are near-copies of a group core, per-task training sets are tiny (3% of a ~200-node community, about 6
    # positives), features are weak (16 eigenvectors + 16 noise columns), and the model's last shared layer is as
    # narrow as the number of groups, so tasks must compete for it and same-group partners help. Training is
    # class-balanced with a strong weight decay so that θ* does not memorise its ~6 positives per task: a θ* that fits
    # its training nodes exactly leaves every per-task gradient near zero, and then neither fine-tuning nor the
    # linear estimate has anything to tell subsets apart (benchmarks/vet_planted.py measures this).
    "planted": dict(
        kind="planted",
        recommended=dict(hop_width=16, head_width=4, weight_decay=1e-2, balanced=True),
        defaults=dict(
            num_tasks=20,
            train_frac=0.03,
            val_frac=0.2,
            embedding_dim=16,
            noise_dims=16,
            num_hops=3,
            planted_nodes=2400,
            planted_groups=4,
            planted_core_size=200,
            planted_noise=0.1,
            planted_degree=10.0,
            planted_within=0.8,
            planted_core_within=0.7,
            planted_seed=7,  # vetted under numpy 2.4 / scipy 1.17: the one of seeds 0-7 that passes vet_planted (README)
        ),
    ),
    **{name: _snap(name) for name in ("youtube", "amazon", "dblp", "livejournal", "orkut")},
    # The embedded text default: short generated phrases, 4 groups x 3 instructions, each group asking about one
    # attribute (data/text_planted.py). Sized for 2 CPU cores (scripts/text_default.sh): 16 training pairs per
    # instruction, so partners matter and a subset's full batch is 64 pairs; θ* (MiniLM + LoRA rank 4) trains 8 epochs
    # at lr 3e-3 in batches of 16 and stops short of fitting every instruction (a fitted task has no gradient left).
    "text_planted": dict(
        kind="text_planted",
        recommended=dict(lr=3e-3, weight_decay=0.0, batch_size=16, epochs=8, patience=4, eval_every=1),
        defaults=dict(num_tasks=12, planted_groups=4, examples_per_task=16, eval_per_task=24, planted_seed=0),
    ),
    **{
        name: dict(
            kind="text",
            recommended=dict(lr=1e-3, weight_decay=0.0, batch_size=32, epochs=20, patience=4, eval_every=1),
            defaults=dict(num_tasks=None, examples_per_task=200, eval_per_task=100, instructions=None),
        )
        for name in ("rte", "wic")
    },
    "amazon_clare": dict(
        kind="snap",
        defaults=_SNAP_DEFAULTS,
        edge_stems=["amazon-1.90.ungraph.txt"],
        community_stems=["amazon-1.90.cmty.txt"],
        source="the CLARE repository (KDD 2022), dataset/amazon/",
        recommended=dict(hop_width=256, head_width=256),
    ),
}


def dataset_spec(name: str, data_dir: str | Path | None = None) -> dict:
    """The spec of dataset ``name``: a known one from :data:`DATASETS`, or any other name as a SNAP-format graph whose
    files are the one ``*.ungraph.txt[.gz]`` and the one ``*.cmty.txt[.gz]`` in ``data_dir`` (default datasets/<name>)."""
    if name in DATASETS:
        return DATASETS[name]
    folder = Path(data_dir) if data_dir is not None else Path("datasets") / name
    if not folder.is_dir():
        raise UsageError(
            f"unknown dataset {name!r} and no folder {folder}: choose one of {', '.join(sorted(DATASETS))}, or pass "
            "--data-dir with a SNAP-format edge list (*.ungraph.txt[.gz]) and communities (*.cmty.txt[.gz])"
        )
    stems = {}
    for kind, suffix in (("edge", ".ungraph.txt"), ("community", ".cmty.txt")):
        found = sorted(
            {path.name.removesuffix(".gz") for path in folder.iterdir() if path.name.removesuffix(".gz").endswith(suffix)}
        )
        if len(found) != 1:
            raise UsageError(
                f"dataset {name!r}: {folder} must hold exactly one *{suffix}[.gz] file ({kind} file), found {found or 'none'}"
            )
        stems[kind] = found
    return dict(
        kind="snap",
        defaults=_SNAP_DEFAULTS,
        edge_stems=stems["edge"],
        community_stems=stems["community"],
        source=f"the files in {folder}",
        recommended=dict(hop_width=256, head_width=256),
    )


# Flags every script shares, declared once: (flag, type, help). Defaults are per dataset (see DATASETS).
_OPTION_FLAGS = [
    (
        "num_tasks",
        POSITIVE_INT,
        "number of tasks n: the n largest communities (SNAP), groups x tasks per group (planted), "
        "or the first n instructions (text)",
    ),
    ("train_frac", OPEN_FRACTION, "fraction of a community's nodes (and of the nodes outside it) used as training samples"),
    ("val_frac", OPEN_FRACTION, "fraction of the non-training nodes used for validation; the rest is test"),
    ("embedding_dim", POSITIVE_INT, "dimension of the spectral structural embedding (node features)"),
    ("noise_dims", NONNEGATIVE_INT, "extra Gaussian noise feature columns (weakens features on purpose for the planted default)"),
    ("num_hops", NONNEGATIVE_INT, "SIGN propagation depth K: features X, AX, ..., A^K X"),
    ("planted_nodes", POSITIVE_INT, "planted default: number of nodes"),
    ("planted_groups", POSITIVE_INT, "planted default: number of task groups (graph regions)"),
    ("planted_core_size", POSITIVE_INT, "planted default: nodes in each group's core community"),
    ("planted_noise", PROBABILITY, "planted default: probability a core node is swapped out of a task's community"),
    ("planted_degree", POSITIVE, "planted default: average node degree"),
    ("planted_within", PROBABILITY, "planted default: share of edges inside a node's region"),
    ("planted_core_within", PROBABILITY, "planted default: share of a core node's within-region edges inside its core"),
    ("planted_seed", int, "planted default: generator seed"),
    ("examples_per_task", POSITIVE_INT, "text: training examples each instruction draws from the training pool"),
    ("eval_per_task", POSITIVE_INT, "text: validation and test examples each instruction draws from those pools"),
    ("instructions", str, "text (rte, wic): promptsource YAML or JSON/JSONL file of the instructions (the tasks)"),
]
OPTION_NAMES = [name for name, _, _ in _OPTION_FLAGS] + ["split_seed"]


def add_data_args(parser: argparse.ArgumentParser) -> None:
    """Add the dataset flags shared by every script (one declaration, here)."""
    group = parser.add_argument_group("dataset")
    group.add_argument(
        "--dataset",
        default="planted",
        help=f"dataset name: {', '.join(sorted(DATASETS))}, or any name with --data-dir holding one SNAP-format "
        "*.ungraph.txt[.gz] edge list and one *.cmty.txt[.gz] community file; 'planted' is the embedded default",
    )
    group.add_argument(
        "--data-dir",
        default=None,
        help="folder with the dataset's files (default: datasets/<dataset>); SNAP files may be gzipped",
    )
    group.add_argument("--split-seed", type=int, default=0, help="seed of the per-task train/val/test splits")
    for name, kind, text in _OPTION_FLAGS:
        group.add_argument(f"--{name.replace('_', '-')}", type=kind, default=None, help=f"{text} (default: per dataset)")


def dataset_options(args: argparse.Namespace) -> dict:
    """The dataset options a script was given, as a dict for :func:`load_dataset` and for ``config.json``."""
    return {name: getattr(args, name) for name in OPTION_NAMES}


def _resolve(spec: dict, options: dict) -> dict:
    if spec["kind"] in TEXT_KINDS:
        return _resolve_text(spec, options)
    text_only = sorted(key for key in TEXT_OPTIONS if options.get(key) is not None)
    if text_only:
        raise UsageError(f"--{', --'.join(k.replace('_', '-') for k in text_only)} only apply to text datasets")
    resolved = {key: value for key, value in spec["defaults"].items()}
    resolved.update({key: value for key, value in options.items() if value is not None})
    if spec["kind"] == "planted":
        if resolved["num_tasks"] % resolved["planted_groups"]:
            raise UsageError(
                f"--num-tasks {resolved['num_tasks']} must be a multiple of --planted-groups "
                f"{resolved['planted_groups']} for the planted dataset"
            )
        region = resolved["planted_nodes"] // resolved["planted_groups"]
        if resolved["planted_core_size"] >= region:
            raise UsageError(
                f"--planted-core-size {resolved['planted_core_size']} must be smaller than a region "
                f"(--planted-nodes {resolved['planted_nodes']} / --planted-groups {resolved['planted_groups']} = {region} nodes)"
            )
    else:
        resolved = {key: value for key, value in resolved.items() if not key.startswith("planted_")}
    resolved.setdefault("split_seed", 0)
    if not 0 < resolved["train_frac"] < 1 or not 0 < resolved["val_frac"] < 1:
        raise UsageError("--train-frac and --val-frac must lie strictly between 0 and 1")
    return resolved


def _resolve_text(spec: dict, options: dict) -> dict:
    """A text dataset's options: its defaults overridden by the given ones; graph-only options are refused."""
    given = {key for key, value in options.items() if value is not None and key != "split_seed"}
    foreign = sorted(given - set(spec["defaults"]))
    if foreign:
        raise UsageError(f"--{', --'.join(k.replace('_', '-') for k in foreign)} do not apply to a text dataset")
    resolved = {**spec["defaults"], **{key: value for key, value in options.items() if value is not None}}
    resolved.setdefault("split_seed", 0)
    if spec["kind"] == "text_planted" and resolved["num_tasks"] % resolved["planted_groups"]:
        raise UsageError(
            f"--num-tasks {resolved['num_tasks']} must be a multiple of --planted-groups {resolved['planted_groups']}"
        )
    return resolved


def num_tasks_of(name: str, options: dict, data_dir: str | Path | None = None) -> int:
    """Number of tasks n of dataset ``name`` under ``options`` (``None`` = the dataset's default), without loading the
    graph; the same checks as :func:`load_dataset` (e.g. planted: n a multiple of the number of groups)."""
    resolved = _resolve(dataset_spec(name, data_dir), {name: options.get(name) for name in OPTION_NAMES})
    if resolved["num_tasks"] is None:  # a text dataset with every instruction of its file: read them
        return load_dataset(name, data_dir, **{key: options.get(key) for key in OPTION_NAMES}).num_tasks
    return resolved["num_tasks"]


def cached_features(cache_dir: Path, edges: np.ndarray, num_nodes: int, options: dict) -> torch.Tensor:
    """SIGN hop features of the graph, (N, num_hops + 1, F) float32, cached in ``cache_dir`` under a hash of the graph
    and options. A cache is derived data: one that cannot be loaded or is not such a tensor is recomputed (with a
    one-line note) and rewritten, never an error."""
    settings = {key: options[key] for key in ("embedding_dim", "noise_dims", "num_hops", "split_seed")}
    cache = cache_dir / f"features_{fingerprint(edges, num_nodes, settings)}.pt"
    if cache.is_file():
        try:
            features = torch.load(cache)
            problem = None
        except Exception as err:  # noqa: BLE001 (whatever a damaged file raises, the answer is to recompute it)
            problem = str(err).splitlines()[0][:120] if str(err) else type(err).__name__
        else:
            shape = (num_nodes, options["num_hops"] + 1)
            if not isinstance(features, torch.Tensor) or features.dtype != torch.float32 or features.shape[:2] != shape:
                problem = f"not a float32 tensor of shape {shape} + (features,)"
        if problem is None:
            return features
        print(f"note: feature cache {cache} could not be read ({problem}); recomputing it")
    features = build_features(
        edges, num_nodes, options["embedding_dim"], options["noise_dims"], options["num_hops"], options["split_seed"]
    )
    save_torch(cache, features)
    return features


def load_text_dataset(name: str, spec: dict, data_dir: str | Path | None, options: dict) -> TextDataset:
    """A text dataset: the generated default, or SuperGLUE examples with the instructions of ``options``."""
    per_task = options["examples_per_task"], options["eval_per_task"], options["eval_per_task"]
    if spec["kind"] == "text_planted":
        folder = Path(data_dir) if data_dir is not None else Path("datasets") / name
        return load_text_default(
            options["planted_seed"],
            options["num_tasks"],
            options["planted_groups"],
            *per_task,
            split_seed=options["split_seed"],
            data_dir=folder,
            recommended=spec["recommended"],
        )
    if options["instructions"] is None:
        raise UsageError(
            f"dataset {name!r} needs --instructions: a promptsource YAML file (e.g. promptsource_super_glue_{name}.yaml) "
            "or a JSON/JSONL list of templates"
        )
    splits = load_text_splits(name, data_dir, seed=options["split_seed"])
    templates = load_instructions(options["instructions"], name, splits["train"].example(0), limit=options["num_tasks"])
    sizes = [None if size >= len(splits[split]) else size for size, split in zip(per_task, ("train", "val", "test"), strict=True)]
    resolved = {key: value for key, value in options.items() if key != "split_seed"}
    return build_text_dataset(
        name, splits, templates, *sizes, seed=options["split_seed"], options=resolved, recommended=spec["recommended"]
    )


def load_dataset(
    name: str, data_dir: str | Path | None = None, cache_dir: str | Path | None = None, **options
) -> GraphDataset | TextDataset:
    """Load dataset ``name`` with its options (unknown keys are an error; ``None`` means the dataset's default).

    For ``planted`` the generated graph, its communities and the planted grouping are written to ``data_dir``
    (``planted_groups.txt``), so later steps and people can score against the known answer. Node features are
    cached under ``cache_dir`` (default: ``$GRADTAG_CACHE_DIR``, else ``datasets/cache``; never inside ``data_dir``,
    which may be read-only).
    """
    cache_dir = cache_dir if cache_dir is not None else os.environ.get(CACHE_ENV, DEFAULT_CACHE_DIR)
    unknown = set(options) - set(OPTION_NAMES)
    if unknown:
        raise TypeError(f"unknown dataset options {sorted(unknown)}")
    spec = dataset_spec(name, data_dir)
    options = _resolve(spec, options)
    if spec["kind"] in TEXT_KINDS:
        return load_text_dataset(name, spec, data_dir, options)
    dataset_dir = Path(data_dir) if data_dir is not None else Path("datasets") / name
    if spec["kind"] == "planted":
        edges, labels, groups = generate_planted(
            options["planted_nodes"],
            options["planted_groups"],
            options["num_tasks"] // options["planted_groups"],
            options["planted_core_size"],
            options["planted_noise"],
            options["planted_degree"],
            options["planted_within"],
            options["planted_core_within"],
            options["planted_seed"],
        )
        task_names = [f"g{task_group}_t{task}" for task_group, members in enumerate(groups) for task in members]
        features = cached_features(Path(cache_dir) / name, edges, len(labels), options)
        dataset = make_dataset(name, features, labels, task_names, options, groups, spec["recommended"])
        _write_planted_files(dataset_dir, dataset, edges)
        return dataset
    edges, labels, task_names = load_snap(
        name, dataset_dir, spec["edge_stems"], spec["community_stems"], options["num_tasks"], spec.get("source", SNAP_URL)
    )
    features = cached_features(Path(cache_dir) / name, edges, len(labels), options)
    return make_dataset(name, features, labels, task_names, options, None, spec["recommended"])


def planted_groups_path(dataset_dir: str | Path) -> Path:
    return Path(dataset_dir) / "planted_groups.txt"


def _write_planted_files(dataset_dir: Path, dataset: GraphDataset, edges: np.ndarray) -> None:
    """The generated graph in SNAP's formats, its planted grouping and its generator settings, beside each other."""
    meta_path = dataset_dir / "generator.json"
    meta = {"fingerprint": dataset.fingerprint, "options": dataset.options, "task_names": dataset.task_names}
    if meta_path.is_file() and meta_path.read_text().find(dataset.fingerprint) >= 0:
        return
    with atomic_path(dataset_dir / "com-planted.ungraph.txt") as tmp:
        np.savetxt(tmp, edges, fmt="%d", delimiter="\t", header="planted graph: FromNodeId ToNodeId")
    communities = [np.flatnonzero(dataset.labels[:, task]) for task in range(dataset.num_tasks)]
    with atomic_path(dataset_dir / "com-planted.cmty.txt") as tmp:
        tmp.write_text("".join("\t".join(map(str, members)) + "\n" for members in communities))
    write_subsets(
        planted_groups_path(dataset_dir),
        dataset.planted_groups,
        header=f"planted task groups of dataset fingerprint {dataset.fingerprint}",
    )
    write_json(meta_path, meta)


def read_planted_groups(path: str | Path, num_tasks: int) -> list[list[int]]:
    """Read a planted grouping file (groups format) and check it is a partition of 0..n-1."""
    groups = [list(group) for group in read_subsets(path, num_tasks)]
    flat = sorted(task for group in groups for task in group)
    if flat != list(range(num_tasks)):
        raise UsageError(f"{path} is not a partition of tasks 0..{num_tasks - 1}; every task must be in one group")
    return groups


__all__ = [
    "DATASETS",
    "SPLITS",
    "GraphDataset",
    "TextDataset",
    "add_data_args",
    "dataset_options",
    "dataset_spec",
    "load_dataset",
    "num_tasks_of",
    "planted_groups_path",
    "read_planted_groups",
]
