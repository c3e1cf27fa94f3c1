#!/usr/bin/env bash
# Instruction tasks of a SuperGLUE sentence-pair data set end to end: θ* (a pretrained LM with LoRA on every
# instruction), projected LoRA gradients, estimates, the fine-tuned truth on the same subsets, grouping, and grouped
# training against single-instruction and all-instruction training. Called by scripts/rte.sh and scripts/wic.sh with
# the paper's settings (App. C.1.1: T5-base, LoRA rank 4, 100 instructions; sized for a GPU). Every setting below is a
# variable: e.g. MODEL=t5-small NUM_TASKS=10 INSTRUCTIONS=../shared/data/instructions/promptsource_super_glue_rte.yaml.
# Usage: DATA_DIR=path/to/jsonl bash scripts/instructions.sh <rte|wic> [extra flags for the torch steps, e.g. --device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."

DATASET=${1:?usage: bash scripts/instructions.sh <rte|wic> [flags]}
shift
DATA_DIR=${DATA_DIR:-}                      # train.jsonl / val.jsonl (SuperGLUE fields); empty: Hugging Face by name
INSTRUCTIONS=${INSTRUCTIONS:?set INSTRUCTIONS to a promptsource YAML or a JSON/JSONL template list}
NUM_TASKS=${NUM_TASKS:-100}                 # the first n instructions of the file are the tasks
EXAMPLES_PER_TASK=${EXAMPLES_PER_TASK:-200} # training examples each instruction draws
EVAL_PER_TASK=${EVAL_PER_TASK:-100}         # validation and test examples each instruction draws
MODEL=${MODEL-t5-base}                      # the paper's LM (a name or a local folder); empty: the packaged MiniLM
LORA_RANK=${LORA_RANK:-4}                   # the paper's LoRA rank
EPOCHS=${EPOCHS:-10}                        # θ* epochs (early stopping on validation accuracy)
LR=${LR:-1e-3}
BATCH_SIZE=${BATCH_SIZE:-16}
SUBSETS=${SUBSETS:-400}                     # m sampled subsets ...
SUBSET_SIZE=${SUBSET_SIZE:-10}              # ... of size alpha
K=${K:-10}                                  # groups
PROJECT_DIM=${PROJECT_DIM:-200}             # d
CALIBRATE=${CALIBRATE:-40}                  # subsets trained for real to choose λ on (0: use L2)
L2=${L2:-0.01}
read -r -a TRUTH <<< "${TRUTH_FLAGS:-}"     # fine-tuned truth settings, e.g. TRUTH_FLAGS="--fixed-steps 50 --lr 1e-3"
BASELINES=${BASELINES:-1}                   # 0 skips STL (one model per instruction) and MTL
THETA=${THETA:-}                            # a trained θ* folder to reuse (skips step 1); empty: train it here
SEED=0
RUN=all_seed${SEED}
DATA=(--dataset "$DATASET" --instructions "$INSTRUCTIONS" --num-tasks "$NUM_TASKS" --examples-per-task "$EXAMPLES_PER_TASK"
    --eval-per-task "$EVAL_PER_TASK")
if [ -n "$DATA_DIR" ]; then DATA+=(--data-dir "$DATA_DIR"); fi
LM=(--lora-rank "$LORA_RANK" --epochs "$EPOCHS" --lr "$LR" --batch-size "$BATCH_SIZE")
if [ -n "$MODEL" ]; then LM+=(--text-model "$MODEL"); fi
SUBSETS_FILE=sampled_tasks/${DATASET}_m${SUBSETS}_a${SUBSET_SIZE}_s${SEED}.txt
NAME=$(basename "$SUBSETS_FILE" .txt)
EXTRA=("$@")

step() { local name=$1; shift; local start=$SECONDS; echo "== $name: $*"; "$@"; TIMES+=("$name=$((SECONDS - start))"); }
TIMES=()

if [ -n "$THETA" ]; then
    if [ "$(realpath "$THETA")" != "$(realpath -m saved/$DATASET/$RUN)" ]; then
        rm -rf "saved/$DATASET/$RUN" && mkdir -p "saved/$DATASET" && cp -r "$THETA" "saved/$DATASET/$RUN"
    fi
else
    step train_theta python train_multitask.py "${DATA[@]}" "${LM[@]}" --seed $SEED --overwrite "${EXTRA[@]}"
fi
step gradients python collect_gradients.py --checkpoint saved/$DATASET/$RUN --project-dim "$PROJECT_DIM" --overwrite "${EXTRA[@]}"
step sample python sample_subsets.py "${DATA[@]}" --num-subsets "$SUBSETS" --subset-size "$SUBSET_SIZE" --seed $SEED --overwrite
CALIBRATION=()
if [ "$CALIBRATE" -gt 0 ]; then
    CAL_FILE=sampled_tasks/${DATASET}_m${CALIBRATE}_a${SUBSET_SIZE}_s$((SEED + 1)).txt
    step sample_calibration python sample_subsets.py "${DATA[@]}" --num-subsets "$CALIBRATE" --subset-size "$SUBSET_SIZE" \
        --seed $((SEED + 1)) --overwrite
    step truth_calibration python train_multitask.py "${DATA[@]}" "${LM[@]}" --subsets-file "$CAL_FILE" \
        --init-from saved/$DATASET/$RUN "${TRUTH[@]}" --overwrite "${EXTRA[@]}"
    CALIBRATION=(--calibrate-with "results/$(basename "$CAL_FILE" .txt)_finetune.csv" --calibrate-solvers newton-cg)
fi
step estimate python fit_linear_estimates.py --gradients gradients/$DATASET/${RUN}_d$PROJECT_DIM \
    --subsets-file "$SUBSETS_FILE" --l2 "$L2" "${CALIBRATION[@]}" "${EXTRA[@]}"
step truth_finetune python train_multitask.py "${DATA[@]}" "${LM[@]}" --subsets-file "$SUBSETS_FILE" \
    --init-from saved/$DATASET/$RUN "${TRUTH[@]}" --overwrite "${EXTRA[@]}"
step compare python compare_affinities.py --estimated results/${NAME}_estimate.csv --trained results/${NAME}_finetune.csv --k "$K"
step cluster python run_clustering.py --affinity results/${NAME}_estimate_higher_order.npy --k "$K" \
    --out results/${DATASET}_groups.txt --overwrite
SUMMARY=()
if [ "$BASELINES" = 1 ]; then
    step grouped_training python train_multitask.py "${DATA[@]}" "${LM[@]}" --subsets-file results/${DATASET}_groups.txt \
        --baselines --seed $SEED --overwrite "${EXTRA[@]}"
    SUMMARY=(--training results/${DATASET}_groups_scratch_summary.json)
fi

python pipeline_summary.py --groups results/${DATASET}_groups.json "${SUMMARY[@]}" \
    --comparison results/${NAME}_finetune_report.json --times "${TIMES[@]}" --write results/${DATASET}_summary.md
