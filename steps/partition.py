"""Shards of list-shaped work: which items a ``--num-shards N --shard-id i`` job owns, and the names of its files.

Every list-shaped step cuts its list the same way: blocks of ``block`` consecutive items are dealt round-robin to
the shards (block 1: item k goes to shard k mod N). Items keep their global index (a subset's id is its line in the
subsets file whichever shard trains it), so the shards' files merge back into the file one unsharded run writes.
A shard that owns no item (more shards than blocks) still finishes cleanly and says so; where shards write files to be
merged it writes them without rows, so the merge sees it done.
"""

from __future__ import annotations

import argparse

from gradtag.artifacts import UsageError
from gradtag.checks import NONNEGATIVE_INT, POSITIVE_INT


def add_shard_args(parser: argparse.ArgumentParser, what: str) -> None:
    """``--num-shards`` and ``--shard-id`` for a step whose work is a list of ``what``."""
    group = parser.add_argument_group("shards")
    group.add_argument(
        "--num-shards",
        type=POSITIVE_INT,
        default=1,
        help=f"split the {what} into this many shards (cluster jobs); each writes its own files, merged by merge_results.py "
        "or by --launcher",
    )
    group.add_argument("--shard-id", type=NONNEGATIVE_INT, default=0, help="which shard this job computes: 0 .. num-shards-1")


def check_shard(num_shards: int, shard_id: int) -> None:
    if not 0 <= shard_id < num_shards:
        raise UsageError(f"--shard-id {shard_id} must lie in 0..{num_shards - 1} (--num-shards {num_shards})")


def shard_indices(count: int, num_shards: int, shard_id: int, block: int = 1) -> list[int]:
    """Indices in ``0 .. count-1`` that shard ``shard_id`` of ``num_shards`` owns: blocks of ``block`` consecutive
    indices dealt round-robin (a block is a unit whose results must not depend on the shard, e.g. one regression batch)."""
    check_shard(num_shards, shard_id)
    return [index for index in range(count) if (index // block) % num_shards == shard_id]


def shard_suffix(num_shards: int, shard_id: int) -> str:
    """``.shard<i>of<n>`` for a sharded run's file names, ``""`` for an unsharded one."""
    return f".shard{shard_id}of{num_shards}" if num_shards > 1 else ""
