"""Step 3: estimate f(S, j) for every sampled subset S by logistic regression on projected gradients (Eq. 3-5).

Usage:
    python fit_linear_estimates.py --gradients gradients/planted/all_seed0_d200 \
        --subsets-file sampled_tasks/planted_m200_a5_s0.txt
    python fit_linear_estimates.py --gradients gradients/planted/all_seed{0,1,2}_d200 --subsets-file ... --eval reconstructed

For each subset S it fits ŵ_S on the training rows of the tasks in S with the base model's logit as a fixed offset and
an L2 penalty, all subsets batched. Each task j in S is then scored on its validation (and test) samples, either
``linearized`` (logits = base logit + projected gradient · ŵ_S; no network pass), ``reconstructed`` (the network
with weights Ŵ_S = θ* + P ŵ_S; the paper's way) or ``second-order`` (the network's expansion to second order along
P ŵ_S, Remark 3.1: the linearized logits plus ½ Δᵀ∇²f Δ, by forward-mode Hessian-vector products at θ*). Scores are
averaged over the M meta-initializations given. Writes ``results/<name>_estimate.csv`` (one row per subset and
task) and the affinity matrix ``results/<name>_estimate_{pairwise,higher_order}.npy`` (pairwise when every subset is a
pair, Eq. (1) otherwise) with its counts and JSON; with ``--affinity additive`` also ``<name>_estimate_additive.npy``.
"""

from __future__ import annotations

import argparse

from gradtag.artifacts import run_main
from gradtag.checks import NONNEGATIVE, POSITIVE_INT, ArgumentParser
from gradtag.regression import BATCH_SIZE
from gradtag.scores import SCORES
from steps.cli import add_folder_args, add_run_args, add_strict_arg
from steps.estimate import AFFINITIES, EVAL_MODES, L2_GRID, STEP3_SOLVERS, EstimateJob, check_job, run
from steps.launch import add_launcher_args, launch
from steps.merge import merge_shards
from steps.partition import add_shard_args


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gradients", nargs="+", required=True, help="step-2 folders, one per meta-initialization (M of them)")
    parser.add_argument("--subsets-file", required=True, help="sampled_tasks file: one subset of task indices per line")
    parser.add_argument(
        "--l2", type=NONNEGATIVE, default=0.01, help="L2 strength λ of the regression (on mean-normalised per-task losses)"
    )
    parser.add_argument(
        "--solver",
        default="newton-cg",
        choices=STEP3_SOLVERS,
        help="exact Newton (-cg: matrix-free), one Newton step from w=0, or exact-step: the strong-λ limit of every "
        "solver computed without the projection, Δ_S = −∇L_S(θ*)/λ scored by exact Jacobian-vector products at θ* "
        "(gradtag/exact_step.py; reads the checkpoint and dataset, not the gradient files)",
    )
    parser.add_argument("--eval", default="linearized", choices=EVAL_MODES, help="how each task of a subset is scored")
    parser.add_argument("--score", default="loss", choices=sorted(SCORES), help="affinity entry: -val loss or val F1")
    parser.add_argument(
        "--affinity",
        default="mean",
        choices=AFFINITIES,
        help="higher-order T: mean (paper Eq. 1, <name>_estimate_higher_order.npy) or additive: also the ridge partner "
        "effects T_ik = level_i + b_ik (gradtag.affinity.additive_affinity) in <name>_estimate_additive.npy beside it",
    )
    parser.add_argument(
        "--batch-size", type=POSITIVE_INT, default=BATCH_SIZE, help="subsets fitted together (a speed and memory knob)"
    )
    parser.add_argument(
        "--count-flops",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="count the FLOPs of step 3 (gradtag/flops.py) in a second, untimed pass over the per-task work and the first "
        "--batch-size subsets, scaled to all of them (recorded: flops_counted_subsets); --no-count-flops skips it",
    )
    parser.add_argument(
        "--calibrate-with",
        nargs="+",
        default=None,
        metavar="TRUTH_CSV",
        help="truth CSVs (train_multitask.py --subsets-file) on a few subsets trained for real: λ is then the value of "
        "--l2-grid whose estimates match them best (per-task Spearman of --score), instead of --l2; the held-out ρ "
        "(chosen on half the subsets, scored on the other) is printed and recorded",
    )
    parser.add_argument(
        "--calibrate-solvers",
        nargs="+",
        default=None,
        choices=STEP3_SOLVERS,
        metavar="SOLVER",
        help="with --calibrate-with: choose the solver too, the best (solver, λ) of these solvers × --l2-grid "
        f"(from {', '.join(STEP3_SOLVERS)}; default: --solver only)",
    )
    parser.add_argument(
        "--l2-grid",
        nargs="+",
        type=NONNEGATIVE,
        default=list(L2_GRID),
        help="λ values tried by --calibrate-with",
    )
    parser.add_argument(
        "--data-dir", default=None, help="dataset files, if not where step 1 found them (reconstructed, second-order)"
    )
    parser.add_argument("--name", default=None, help="result name (default: the subsets file stem)")
    add_strict_arg(parser)
    add_run_args(parser)
    add_folder_args(parser, "results")
    add_shard_args(parser, "subsets (whole --batch-size batches)")
    add_launcher_args(parser)
    return parser


def main(args: argparse.Namespace) -> None:
    job = EstimateJob.from_args(args)
    if args.launcher == "none":
        run(job)
        return
    check_job(job)
    launch("steps.estimate", job, args)
    path, count = merge_shards(job.csv_path())
    print(f"estimated {count} shards with --launcher {args.launcher}; merged them into {path} and its affinity matrix")


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
