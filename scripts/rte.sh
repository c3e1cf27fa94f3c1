#!/usr/bin/env bash
# SuperGLUE RTE with the paper's text settings (Sec. 5.1.2, App. C.1.1): T5-base with LoRA rank 4, the paper's 100
# instructions, sized for a GPU. Every setting is a variable of scripts/instructions.sh; e.g. for a quick CPU run:
#   DATA_DIR=../shared/data/rte MODEL= NUM_TASKS=10 \
#       INSTRUCTIONS=../shared/data/instructions/promptsource_super_glue_rte.yaml bash scripts/rte.sh --threads 2
# Usage: DATA_DIR=path/to/rte-jsonl INSTRUCTIONS=path/to/paper_task_templates.json bash scripts/rte.sh [--device cuda]
set -euo pipefail
SCRIPT=scripts/rte.sh exec bash "$(dirname "$0")/instructions.sh" rte "$@"
