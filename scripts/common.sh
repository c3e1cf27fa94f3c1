# Sourced by the dataset scripts (scripts/<dataset>.sh): their settings ("knobs", environment variables with a
# default, listed by --help), the check of extra flags, and timed steps that name the knob behind a refused flag.
#
#   knob NAME DEFAULT FLAG "what it is"   NAME from the environment if set, else DEFAULT; FLAG is the step flag it sets
#   parse_script_args "$@"                --help, extra flags (EXTRA), --threads N (sets THREADS)
#   step NAME command...                  run one step; record wall and CPU seconds in TIMES
#   refuse "message"                      one line on stderr, exit 2 (before any training)

SCRIPT=${SCRIPT:-scripts/$(basename "$0")}
KNOB_HELP=()
declare -A KNOB_OF_FLAG=()
TIMES=()
EXTRA=()

knob() {
    local name=$1 default=$2 flag=$3 text=$4
    if [ -z "${!name+set}" ]; then printf -v "$name" '%s' "$default"; fi
    KNOB_HELP+=("$(printf '  %-17s %-12s %s%s' "$name" "${default:-(empty)}" "$text" "${flag:+ [$flag]}")")
    if [ -n "$flag" ]; then KNOB_OF_FLAG[$flag]=$name; fi
}

refuse() { echo "$SCRIPT: $1" >&2; exit 2; }

# Extra flags go to every torch step, so only flags every torch step takes the same way are let through.
PASS_FLAGS=(--device --no-progress --launcher --workers --threads-per-shard --ray-address --submitit-cluster
    --slurm-partition --slurm-time --slurm-mem --slurm-gpus --slurm-logs)
SWITCHES=(--no-progress)

script_help() {
    sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "$0"
    echo
    echo "Settings (environment variables: NAME=value bash $SCRIPT ...; default; [the step flag each sets]):"
    printf '%s\n' "${KNOB_HELP[@]}"
    echo
    echo "Extra flags, passed to every torch step: --threads N (same as THREADS=N), ${PASS_FLAGS[*]}"
}

parse_script_args() {
    local arg
    for arg in "$@"; do
        if [ "$arg" = --help ] || [ "$arg" = -h ]; then script_help; exit 0; fi
    done
    while [ $# -gt 0 ]; do
        arg=$1
        local flag=${arg%%=*}
        if [ "$flag" = --threads ]; then
            if [ "$arg" = --threads ]; then THREADS=${2:?--threads needs a number}; shift; else THREADS=${arg#*=}; fi
        elif [ -n "${KNOB_OF_FLAG[$flag]+set}" ]; then
            refuse "$flag is set by this script: use ${KNOB_OF_FLAG[$flag]}=<value> bash $SCRIPT ... ($SCRIPT --help lists every setting)"
        elif [[ " ${PASS_FLAGS[*]} " == *" $flag "* ]]; then
            EXTRA+=("$arg")
            if [[ " ${SWITCHES[*]} " != *" $flag "* && "$arg" != *=* ]]; then EXTRA+=("${2:?$flag needs a value}"); shift; fi
        else
            refuse "extra flag $arg is not passed to the steps (only --threads and the flags $SCRIPT --help lists); for a setting, use its variable"
        fi
        shift
    done
    if ! [[ "$THREADS" =~ ^[1-9][0-9]*$ ]]; then refuse "THREADS=$THREADS: give a positive number of torch threads per step"; fi
    COMMON=(--threads "$THREADS" "${EXTRA[@]}")
}

check_calibration() {  # CALIBRATE is 0 (no calibration), auto (40, or more so that each task has enough), or a count
    local least
    if [ "$CALIBRATE" = auto ]; then
        if ! [[ "$NUM_TASKS" =~ ^[1-9][0-9]*$ && "$SUBSET_SIZE" =~ ^[1-9][0-9]*$ ]]; then
            refuse "NUM_TASKS=$NUM_TASKS, SUBSET_SIZE=$SUBSET_SIZE: give positive whole numbers"
        fi
        CALIBRATE=$(python -c "from gradtag.evaluation import calibration_subsets_needed as k; print(max(40, k($NUM_TASKS, $SUBSET_SIZE)))")
    fi
    least=$(python -c "from gradtag.evaluation import MIN_CALIBRATION_SUBSETS; print(MIN_CALIBRATION_SUBSETS)")
    if ! [[ "$CALIBRATE" =~ ^[0-9]+$ ]] || { [ "$CALIBRATE" -gt 0 ] && [ "$CALIBRATE" -lt "$least" ]; }; then
        refuse "CALIBRATE=$CALIBRATE: give 0 (no calibration, use L2) or at least $least subsets to train for the calibration"
    fi
}

# sample_steps FLAG...: the subsets (SUBSETS of SUBSET_SIZE, seed SEED) and, with CALIBRATE > 0, the calibration subsets
# (seed SEED + 1) as timed steps, sample_subsets.py taking FLAG... (the data set's flags). Sets SUBSETS_FILE and NAME,
# CAL_FILE, and CALIBRATION: step 3's flags naming the calibration truth (results/<CAL_FILE stem>_finetune.csv, which
# the script trains) and, when SOLVERS is set, the solvers the calibration chooses among.
sample_steps() {
    SUBSETS_FILE=sampled_tasks/${DATASET}_m${SUBSETS}_a${SUBSET_SIZE}_s${SEED}.txt
    NAME=$(basename "$SUBSETS_FILE" .txt)
    step sample python sample_subsets.py "$@" --num-subsets "$SUBSETS" --subset-size "$SUBSET_SIZE" --seed "$SEED" --overwrite
    CALIBRATION=()
    if [ "$CALIBRATE" -gt 0 ]; then
        CAL_FILE=sampled_tasks/${DATASET}_m${CALIBRATE}_a${SUBSET_SIZE}_s$((SEED + 1)).txt
        step sample_calibration python sample_subsets.py "$@" --num-subsets "$CALIBRATE" --subset-size "$SUBSET_SIZE" \
            --seed $((SEED + 1)) --overwrite
        CALIBRATION=(--calibrate-with "results/$(basename "$CAL_FILE" .txt)_finetune.csv")
        if [ -n "${SOLVERS:-}" ]; then
            local solvers
            read -r -a solvers <<< "$SOLVERS"
            CALIBRATION+=(--calibrate-solvers "${solvers[@]}")
        fi
    fi
}

_cpu_seconds() {  # CPU seconds (user + system) of this shell's finished children, as of the last `times > $CPU_FILE`
    awk 'NR == 2 { total = 0; for (i = 1; i <= 2; i++) { split($i, t, "m"); total += t[1] * 60 + t[2] } printf "%.1f", total }' "$CPU_FILE"
}

step() {
    local name=$1
    shift
    echo "== $name: $*"
    local start=$EPOCHREALTIME cpu_before status=0
    times > "$CPU_FILE"  # in this shell, not a subshell: a subshell's children are not this shell's
    cpu_before=$(_cpu_seconds)
    # stderr is shown as it comes and kept, to name the knob behind a flag a step refuses
    { "$@" 2>&1 1>&3 3>&- | tee "$ERR_FILE" >&2; } 3>&1 || status=$?
    if [ "$status" -ne 0 ]; then
        local flag
        for flag in $(grep -o -- '--[a-z][a-z-]*' "$ERR_FILE" | sort -u); do
            if [ -n "${KNOB_OF_FLAG[$flag]+set}" ]; then
                echo "$SCRIPT: $flag above is this script's ${KNOB_OF_FLAG[$flag]} (now ${!KNOB_OF_FLAG[$flag]}): rerun with ${KNOB_OF_FLAG[$flag]}=<value>" >&2
            fi
        done
        exit "$status"
    fi
    times > "$CPU_FILE"
    TIMES+=("$name=$(awk -v now="$EPOCHREALTIME" -v start="$start" -v a="$(_cpu_seconds)" -v b="$cpu_before" \
        'BEGIN { printf "%.1f,%.1f", now - start, a - b }')")
}

CPU_FILE=$(mktemp)
ERR_FILE=$(mktemp)
trap 'rm -f "$CPU_FILE" "$ERR_FILE"' EXIT
