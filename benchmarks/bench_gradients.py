"""Throughput of projected per-sample gradients (Alg. 1) on SIGN: factored, vmap variants, a Python loop, Kronecker.

Usage: python benchmarks/bench_gradients.py --threads 1

Ways to get g = Pᵀ ∇θ logit_j(x_n; θ*) for N (node, task) pairs where each node has several tasks:
  (a) ``method="factored"`` (the default of step 2): one forward per node; each linear layer's input contracted
      with P once per node, its back-propagated error once per pair; exact, same P;
  (b) ``method="shared"``: one vmapped forward per node, K pullbacks per node, full per-pair gradients projected;
  (c) ``method="per_pair"``: one vmapped forward + backward per pair, then projected;
  (d) a Python loop of ``torch.autograd.grad`` per pair (batch of one), then the same batched projection, timed on
      ``--naive-pairs`` pairs and extrapolated linearly;
  (e) (a) with the structured ``KroneckerProjector`` (rank ``--kronecker-rank``): a different P.
All use projectors with their matrices already generated and cached (generation time reported apart). FLOPs are
counted by gradtag.flops on one run; "of peak" divides the achieved FLOP/s by a measured square float32 matmul's.
Prints one markdown table per size.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from gradtag.flops import count_flops  # noqa: E402
from gradtag.gradients import (  # noqa: E402
    collect_projected_gradients,
    eval_mode,
    num_trainable_params,
)
from gradtag.projection import KroneckerProjector, Projector  # noqa: E402
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
    parser.add_argument("--batch-size", type=int, default=256, help="nodes per call of (a), (b), (c), (e) (step 2's default)")
    parser.add_argument("--naive-pairs", type=int, default=200, help="pairs timed for the Python loop (c), extrapolated")
    parser.add_argument("--seed", type=int, default=0, help="seeds the model, features, pairs and projection")
    parser.add_argument("--repeats", type=int, default=3, help="time each method this many times, report the best")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 keeps torch's default")
    parser.add_argument("--kronecker-rank", type=int, default=16, help="sketch width per side of method (e)")
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


def timed(fn, device: torch.device, repeats: int = 1) -> tuple[float, float]:
    """(wall, CPU) seconds of the fastest of ``repeats`` runs (the minimum filters out other processes' load)."""
    best = (float("inf"), float("inf"))
    for _ in range(repeats):
        sync(device)
        start, cpu_start = time.perf_counter(), time.process_time()
        fn()
        sync(device)
        best = min(best, (time.perf_counter() - start, time.process_time() - cpu_start))
    return best


def matmul_peak(device: torch.device, size: int = 2048) -> float:
    """FLOP/s of a square float32 matmul on ``device`` (best of 3), the yardstick for "of peak"."""
    a, b = torch.randn(size, size, device=device), torch.randn(size, size, device=device)
    a @ b
    wall, _ = timed(lambda: a @ b, device, 3)
    return 2 * size**3 / wall


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


def bench_size(name: str, args, device: torch.device, peak: float) -> list[str]:
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
    generation, _ = timed(lambda: projector.matrix(device=device), device)  # fills the block cache on `device`
    shapes = [param.shape for param in model.parameters()]
    kronecker = KroneckerProjector(shapes, args.project_dim, args.seed, rank=args.kronecker_rank)

    def collect(method: str, chosen=projector, chosen_pairs=pairs):
        return collect_projected_gradients(model, features, chosen_pairs, chosen, args.batch_size, device, False, method)

    warm = (pairs[0][:64], pairs[1][:64])
    for method in ("factored", "shared", "per_pair"):
        collect(method, chosen_pairs=warm)
    collect("factored", kronecker, warm)
    sub = min(args.naive_pairs, num_pairs)
    sub_pairs = (pairs[0][:sub], pairs[1][:sub])
    chunk = args.batch_size * 3
    runs = {
        "(a) factored (ours, default)": (lambda: collect("factored"), num_pairs),
        "(b) shared forward, vmap": (lambda: collect("shared"), num_pairs),
        "(c) vmap per pair": (lambda: collect("per_pair"), num_pairs),
        f"(d) Python loop of autograd.grad ({sub} pairs, extrapolated)": (
            lambda: naive_loop(model, features, sub_pairs, projector, chunk, device),
            sub,
        ),
        f"(e) factored, Kronecker rank {args.kronecker_rank} (other P)": (lambda: collect("factored", kronecker), num_pairs),
    }
    results = {}
    for label, (fn, count) in runs.items():
        with count_flops() as flops:
            fn()
        wall, cpu = timed(fn, device, args.repeats if count < num_pairs else 1)
        results[label] = (wall / count, cpu / count, flops.total / count)
    dense = collect("factored")[0].astype(np.float64)
    structured = collect("factored", kronecker)[0].astype(np.float64)
    exact = collect("shared")[0].astype(np.float64)
    factored_error = np.abs(dense - exact).max() / np.abs(exact).max()
    norm_ratio = np.linalg.norm(structured, axis=1) / np.linalg.norm(dense, axis=1)

    loop_seconds = next(per_pair for label, (per_pair, _, _) in results.items() if label.startswith("(d)"))
    lines = [
        f"\n**{name}** SIGN (in_dim {args.in_dim}, {args.num_hops} hops, hop_width {hop_width}, head_width "
        f"{head_width}, {args.num_tasks} tasks): p = {num_params:,}, d = {args.project_dim}, N = {num_pairs:,} pairs "
        f"on {args.num_nodes:,} nodes ({num_pairs / args.num_nodes:.2f} tasks/node), batch {args.batch_size} nodes, "
        f"device {device}, {torch.get_num_threads()} threads, best of {args.repeats}; matmul peak "
        f"{peak / 1e9:.0f} GFLOP/s; generating P once took {generation:.2f} s. (a) equals (b) to "
        f"{factored_error:.1e} (max relative); (e)'s norms ÷ (a)'s: mean {norm_ratio.mean():.3f}, std "
        f"{norm_ratio.std():.3f}.\n",
        "| method | pairs/s | CPU s per 1k pairs | wall s for N pairs | faster than (d) | FLOPs per pair | of peak |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for label, (per_pair, cpu_per_pair, flops_per_pair) in results.items():
        lines.append(
            f"| {label} | {1 / per_pair:,.0f} | {1000 * cpu_per_pair:.2f} | {num_pairs * per_pair:.2f} | "
            f"{loop_seconds / per_pair:.2f}x | {flops_per_pair / 1e6:,.2f} M | {flops_per_pair / per_pair / peak:.0%} |"
        )
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
    peak = matmul_peak(device)
    for name in args.sizes:
        print("\n".join(bench_size(name, args, device, peak)), flush=True)


if __name__ == "__main__":
    main(get_args_parser().parse_args())
