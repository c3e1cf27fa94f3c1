"""Run the shards of a list-shaped step on existing engines: a local process pool, Ray, or SLURM through submitit.

A script given ``--launcher local|ray|slurm --num-shards N`` does not compute itself: it runs its step's ``run(job)``
once per shard (the job with ``shard_id = k``) as separate processes — pool workers, Ray tasks (a local Ray cluster
of ``--workers`` processes unless ``--ray-address`` joins a running one), or a SLURM job array — waits for all of
them, and then merges their files (``steps.merge``) where the step writes one file per shard. A shard that fails
stops the launch with its error; its finished rows stay, so rerunning the same command resumes every shard.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

from gradtag.artifacts import UsageError
from gradtag.checks import POSITIVE_INT

LAUNCHERS = ("none", "local", "ray", "slurm")
REPO = Path(__file__).resolve().parents[1]


def add_launcher_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("launcher (with --num-shards)")
    group.add_argument(
        "--launcher",
        default="none",
        choices=LAUNCHERS,
        help="none: compute --shard-id here; local: all --num-shards shards in a pool of --workers processes; ray: as Ray "
        "tasks; slurm: as a SLURM job array (submitit). The shards' files are merged when all have finished",
    )
    group.add_argument("--workers", type=POSITIVE_INT, default=2, help="local and ray: shards run at once (processes)")
    group.add_argument(
        "--threads-per-shard",
        type=POSITIVE_INT,
        default=1,
        help="torch and BLAS threads in each shard's process when --threads is not given (all launchers)",
    )
    group.add_argument(
        "--ray-address", default=None, help="ray: a running cluster to join ('auto' finds it); default: start a local one"
    )
    group.add_argument("--slurm-partition", default=None, help="slurm: partition to submit to (default: the cluster's)")
    group.add_argument("--slurm-time", type=POSITIVE_INT, default=60, help="slurm: time limit per shard, minutes")
    group.add_argument("--slurm-mem", type=POSITIVE_INT, default=8, help="slurm: memory per shard, GB")
    group.add_argument("--slurm-gpus", type=int, default=0, help="slurm: GPUs per shard")
    group.add_argument(
        "--slurm-logs", default="logs/submitit", help="slurm: folder for submitit's job scripts and logs (default: %(default)s)"
    )
    group.add_argument(
        "--submitit-cluster",
        default="slurm",
        choices=["slurm", "local"],
        help="slurm: submitit's executor; 'local' runs the array as local processes (tests, a machine without SLURM)",
    )


def run_shard(step: str, job, cwd: str) -> str | None:
    """One shard, in a fresh process: ``run(job)`` of the steps module ``step`` (e.g. ``steps.train``) from ``cwd``
    (the step sets its own thread count from ``job.threads``). Returns None, or the one-line error of a bad input
    (exit status 2 if it ran as a script)."""
    os.chdir(cwd)
    if str(REPO) not in sys.path:
        sys.path.insert(0, str(REPO))
    import importlib

    module = importlib.import_module(step)
    try:
        module.run(job)
    except UsageError as err:
        return str(err)
    return None


def launch(step: str, job, args: argparse.Namespace) -> None:
    """Run every shard of ``job`` (a frozen job of the steps module ``step``) through ``args.launcher`` and the
    launcher flags in ``args``; raise the first failed shard's error."""
    if job.shard_id != 0:
        raise UsageError("--launcher runs every shard itself: drop --shard-id")
    threads = job.threads or args.threads_per_shard
    shards = [dataclasses.replace(job, shard_id=shard_id, threads=threads) for shard_id in range(job.num_shards)]
    cwd = os.getcwd()
    if args.launcher == "local":
        with ProcessPoolExecutor(max_workers=args.workers, mp_context=get_context("spawn")) as pool:
            errors = list(pool.map(run_shard, [step] * len(shards), shards, [cwd] * len(shards)))
    elif args.launcher == "ray":
        errors = _run_ray(step, shards, cwd, threads, args)
    else:
        errors = _run_submitit(step, shards, cwd, threads, args)
    failed = [(index, error) for index, error in enumerate(errors) if error]
    if failed:
        index, error = failed[0]
        raise UsageError(f"shard {index} of {len(shards)} failed ({len(failed)} in all): {error}")


def _run_ray(step: str, shards, cwd: str, threads: int, args) -> list[str | None]:
    try:
        import ray
    except ImportError:
        raise UsageError("--launcher ray needs the ray package: pip install ray") from None
    pythonpath = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    runtime_env = {"env_vars": {"PYTHONPATH": pythonpath, "OMP_NUM_THREADS": str(threads)}}
    if args.ray_address:
        ray.init(address=args.ray_address, runtime_env=runtime_env, log_to_driver=False)
    else:
        ray.init(num_cpus=args.workers, runtime_env=runtime_env, include_dashboard=False, log_to_driver=False)
    try:
        task = ray.remote(num_cpus=1, max_retries=0)(run_shard)
        return ray.get([task.remote(step, shard, cwd) for shard in shards])
    finally:
        ray.shutdown()


def _run_submitit(step: str, shards, cwd: str, threads: int, args) -> list[str | None]:
    try:
        import submitit
    except ImportError:
        raise UsageError("--launcher slurm needs the submitit package: pip install submitit") from None
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    try:
        executor = submitit.AutoExecutor(folder=args.slurm_logs, cluster=args.submitit_cluster)
    except RuntimeError:  # submitit's slurm executor finds no srun: not a SLURM machine
        raise UsageError(
            "--launcher slurm found no SLURM here (no srun on PATH); run on a SLURM login node, or pass "
            "--submitit-cluster local to run the shards as local processes"
        ) from None
    parameters = {"timeout_min": args.slurm_time, "cpus_per_task": threads}
    if args.submitit_cluster == "slurm":
        parameters.update(slurm_mem=f"{args.slurm_mem}G", slurm_gpus_per_node=args.slurm_gpus or None)
        if args.slurm_partition:
            parameters["slurm_partition"] = args.slurm_partition
    executor.update_parameters(**{key: value for key, value in parameters.items() if value is not None})
    jobs = executor.map_array(run_shard, [step] * len(shards), shards, [cwd] * len(shards))
    results = []
    for job in jobs:
        try:
            results.append(job.result())
        except Exception as err:  # a crashed job: submitit re-raises it here with its log's path
            results.append(f"{type(err).__name__} in job {job.job_id} (log: {job.paths.stderr})")
    return results
