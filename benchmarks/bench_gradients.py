"""Throughput of projected per-sample gradients (Alg. 1) on SIGN: shared forward vs vmap per pair vs a Python loop.

Usage: python benchmarks/bench_gradients.py --device auto --num-tasks 20 --project-dim 200

Three ways to get g = Pᵀ ∇θ logit_j(x_n; θ*) for N (node, task) pairs where each node has ~3 tasks:
  (a) ``collect_projected_gradients(shared_forward=True)``: one vmapped forward per node, K pullbacks per node;
  (b) ``collect_projected_gradients(shared_forward=False)``: one vmapped forward+backward per pair;
  (c) a Python loop of ``torch.autograd.grad`` per pair (batch of one), then the same batched projection. (c) runs on
      a subsample of ``--naive-pairs`` pairs and its time for N pairs is extrapolated linearly.
All three use the same projector with its blocks already generated and cached (generation time is reported apart).
Prints one markdown table; "grad only" columns time the gradients without the projection.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradtag.gradients import (  # noqa: E402
    collect_projected_gradients,
    eval_mode,
    group_pairs_by_node,
    num_trainable_params,
    output_gradients,
    output_gradients_multi,
)
from gradtag.projection import Projector  # noqa: E402
from models import build_model  # noqa: E402

SIZES = {  # name: (hop_width, head_width); in_dim 128 and 3 hops as in the paper's SIGN (App. C.1.1)
    "paper": (256, 256),
    "narrow": (16, 4),
}


def get_args_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0], add_help=True)
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="auto = cuda if available")
    parser.add_argument("--sizes", nargs="+", default=list(SIZES), choices=list(SIZES), help="SIGN sizes to time")
    parser.add_argument("--num-tasks", type=int, default=20, help="number of tasks T (output logits)")
    parser.add_argument("--in-dim", type=int, default=128, help="node feature dimension")
    parser.add_argument("--num-hops", type=int, default=3, help="propagation hops K (K + 1 hop inputs)")
    parser.add_argument("--project-dim", type=int, default=200, help="projected dimension d")
    parser.add_argument("--num-nodes", type=int, default=1000, help="distinct nodes; pairs = nodes x ~3 tasks")
    parser.add_argument("--max-tasks-per-node", type=int, default=5, help="tasks per node drawn uniformly in [1, this]")
    parser.add_argument("--batch-size", type=int, default=64, help="nodes per vmap call for (a) and (b)")
    parser.add_argument("--naive-pairs", type=int, default=200, help="pairs timed for the Python loop (c), extrapolated")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model, features, pairs and projection")
    parser.add_argument("--repeats", type=int, default=3, help="time each method this many times, report the best")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    return parser


def make_pairs(num_nodes: int, num_tasks: int, max_tasks: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Each node gets 1..max_tasks distinct tasks; pairs returned in shuffled order (as a caller would pass them)."""
    counts = rng.integers(1, min(max_tasks, num_tasks) + 1, size=num_nodes)
    nodes = np.repeat(np.arange(num_nodes), counts)
    tasks = np.concatenate([rng.choice(num_tasks, size=count, replace=False) for count in counts])
    order = rng.permutation(len(nodes))
    return nodes[order], tasks[order]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` runs, in seconds (the minimum filters out other processes' load)."""
    best = float("inf")
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def grads_only(model, features, pairs, batch_size, device, shared_forward: bool) -> None:
    """The gradient part of (a) / (b) without the projection, batched exactly as collect_projected_gradients."""
    for nodes, positions in group_pairs_by_node(pairs[0], batch_size):
        x = features[torch.as_tensor(nodes)].to(device)
        tasks = torch.as_tensor(pairs[1][positions], device=device)
        if shared_forward:
            output_gradients_multi(model, x, tasks)
        else:
            output_gradients(model, x.repeat_interleave(tasks.shape[1], dim=0), tasks.reshape(-1))


def naive_loop(model, features, pairs, projector: Projector | None, chunk: int, device) -> None:
    """(c): forward + ``torch.autograd.grad`` per pair; stacked gradients projected ``chunk`` pairs at a time."""
    params = [param for param in model.parameters() if param.requires_grad]
    stacked = []
    with eval_mode(model):
        for node, task in zip(*pairs, strict=True):
            logit = model(features[node : node + 1].to(device))[0, task]
            stacked.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(logit, params)]))
            if projector is not None and len(stacked) == chunk:
                projector.project(torch.stack(stacked))
                stacked = []
    if projector is not None and stacked:
        projector.project(torch.stack(stacked))


def bench_size(name: str, args, device: torch.device) -> list[str]:
    hop_width, head_width = SIZES[name]
    torch.manual_seed(args.seed)
    rng = np.random.default_rng(args.seed)
    model = build_model("sign", args.in_dim, args.num_hops, args.num_tasks, hop_width=hop_width, head_width=head_width)
    model = model.to(device)
    features = torch.randn(args.num_nodes, args.num_hops + 1, args.in_dim)
    pairs = make_pairs(args.num_nodes, args.num_tasks, args.max_tasks_per_node, rng)
    num_pairs = len(pairs[0])
    num_params = num_trainable_params(model)
    projector = Projector(num_params, args.project_dim, args.seed, cache_bytes=4 * 2**30)
    generation = timed(lambda: projector.matrix(device=device), device)  # fills the block cache on `device`

    warm = (pairs[0][:64], pairs[1][:64])
    for shared in (True, False):
        collect_projected_gradients(model, features, warm, projector, args.batch_size, device, False, shared)

    results = {}
    for label, shared in (("(a) shared forward, vmap", True), ("(b) vmap per pair", False)):
        total = timed(
            lambda s=shared: collect_projected_gradients(model, features, pairs, projector, args.batch_size, device, False, s),
            device,
        )
        grad = timed(lambda s=shared: grads_only(model, features, pairs, args.batch_size, device, s), device)
        results[label] = (num_pairs / total, num_pairs / grad, num_pairs)
    sub = min(args.naive_pairs, num_pairs)
    sub_pairs = (pairs[0][:sub], pairs[1][:sub])
    chunk = args.batch_size * 3
    total = timed(lambda: naive_loop(model, features, sub_pairs, projector, chunk, device), device, args.repeats)
    grad = timed(lambda: naive_loop(model, features, sub_pairs, None, chunk, device), device, args.repeats)
    results[f"(c) Python loop of autograd.grad ({sub} pairs, extrapolated)"] = (sub / total, sub / grad, sub)

    base_rate = results["(a) shared forward, vmap"][0]
    lines = [
        f"\n**{name}** SIGN (in_dim {args.in_dim}, {args.num_hops} hops, hop_width {hop_width}, head_width "
        f"{head_width}, {args.num_tasks} tasks): p = {num_params:,}, d = {args.project_dim}, N = {num_pairs:,} pairs "
        f"on {args.num_nodes:,} nodes ({num_pairs / args.num_nodes:.2f} tasks/node), batch {args.batch_size} nodes, "
        f"device {device}, {torch.get_num_threads()} threads, best of {args.repeats}; generating P once took "
        f"{generation:.2f} s.\n",
        "| method | pairs/s (grad + projection) | time for N pairs (s) | (a) is faster by | pairs/s (grad only) |",
        "|---|---:|---:|---:|---:|",
    ]
    for label, (rate, grad_rate, _) in results.items():
        lines.append(f"| {label} | {rate:,.0f} | {num_pairs / rate:.2f} | {base_rate / rate:.2f}x | {grad_rate:,.0f} |")
    return lines


def main(args) -> None:
    if args.device == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    elif args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("error: --device cuda but CUDA is not available")
    else:
        device = torch.device(args.device)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if min(args.max_tasks_per_node, args.num_nodes, args.naive_pairs, args.repeats, args.batch_size) < 1:
        raise SystemExit("error: --max-tasks-per-node, --num-nodes, --naive-pairs, --repeats, --batch-size must be >= 1")
    for name in args.sizes:
        print("\n".join(bench_size(name, args, device)), flush=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
