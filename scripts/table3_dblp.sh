#!/usr/bin/env bash
# The paper's Table 3 on DBLP (SNAP com-DBLP, the largest communities as tasks): every grouping method through
# compare_methods.py. Two settings, every value a variable:
#   SETTING=gpu (the paper's: 100 communities, SIGN of width 256, k = 10; sized for a GPU, pass --device cuda)
#   SETTING=cpu (default: the largest that runs on 2 CPU cores within an hour: 20 communities, width 16, k = 5,
#               shorter training; README "Alternatives and Table 3" has its measured table)
# Usage: DATA_DIR=path/to/dblp bash scripts/table3_dblp.sh [extra compare_methods.py flags, e.g. --device cuda]
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_DIR=${DATA_DIR:-datasets/dblp}     # com-dblp.ungraph.txt[.gz] and com-dblp.top5000.cmty.txt[.gz]
SETTING=${SETTING:-cpu}
if [ "$SETTING" = gpu ]; then
    NUM_TASKS=${NUM_TASKS:-100}; WIDTH=${WIDTH:-256}; K=${K:-10}; EPOCHS=${EPOCHS:-300}; PATIENCE=${PATIENCE:-50}
    SUBSETS=${SUBSETS:-2000}; SUBSET_SIZE=${SUBSET_SIZE:-10}; DECAY=${DECAY:-1e-4}; FINAL_WIDTH=${FINAL_WIDTH:-256}
    THREADS=${THREADS:-}
else
    NUM_TASKS=${NUM_TASKS:-20}; WIDTH=${WIDTH:-16}; K=${K:-5}; EPOCHS=${EPOCHS:-100}; PATIENCE=${PATIENCE:-20}
    SUBSETS=${SUBSETS:-200}; SUBSET_SIZE=${SUBSET_SIZE:-5}; DECAY=${DECAY:-1e-2}; FINAL_WIDTH=${FINAL_WIDTH:-16}
    THREADS=${THREADS:-1}
fi
RUNS=${RUNS:-5}                  # M of Grad-TAG's second row
RANDOM_DRAWS=${RANDOM_DRAWS:-3}
CALIBRATE=${CALIBRATE:-40}       # subsets fine-tuned for real to choose λ (and the solver) on
TAG_EVERY=${TAG_EVERY:-10}
METHODS=${METHODS:-stl mtl random datamaps tag exact gradtag1 gradtag5}
WORK_DIR=${WORK_DIR:-results/table3_dblp_${SETTING}}

TRAIN="--hop-width $WIDTH --head-width $WIDTH --epochs $EPOCHS --patience $PATIENCE --balanced --weight-decay $DECAY"
FINAL="--hop-width $FINAL_WIDTH --head-width $FINAL_WIDTH"
THREAD_FLAGS=()
if [ -n "$THREADS" ]; then THREAD_FLAGS=(--threads "$THREADS"); fi
read -r -a METHOD_LIST <<< "$METHODS"

python compare_methods.py --dataset dblp --data-dir "$DATA_DIR" --num-tasks "$NUM_TASKS" --k "$K" \
    --methods "${METHOD_LIST[@]}" --runs "$RUNS" --random-draws "$RANDOM_DRAWS" --num-subsets "$SUBSETS" \
    --subset-size "$SUBSET_SIZE" --calibrate "$CALIBRATE" --tag-every "$TAG_EVERY" \
    --train-args "$TRAIN" --final-args "$FINAL" \
    --estimate-args "--solver exact-step --calibrate-solvers exact-step newton-cg" \
    --work-dir "$WORK_DIR" --overwrite "${THREAD_FLAGS[@]}" "$@"
