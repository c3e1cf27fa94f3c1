"""Merge the result files of a sharded truth or estimate run into the file one unsharded run writes.

A shard ``k`` of ``n`` writes ``<name>.shard<k>of<n>.csv`` and its sidecar (``steps.partition``). The merge checks
that the ``n`` shards are all there, made by the same run (their sidecars agree but for the shard and its cost) and
finished (every subset × seed has its rows), then writes the rows in the unsharded run's order — by subset id, then
seed in the run's order, then task in the subset's order — so the merged CSV is byte-identical to an unsharded run's.
The merged sidecar sums the shards' wall and CPU seconds and FLOPs; an estimate's merge also writes its affinity matrix.
"""

from __future__ import annotations

import re
from pathlib import Path

from gradtag.artifacts import UsageError, atomic_set, read_json, write_json
from gradtag.results import read_results, write_results
from gradtag.scores import is_pairwise, save_affinity, score_records

# sidecar keys that differ between the shards of one run
_PER_SHARD = ("shard", "args", "seconds", "cpu_seconds", "flops", "versions")


def shard_paths(target: str | Path) -> list[Path]:
    """The shard CSVs of the unsharded file ``target`` (``results/x.csv`` -> ``results/x.shard<k>of<n>.csv``)."""
    target = Path(target)
    pattern = re.compile(rf"{re.escape(target.stem)}\.shard(\d+)of(\d+)\.csv")
    return sorted((path for path in target.parent.glob(f"{target.stem}.shard*of*.csv") if pattern.fullmatch(path.name)), key=str)


def seed_order(meta: dict, rows: list[dict]) -> list[int]:
    """The seeds in the order an unsharded run trains them: its ``--init-from`` bases' order, else ascending."""
    init = meta.get("init")
    if isinstance(init, list):
        return [base["seed"] for base in init]
    return sorted({row["seed"] for row in rows})


def merge_shards(target: str | Path, paths: list[Path] | None = None) -> tuple[Path, int]:
    """Write ``target`` (and its sidecar; for an estimate, its affinity matrix) from its shards. Returns the path and
    the number of shards merged."""
    target = Path(target)
    paths = paths if paths is not None else shard_paths(target)
    if not paths:
        raise UsageError(f"no shard files {target.stem}.shard<k>of<n>.csv beside {target}; run the shards first")
    metas = [read_json(path.with_suffix(".json")) for path in paths]
    shards = [meta.get("shard") for meta in metas]
    if any(shard is None for shard in shards) or len({shard["num_shards"] for shard in shards}) != 1:
        raise UsageError(f"{', '.join(map(str, paths))}: not the shards of one run (their sidecars' shard counts differ)")
    num_shards = shards[0]["num_shards"]
    missing = sorted(set(range(num_shards)) - {shard["shard_id"] for shard in shards})
    if missing or len(paths) != num_shards:
        raise UsageError(f"{target}: shards {missing or 'repeated'} of {num_shards} are missing or doubled; run each shard once")
    identity = {key: value for key, value in metas[0].items() if key not in _PER_SHARD}
    for path, meta in zip(paths, metas, strict=True):
        other = {key: value for key, value in meta.items() if key not in _PER_SHARD}
        if other != identity:
            differing = sorted(key for key in set(other) | set(identity) if other.get(key) != identity.get(key))
            raise UsageError(f"{path} was made by another run than {paths[0]} (sidecars differ in {differing}); rerun it")
    rows = [row for path in paths for row in read_results(path)]
    subsets = [tuple(subset) for subset in identity["subsets"]]
    seeds = seed_order(identity, rows)
    rank = {seed: index for index, seed in enumerate(seeds)}
    done = {(row["subset_id"], row["seed"]) for row in rows}
    unfinished = [(index, seed) for index in range(len(subsets)) for seed in seeds if (index, seed) not in done]
    if unfinished:
        raise UsageError(
            f"{target}: {len(unfinished)} subset × seed jobs have no rows in the shards (first: subset {unfinished[0][0]}); "
            "rerun the unfinished shards (they resume)"
        )
    rows.sort(key=lambda row: (row["subset_id"], rank[row["seed"]], subsets[row["subset_id"]].index(row["task"])))
    flops = [meta.get("flops") for meta in metas]
    meta = {
        **identity,
        "args": metas[0].get("args"),
        "merged_shards": [str(path) for path in paths],
        "seconds": sum(meta.get("seconds") or 0.0 for meta in metas),
        "cpu_seconds": sum(meta.get("cpu_seconds") or 0.0 for meta in metas),
        "flops": None if any(value is None for value in flops) else sum(flops),
        "versions": metas[0].get("versions"),
    }
    with atomic_set():  # the merged CSV, its sidecar and an estimate's affinity files appear together or not at all
        write_results(target, rows)
        write_json(target.with_suffix(".json"), meta)
        if rows and rows[0]["source"] == "estimate":
            save_affinity(
                target.with_suffix(""), score_records(rows, meta["score"]), len(meta["task_names"]), is_pairwise(subsets), meta
            )
    return target, num_shards
