#!/usr/bin/env bash
# Instruction tasks of a SuperGLUE sentence-pair data set end to end: θ* (a pretrained LM with LoRA on every
# instruction), projected LoRA gradients, estimates, the fine-tuned truth on the same subsets, grouping, and grouped
# training against single-instruction and all-instruction training, then results/<rte|wic>_summary.md. Called by
# scripts/rte.sh and scripts/wic.sh with the paper's settings (App. C.1.1: T5-base, LoRA rank 4, 100 instructions; sized
# for a GPU). Every setting is a variable: e.g. MODEL= NUM_TASKS=10 INSTRUCTIONS=path/to/promptsource_super_glue_rte.yaml
# Usage: DATA_DIR=path/to/jsonl INSTRUCTIONS=file [NAME=value ...] bash scripts/instructions.sh <rte|wic> [--threads N] [--device D]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/common.sh

knob INSTRUCTIONS "" --instructions "a promptsource YAML or a JSON/JSONL template list (required)"
knob DATA_DIR "" --data-dir "train.jsonl / val.jsonl (SuperGLUE fields); empty: Hugging Face by name"
knob NUM_TASKS 100 --num-tasks "the first n instructions of the file are the tasks"
knob THREADS 1 "" "torch threads per step (1: steady on a shared machine)"
knob EXAMPLES_PER_TASK 200 --examples-per-task "training examples each instruction draws"
knob EVAL_PER_TASK 100 --eval-per-task "validation and test examples each instruction draws"
knob MODEL t5-base --text-model "the LM (a name or a local folder; the paper's T5-base); empty: the packaged MiniLM"
knob LORA_RANK 4 --lora-rank "the paper's LoRA rank"
knob EPOCHS 10 --epochs "θ* epochs (early stopping on validation accuracy)"
knob LR 1e-3 --lr "θ*'s learning rate"
knob BATCH_SIZE 16 --batch-size "θ*'s batch size"
knob SUBSETS 400 --num-subsets "m: subsets sampled"
knob SUBSET_SIZE 10 --subset-size "α: instructions per subset"
knob K 10 --k "groups to find"
knob PROJECT_DIM 200 --project-dim "d"
knob CALIBRATE auto --calibrate-with "subsets trained for real to choose λ on (0: use L2; auto: 40, or enough for every task to have its share)"
knob L2 0.01 --l2 "regression L2 strength without calibration"
knob TRUTH_FLAGS "" "" "fine-tuned truth settings, e.g. \"--fixed-steps 50 --lr 1e-3\""
knob BASELINES 1 --baselines "1: train the groups and STL (one model per instruction) / MTL; 0: skip"
knob THETA "" --init-from "a trained θ* folder to reuse (skips step 1); empty: train it here"
knob SEED 0 --seed "meta-initialization seed (M = 1)"
DATASET=${1:?usage: bash scripts/instructions.sh <rte|wic> [flags]   (--help lists every setting)}
[ "$DATASET" = --help ] || [ "$DATASET" = -h ] || shift
parse_script_args "$@"
check_calibration
if [ -z "$INSTRUCTIONS" ]; then refuse "set INSTRUCTIONS to a promptsource YAML or a JSON/JSONL template list"; fi
RUN=all_seed${SEED}
DATA=(--dataset "$DATASET" --instructions "$INSTRUCTIONS" --num-tasks "$NUM_TASKS" --examples-per-task "$EXAMPLES_PER_TASK"
    --eval-per-task "$EVAL_PER_TASK")
if [ -n "$DATA_DIR" ]; then DATA+=(--data-dir "$DATA_DIR"); fi
LM=(--lora-rank "$LORA_RANK" --epochs "$EPOCHS" --lr "$LR" --batch-size "$BATCH_SIZE")
if [ -n "$MODEL" ]; then LM+=(--text-model "$MODEL"); fi
read -r -a TRUTH <<< "$TRUTH_FLAGS"
if [ "$SUBSET_SIZE" = 2 ]; then AFFINITY=pairwise; else AFFINITY=higher_order; fi  # step 3's T: f({i,j}, i), else Eq. 1
SOLVERS=newton-cg  # the calibration's solver: the exact step needs the graph network

# what can be checked without training comes first: the instructions and examples (data check) and the subsets
step check_data python check_data.py "${DATA[@]}" --threads "$THREADS"
sample_steps "${DATA[@]}"
if [ -n "$THETA" ]; then
    if [ "$(realpath "$THETA")" != "$(realpath -m "saved/$DATASET/$RUN")" ]; then
        rm -rf "saved/$DATASET/$RUN" && mkdir -p "saved/$DATASET" && cp -r "$THETA" "saved/$DATASET/$RUN"
    fi
else
    step train_theta python train_multitask.py "${DATA[@]}" "${LM[@]}" --seed "$SEED" --overwrite "${COMMON[@]}"
fi
step gradients python collect_gradients.py --checkpoint "saved/$DATASET/$RUN" --project-dim "$PROJECT_DIM" --overwrite "${COMMON[@]}"
if [ "$CALIBRATE" -gt 0 ]; then
    step truth_calibration python train_multitask.py "${DATA[@]}" "${LM[@]}" --subsets-file "$CAL_FILE" \
        --init-from "saved/$DATASET/$RUN" "${TRUTH[@]}" --overwrite "${COMMON[@]}"
fi
step estimate python fit_linear_estimates.py --gradients "gradients/$DATASET/${RUN}_d$PROJECT_DIM" \
    --subsets-file "$SUBSETS_FILE" --l2 "$L2" "${CALIBRATION[@]}" "${COMMON[@]}"
step truth_finetune python train_multitask.py "${DATA[@]}" "${LM[@]}" --subsets-file "$SUBSETS_FILE" \
    --init-from "saved/$DATASET/$RUN" "${TRUTH[@]}" --overwrite "${COMMON[@]}"
step compare python compare_affinities.py --estimated "results/${NAME}_estimate.csv" --trained "results/${NAME}_finetune.csv" --k "$K"
step cluster python run_clustering.py --affinity "results/${NAME}_estimate_${AFFINITY}.npy" --k "$K" \
    --out "results/${DATASET}_groups.txt" --overwrite
SUMMARY=()
if [ "$BASELINES" = 1 ]; then
    step grouped_training python train_multitask.py "${DATA[@]}" "${LM[@]}" --subsets-file "results/${DATASET}_groups.txt" \
        --baselines --seed "$SEED" --overwrite "${COMMON[@]}"
    SUMMARY=(--training "results/${DATASET}_groups_scratch_summary.json")
fi

python pipeline_summary.py --groups "results/${DATASET}_groups.json" "${SUMMARY[@]}" \
    --comparison "results/${NAME}_finetune_report.json" --threads "$THREADS" --times "${TIMES[@]}" \
    --write "results/${DATASET}_summary.md"
