#!/usr/bin/env bash
# The embedded TEXT default (text_planted: short phrases, instructions in planted groups), end to end, offline:
# θ* = packaged MiniLM + LoRA, projected gradients, the fine-tuned truth on the same subsets, λ calibrated on other
# subsets trained for real, the comparison against truth and planted groups, clustering, grouped training against
# single-instruction (STL) and all-instruction (MTL) models, and a summary. Extra flags go to every torch step.
set -euo pipefail
cd "$(dirname "$0")/.."
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1  # the model is the packaged MiniLM: never reach for the hub

DATASET=text_planted
SEED=0            # meta-initialization seed (M = 1)
THREADS=${THREADS:-1}  # torch threads per step (1: steady on a shared 2-core machine; tiny models gain little from 2)
PROJECT_DIM=200   # d
SUBSETS=${SUBSETS:-64}  # m sampled subsets ...
SUBSET_SIZE=4     # ... of size alpha = n/3
K=4               # groups to find
# The fine-tuned truth: 5 full-batch Adam steps (a subset's 4 x 16 training pairs) at lr 3e-3 from θ*: deterministic
# in the subset (minibatch order made a subset's score mostly noise) and a few percent of θ*'s LoRA/head norm
read -r -a TRUTH <<< "${TRUTH_FLAGS:---fixed-steps 5 --batch-size 64 --lr 3e-3}"
CALIBRATE=${CALIBRATE:-24}  # subsets trained for real to choose the regression's λ on (0: use L2 below)
L2=0.01           # regression L2 strength without calibration
SOLVER=${SOLVER:-newton-cg}
RUN=all_seed${SEED}
SUBSETS_FILE=sampled_tasks/${DATASET}_m${SUBSETS}_a${SUBSET_SIZE}_s${SEED}.txt
NAME=$(basename "$SUBSETS_FILE" .txt)
COMMON=(--threads "$THREADS" --no-progress)
EXTRA=("$@")

step() { local name=$1; shift; local start=$SECONDS; echo "== $name: $*"; "$@"; TIMES+=("$name=$((SECONDS - start))"); }
TIMES=()

step train_theta python train_multitask.py --dataset $DATASET --seed $SEED --overwrite "${COMMON[@]}" "${EXTRA[@]}"
step gradients python collect_gradients.py --checkpoint saved/$DATASET/$RUN --project-dim $PROJECT_DIM --overwrite \
    "${COMMON[@]}" "${EXTRA[@]}"
step sample python sample_subsets.py --dataset $DATASET --num-subsets "$SUBSETS" --subset-size $SUBSET_SIZE --seed $SEED --overwrite
CALIBRATION=()
if [ "$CALIBRATE" -gt 0 ]; then
    CAL_FILE=sampled_tasks/${DATASET}_m${CALIBRATE}_a${SUBSET_SIZE}_s$((SEED + 1)).txt
    step sample_calibration python sample_subsets.py --dataset $DATASET --num-subsets "$CALIBRATE" --subset-size $SUBSET_SIZE \
        --seed $((SEED + 1)) --overwrite
    step truth_calibration python train_multitask.py --dataset $DATASET --subsets-file "$CAL_FILE" \
        --init-from saved/$DATASET/$RUN "${TRUTH[@]}" --overwrite "${COMMON[@]}" "${EXTRA[@]}"
    CALIBRATION=(--calibrate-with "results/$(basename "$CAL_FILE" .txt)_finetune.csv")
fi
step estimate python fit_linear_estimates.py --gradients gradients/$DATASET/${RUN}_d$PROJECT_DIM \
    --subsets-file "$SUBSETS_FILE" --l2 $L2 --solver "$SOLVER" "${CALIBRATION[@]}" "${COMMON[@]}" "${EXTRA[@]}"
step truth_finetune python train_multitask.py --dataset $DATASET --subsets-file "$SUBSETS_FILE" \
    --init-from saved/$DATASET/$RUN "${TRUTH[@]}" --overwrite "${COMMON[@]}" "${EXTRA[@]}"
step compare python compare_affinities.py --estimated results/${NAME}_estimate.csv \
    --trained results/${NAME}_finetune.csv --planted datasets/$DATASET/planted_groups.txt
step cluster python run_clustering.py --affinity results/${NAME}_estimate_higher_order.npy --k $K \
    --out results/${DATASET}_groups.txt --planted datasets/$DATASET/planted_groups.txt --overwrite
step grouped_training python train_multitask.py --dataset $DATASET --subsets-file results/${DATASET}_groups.txt \
    --baselines --seed $SEED --overwrite "${COMMON[@]}" "${EXTRA[@]}"

python pipeline_summary.py --groups results/${DATASET}_groups.json --training results/${DATASET}_groups_scratch_summary.json \
    --comparison results/${NAME}_finetune_report.json --times "${TIMES[@]}" --write results/${DATASET}_summary.md
