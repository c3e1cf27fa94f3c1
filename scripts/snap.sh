#!/usr/bin/env bash
# A SNAP community graph end to end: steps 1-4 plus the fine-tuned truth on the same subsets, and grouped training
# against STL and naive MTL, then results/<name>_summary.md.
# Usage: DATA_DIR=path/to/files [NAME=value ...] bash scripts/snap.sh <name> [--threads N] [--device D] [--no-progress]
# Files: com-<name>.ungraph.txt[.gz] and com-<name>.top5000.cmty.txt[.gz] in DATA_DIR (default datasets/<name>).
# Example, a graph of your own with 8 communities: DATA_DIR=mydata NUM_TASKS=8 SUBSETS=50 bash scripts/snap.sh mygraph
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

knob DATA_DIR "datasets/${1:-<name>}" --data-dir "folder of the SNAP files"
knob NUM_TASKS 20 --num-tasks "n: the n largest communities are the tasks"
knob THREADS 1 "" "torch threads per step (1: steady on a shared machine; README's figures use it)"
knob HOP_WIDTH 16 --hop-width "θ*'s SIGN hop width (paper: 256, a flat truth on 2 CPU cores; README)"
# The shared head and the weight decay scale with the number of tasks (README, "θ* health on DBLP"): the loss is a
# mean over tasks while the decay is a sum over weights, so more tasks need less decay and a wider shared layer.
# Measured on DBLP (θ* health check): 20 tasks learn with head 16, decay 1e-2; at 100 tasks decay 2e-3 / 1e-3 / 3e-4 / 1e-4
# (head 64) learned 47 / 72 / 89 / 96 of 100 tasks.
# Above 20 tasks the subsets follow the paper (Sec. 5.3.4: m = 2,000, α = 10 at n = 100, "the result stabilizes when m
# reaches 2000"): at m = 200-400 each of 100 tasks sits in 40-80 subsets against 99 partners, and the truth's
# split-half rows ρ was 0.02-0.11 (no partner structure to measure); at m = 2,000, α = 10 it was 0.31.
if [ "$NUM_TASKS" -le 20 ] 2>/dev/null; then
    SCALED_HEAD=16; SCALED_DECAY=1e-2; SCALED_SUBSETS=200; SCALED_SIZE=5; SCALED_K=5
else
    SCALED_HEAD=64; SCALED_DECAY=1e-4; SCALED_SUBSETS=2000; SCALED_SIZE=10; SCALED_K=10
fi
knob HEAD_WIDTH $SCALED_HEAD --head-width "θ*'s shared head width (16 up to 20 tasks, else 64)"
knob WEIGHT_DECAY $SCALED_DECAY --weight-decay "θ*'s weight decay (1e-2 up to 20 tasks, else 1e-4)"
knob SUBSETS $SCALED_SUBSETS --num-subsets "m: subsets sampled (200 up to 20 tasks: every pair of 20 about 10 times; else 2000)"
knob SUBSET_SIZE $SCALED_SIZE --subset-size "α: tasks per subset (5 up to 20 tasks, else 10)"
knob K $SCALED_K --k "groups to find (5 up to 20 tasks, else 10)"
knob BALANCED --balanced "" "--balanced (class-balanced BCE) or --no-balanced"
knob EPOCHS 300 --epochs "training epochs (early stopping usually ends training well before)"
knob BASELINES 1 --baselines "1: train the Grad-TAG groups and the STL / MTL baselines; 0: skip (STL trains one model per task)"
# The models a user finally trains (one per group, and the STL / MTL baselines) are not θ*: the decay that keeps θ*
# from memorising (good gradients for the estimate) over-regularises them. Measured on DBLP, 20 tasks (README): width
# 64 without decay puts grouped ahead of STL; width 16 with decay 1e-2 leaves grouped below STL.
knob FINAL_WIDTH 64 "" "hop and head width of the final models"
knob FINAL_DECAY 0 "" "weight decay of the final models"
knob TRUTH_FLAGS "" "" "fine-tuned truth settings, e.g. \"--fixed-steps 50 --lr 1e-2\""
knob CALIBRATE auto --calibrate-with "subsets trained for real to choose the regression's λ on (0: use L2; auto: 40, or enough for every task to have its share)"
knob L2 0.01 --l2 "regression L2 strength without calibration"
# Step 3's solver, chosen with λ on the calibration subsets among SOLVERS. The exact step (the strong-λ limit without
# the projection) won on DBLP at 20 tasks (per-task ρ on the calibration subsets 0.886 vs newton-cg's best 0.762) and at
# 100 (0.271 vs 0.224), while newton-cg's nine λ were most of the sweep's cost (docs/scale.md): add it with
# SOLVERS="exact-step newton-cg" for a θ* unlike these (the projected regression, the paper's, won on the embedded
# default).
knob SOLVERS exact-step --calibrate-solvers "solvers the calibration chooses among"
knob SOLVER exact-step --solver "step 3's solver without calibration"
knob SEED 0 --seed "meta-initialization seed (M = 1)"
DATASET=${1:?usage: bash scripts/snap.sh <name> [flags]   (bash scripts/snap.sh --help lists every setting)}
[ "$DATASET" = --help ] || [ "$DATASET" = -h ] || shift
parse_script_args "$@"
check_calibration
PROJECT_DIM=200
read -r -a TRUTH <<< "$TRUTH_FLAGS"
RUN=all_seed${SEED}
DATA=(--dataset "$DATASET" --data-dir "$DATA_DIR" --num-tasks "$NUM_TASKS")
# class-balanced loss and weight decay keep θ* from memorising its training nodes (see README, the embedded default)
MODEL=(--hop-width "$HOP_WIDTH" --head-width "$HEAD_WIDTH" --epochs "$EPOCHS" --patience 50 "$BALANCED" --weight-decay "$WEIGHT_DECAY")
if [ "$SUBSET_SIZE" = 2 ]; then AFFINITY=pairwise; else AFFINITY=higher_order; fi  # step 3's T: f({i,j}, i), else Eq. 1

# what can be checked without training comes first: the graph's communities (data check) and the subsets; λ must
# match the truth's regime (README, "The truth's regime"): a few other subsets are trained for real to pick it on
step check_data python check_data.py "${DATA[@]}" --threads "$THREADS"
sample_steps "${DATA[@]}"
step train_theta python train_multitask.py "${DATA[@]}" "${MODEL[@]}" --seed "$SEED" --overwrite "${COMMON[@]}"
step gradients python collect_gradients.py --checkpoint "saved/$DATASET/$RUN" --project-dim $PROJECT_DIM --overwrite "${COMMON[@]}"
if [ "$CALIBRATE" -gt 0 ]; then
    step truth_calibration python train_multitask.py "${DATA[@]}" "${MODEL[@]}" --subsets-file "$CAL_FILE" \
        --init-from "saved/$DATASET/$RUN" "${TRUTH[@]}" --overwrite "${COMMON[@]}"
fi
step estimate python fit_linear_estimates.py --gradients "gradients/$DATASET/${RUN}_d$PROJECT_DIM" \
    --subsets-file "$SUBSETS_FILE" --l2 "$L2" --solver "$SOLVER" "${CALIBRATION[@]}" "${COMMON[@]}"
step truth_finetune python train_multitask.py "${DATA[@]}" "${MODEL[@]}" --subsets-file "$SUBSETS_FILE" \
    --init-from "saved/$DATASET/$RUN" "${TRUTH[@]}" --overwrite "${COMMON[@]}"
step compare python compare_affinities.py --estimated "results/${NAME}_estimate.csv" --trained "results/${NAME}_finetune.csv" --k "$K"
step cluster python run_clustering.py --affinity "results/${NAME}_estimate_${AFFINITY}.npy" --k "$K" \
    --out "results/${DATASET}_groups.txt" --overwrite
SUMMARY=()
if [ "$BASELINES" = 1 ]; then
    FINAL=(--hop-width "$FINAL_WIDTH" --head-width "$FINAL_WIDTH" --epochs "$EPOCHS" --patience 50 "$BALANCED" \
        --weight-decay "$FINAL_DECAY")
    step grouped_training python train_multitask.py "${DATA[@]}" "${FINAL[@]}" --subsets-file "results/${DATASET}_groups.txt" \
        --baselines --seed "$SEED" --overwrite "${COMMON[@]}"
    SUMMARY=(--training "results/${DATASET}_groups_scratch_summary.json")
fi

python pipeline_summary.py --groups "results/${DATASET}_groups.json" "${SUMMARY[@]}" \
    --comparison "results/${NAME}_finetune_report.json" --threads "$THREADS" --times "${TIMES[@]}" \
    --write "results/${DATASET}_summary.md"
