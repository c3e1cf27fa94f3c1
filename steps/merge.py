"""Merge the result files of a sharded truth or estimate run into the file one unsharded run writes.

A shard ``k`` of ``n`` writes ``<name>.shard<k>of<n>.csv`` and its sidecar (``steps.partition``). The merge checks
that the ``n`` shards are all there, made by the same run (their sidecars agree but for the shard, its cost and how
input paths were spelled: inputs are identified by their fingerprints), that every row is one the run's subsets and
seeds call for, once, and that all are there (:func:`check_shard_rows`), then writes the rows in the unsharded run's
order — by subset id, then seed in the run's order, then task in the subset's order — so the merged CSV is
byte-identical to an unsharded run's.
The merged sidecar sums the shards' wall and CPU seconds and FLOPs; an estimate's merge also writes its affinity matrix.
"""

from __future__ import annotations

import re
from pathlib import Path

from gradtag.artifacts import UsageError, atomic_set, read_json, total_cost, without_locations, write_json
from gradtag.results import ESTIMATE_SEED, read_results, subset_key, write_results
from gradtag.scores import score_records
from steps.estimate import save_affinities

# sidecar keys that differ between the shards of one run
_PER_SHARD = ("shard", "args", "seconds", "cpu_seconds", "flops", "flops_counted_subsets", "versions")


def shard_paths(target: str | Path) -> list[Path]:
    """The shard CSVs of the unsharded file ``target`` (``results/x.csv`` -> ``results/x.shard<k>of<n>.csv``)."""
    target = Path(target)
    pattern = re.compile(rf"{re.escape(target.stem)}\.shard(\d+)of(\d+)\.csv")
    return sorted((path for path in target.parent.glob(f"{target.stem}.shard*of*.csv") if pattern.fullmatch(path.name)), key=str)


def run_seeds(meta: dict) -> list[int]:
    """The seeds of a run's rows, in the order an unsharded run trains them: an estimate's ``ESTIMATE_SEED``; a truth's
    ``--init-from`` bases' seeds (several bases), its ``--seed`` (one base), or ``--seed`` and the next
    ``--truth-seeds`` - 1 (from scratch)."""
    if "init" not in meta:  # an estimate: one row per (subset, task), averaged over its bases
        return [ESTIMATE_SEED]
    init = meta["init"]
    if isinstance(init, list):
        return [base["seed"] for base in init]
    if init is not None:
        return [meta["seed"]]
    return list(range(meta["seed"], meta["seed"] + (meta.get("args") or {}).get("truth_seeds", 1)))


def check_shard_rows(target: Path, shards: list[tuple[Path, int, list[dict]]], subsets: list[tuple], seeds: list[int]) -> None:
    """Refuse shard rows that an unsharded run of ``subsets`` × ``seeds`` would not write, as one line naming the
    shard file, its line and the fix. ``shards``: (shard CSV, its shard id, its rows) each.

    Every row must name a subset id of the run, the text of that subset, a task of it and one of the run's seeds; no
    (subset, seed, task) may have two rows, in one shard or two; and every (subset, seed, task) must have its row."""
    seen: dict[tuple[int, int, int], str] = {}
    for path, shard_id, rows in shards:
        for line, row in enumerate(rows, start=2):  # line 1 is the header
            index, seed, task = row["subset_id"], row["seed"], row["task"]
            key = (index, seed, task)
            if not 0 <= index < len(subsets):
                problem = f"subset_id {index} is not a line of the run's subsets file (0..{len(subsets) - 1})"
            elif row["subset"] != subset_key(subsets[index]):
                problem = f"subset {row['subset']!r} is not subset {index} of the run ({subset_key(subsets[index])!r})"
            elif task not in subsets[index]:
                problem = f"task {task} is not in subset {index} ({subset_key(subsets[index])!r})"
            elif seed not in seeds:
                problem = f"seed {seed} is not one of the run's seeds {seeds}"
            elif key in seen:
                problem = f"subset {index}, seed {seed}, task {task} already has a row at {seen[key]}"
            else:
                seen[key] = f"{path}:{line}"
                continue
            raise UsageError(
                f"{path}:{line}: {problem}, so the shard was edited or mixed with another run's rows; delete it and its "
                f".json sidecar and rerun shard {shard_id}"
            )
    started = {(index, seed): where.rsplit(":", 1)[0] for (index, seed, _), where in seen.items()}
    for index, subset in enumerate(subsets):
        for seed in seeds:
            missing = [task for task in subset if (index, seed, task) not in seen]
            if missing and (index, seed) in started:  # a model's rows are written together: some lost, not unfinished
                path = started[index, seed]
                shard_id = next(shard_id for shard_path, shard_id, _ in shards if str(shard_path) == path)
                raise UsageError(
                    f"{path}: subset {index} ({subset_key(subset)!r}), seed {seed} has no row for task {missing[0]} but "
                    f"rows for its other tasks, so the shard was edited; delete it and its .json sidecar and rerun shard "
                    f"{shard_id}"
                )
    unfinished = [(index, seed) for index in range(len(subsets)) for seed in seeds if (index, seed) not in started]
    if unfinished:
        raise UsageError(
            f"{target}: {len(unfinished)} subset × seed jobs have no rows in the shards (first: subset {unfinished[0][0]}); "
            "rerun the unfinished shards (they resume)"
        )


def run_identity(meta: dict) -> dict:
    """A shard's sidecar without what differs between the shards of one run: the ``_PER_SHARD`` keys and the cost of
    the calibration sweep each shard runs."""
    identity = {key: value for key, value in meta.items() if key not in _PER_SHARD}
    if identity.get("calibration"):
        identity["calibration"] = {key: value for key, value in identity["calibration"].items() if key != "cost"}
    return identity


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
    identity = run_identity(metas[0])
    same = without_locations(identity)  # what every shard's sidecar must hold
    for path, meta in zip(paths, metas, strict=True):
        other = without_locations(run_identity(meta))
        differing = sorted(key for key in set(other) | set(same) if other.get(key) != same.get(key))
        if differing:
            raise UsageError(f"{path} was made by another run than {paths[0]} (sidecars differ in {differing}); rerun it")
    shard_rows = [(path, meta["shard"]["shard_id"], read_results(path)) for path, meta in zip(paths, metas, strict=True)]
    subsets = [tuple(subset) for subset in identity["subsets"]]
    seeds = run_seeds({**identity, "args": metas[0].get("args")})
    check_shard_rows(target, shard_rows, subsets, seeds)
    rows = [row for _, _, shard in shard_rows for row in shard]
    rank = {seed: index for index, seed in enumerate(seeds)}
    rows.sort(key=lambda row: (row["subset_id"], rank[row["seed"]], subsets[row["subset_id"]].index(row["task"])))
    flops = [meta.get("flops") for meta in metas]
    counted = [meta.get("flops_counted_subsets") for meta in metas]  # an estimate's: subsets its FLOPs were counted on
    meta = {
        **identity,
        "args": metas[0].get("args"),
        "merged_shards": [str(path) for path in paths],
        "seconds": sum(meta.get("seconds") or 0.0 for meta in metas),
        "cpu_seconds": sum(meta.get("cpu_seconds") or 0.0 for meta in metas),
        "flops": None if any(value is None for value in flops) else sum(flops),
        **({"flops_counted_subsets": None if None in counted else sum(counted)} if "flops_counted_subsets" in metas[0] else {}),
        "versions": metas[0].get("versions"),
    }
    if identity.get("calibration"):  # every shard ran the calibration sweep: the run's cost is their sum
        cost = total_cost([meta["calibration"].get("cost") or {} for meta in metas])
        meta["calibration"] = {**identity["calibration"], "cost": cost}
    with atomic_set():  # the merged CSV, its sidecar and an estimate's affinity files appear together or not at all
        write_results(target, rows)
        write_json(target.with_suffix(".json"), meta)
        if rows and rows[0]["source"] == "estimate":
            records = score_records(rows, meta["score"])
            save_affinities(target.with_suffix(""), records, len(meta["task_names"]), subsets, meta, meta.get("affinity", "mean"))
    return target, num_shards
