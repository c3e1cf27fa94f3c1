"""Choose a target task's partners by forward or backward selection on step 3's linearized estimates, no training.

Usage:
    python select_tasks.py --gradients gradients/planted/all_seed0_d200 --target 0 --direction forward
    python select_tasks.py --gradients gradients/planted/all_seed{0,1,2}_d200 --target 3 --direction backward \
        --max-size 5 --train

Forward selection starts from {target} and each round adds the task whose subset S ∪ {i} has the best estimate
f̂(S ∪ {i}, target), stopping when no addition improves it or at --max-size tasks; backward selection starts from all
tasks and each round removes the task whose removal gives the best estimate (Grad-TAG, Remark 4.3, App. C.1.2). Each
round's candidates are fitted in one batched step-3 call on the projected gradients, averaged over the bases given.
Prints each round and writes ``<results-dir>/<name>.json`` (the path and the chosen subset); with ``--train`` the
chosen subset is also fine-tuned for real from the bases, as the truth is, and its trained score is reported beside
the estimate.
"""

from __future__ import annotations

import argparse

from gradtag.artifacts import run_main
from gradtag.checks import INT, NONNEGATIVE, POSITIVE_INT, ArgumentParser
from gradtag.scores import SCORES
from gradtag.selection import DIRECTIONS
from steps.cli import add_folder_args, add_run_args, add_strict_arg
from steps.estimate import STEP3_SOLVERS
from steps.select import SelectJob, run


def get_args_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    group = parser.add_argument_group("selection")
    group.add_argument("--gradients", nargs="+", required=True, help="step-2 folders, one per meta-initialization (M of them)")
    group.add_argument("--target", type=INT, required=True, help="index of the target task j whose partners are chosen")
    group.add_argument(
        "--direction",
        default="forward",
        choices=DIRECTIONS,
        help="forward: grow from {target}, adding the best task per round; backward: shrink from all tasks, removing one",
    )
    group.add_argument(
        "--max-size",
        type=POSITIVE_INT,
        default=None,
        help="at most this many tasks in the chosen subset (target included): forward stops there; backward keeps "
        "removing, even when no removal improves the estimate, until it is reached (default: no cap)",
    )
    group.add_argument(
        "--score",
        default="loss",
        choices=sorted(SCORES),
        help="the target's estimated validation score to maximise: loss (its negative), f1 or accuracy",
    )
    group.add_argument(
        "--train",
        action="store_true",
        help="also fine-tune the chosen subset for real from the bases' checkpoints, in the truth's regime and the "
        "bases' own settings (a one-line subsets file <name>_chosen.txt, truth CSV <name>_finetune.csv), and report "
        "its trained score beside the estimate",
    )
    step3 = parser.add_argument_group("step-3 estimate")
    step3.add_argument(
        "--l2", type=NONNEGATIVE, default=0.01, help="L2 strength λ of step 3's regression (as fit_linear_estimates.py)"
    )
    step3.add_argument(
        "--solver", default="newton-cg", choices=STEP3_SOLVERS, help="step 3's solver (fit_linear_estimates.py --help)"
    )
    step3.add_argument(
        "--data-dir", default=None, help="dataset files, if not where step 1 found them (--solver exact-step, --train)"
    )
    out = parser.add_argument_group("output")
    out.add_argument("--name", default=None, help="stem of the files written (default: <dataset>_select_task<j>_<direction>)")
    out.add_argument(
        "--overwrite", action="store_true", help="replace an existing <name>.json (and start the --train truth CSV afresh)"
    )
    add_strict_arg(parser)
    add_run_args(parser)
    add_folder_args(parser, "results")
    return parser


def main(args: argparse.Namespace) -> dict:
    return run(SelectJob.from_args(args))


if __name__ == "__main__":
    run_main(main, get_args_parser().parse_args())
