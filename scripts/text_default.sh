#!/usr/bin/env bash
# The embedded TEXT default (text_planted: short phrases, instructions in planted groups), end to end, offline:
# θ* = packaged MiniLM + LoRA, projected gradients, the fine-tuned truth on the same subsets, λ calibrated on other
# subsets trained for real, the comparison against truth and planted groups, clustering, grouped training against
# single-instruction (STL) and all-instruction (MTL) models, and a summary (results/text_planted_summary.md).
# Usage: [NAME=value ...] bash scripts/text_default.sh [--threads N] [--device D] [--no-progress]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # the model is the packaged MiniLM: never reach for the hub

knob THREADS 1 "" "torch threads per step (1: steady on a shared 2-core machine; tiny models gain little from 2)"
knob SUBSETS 64 --num-subsets "m: subsets sampled"
# The fine-tuned truth: 5 full-batch Adam steps (a subset's 4 x 16 training pairs) at lr 3e-3 from θ*: deterministic
# in the subset (minibatch order made a subset's score mostly noise) and a few percent of θ*'s LoRA/head norm
knob TRUTH_FLAGS "--fixed-steps 5 --batch-size 64 --lr 3e-3" "" "fine-tuned truth settings"
knob CALIBRATE 24 --calibrate-with "subsets trained for real to choose the regression's λ on (0: use L2)"
knob L2 0.01 --l2 "regression L2 strength without calibration"
knob SOLVER newton-cg --solver "step 3's solver"
parse_script_args "$@"
check_calibration
DATASET=text_planted
SEED=0            # meta-initialization seed (M = 1)
PROJECT_DIM=200   # d
SUBSET_SIZE=4     # alpha = n/3
K=4               # groups to find
read -r -a TRUTH <<< "$TRUTH_FLAGS"
RUN=all_seed${SEED}
COMMON+=(--no-progress)
SOLVERS=""  # step 3's own solver (newton-cg) calibrates: the exact step needs the graph network

sample_steps --dataset $DATASET
step train_theta python train_multitask.py --dataset $DATASET --seed $SEED --overwrite "${COMMON[@]}"
step gradients python collect_gradients.py --checkpoint saved/$DATASET/$RUN --project-dim $PROJECT_DIM --overwrite \
    "${COMMON[@]}"
if [ "$CALIBRATE" -gt 0 ]; then
    step truth_calibration python train_multitask.py --dataset $DATASET --subsets-file "$CAL_FILE" \
        --init-from saved/$DATASET/$RUN "${TRUTH[@]}" --overwrite "${COMMON[@]}"
fi
step estimate python fit_linear_estimates.py --gradients gradients/$DATASET/${RUN}_d$PROJECT_DIM \
    --subsets-file "$SUBSETS_FILE" --l2 "$L2" --solver "$SOLVER" "${CALIBRATION[@]}" "${COMMON[@]}"
step truth_finetune python train_multitask.py --dataset $DATASET --subsets-file "$SUBSETS_FILE" \
    --init-from saved/$DATASET/$RUN "${TRUTH[@]}" --overwrite "${COMMON[@]}"
step compare python compare_affinities.py --estimated results/${NAME}_estimate.csv \
    --trained results/${NAME}_finetune.csv --planted datasets/$DATASET/planted_groups.txt
step cluster python run_clustering.py --affinity results/${NAME}_estimate_higher_order.npy --k $K \
    --out results/${DATASET}_groups.txt --planted datasets/$DATASET/planted_groups.txt --overwrite
step grouped_training python train_multitask.py --dataset $DATASET --subsets-file results/${DATASET}_groups.txt \
    --baselines --seed $SEED --overwrite "${COMMON[@]}"

python pipeline_summary.py --groups results/${DATASET}_groups.json --training results/${DATASET}_groups_scratch_summary.json \
    --comparison results/${NAME}_finetune_report.json --threads "$THREADS" --times "${TIMES[@]}" \
    --write results/${DATASET}_summary.md
