#!/usr/bin/env bash
# SuperGLUE WIC with the paper's text settings (Sec. 5.1.2, App. C.1.1): T5-base with LoRA rank 4, the paper's 100
# instructions, sized for a GPU. Every setting is a variable of scripts/instructions.sh; e.g. for a quick CPU run:
#   DATA_DIR=../shared/data/wic MODEL= NUM_TASKS=10 \
#       INSTRUCTIONS=../shared/data/instructions/promptsource_super_glue_wic.yaml bash scripts/wic.sh --threads 2
# Usage: DATA_DIR=path/to/wic-jsonl INSTRUCTIONS=path/to/paper_task_templates.json bash scripts/wic.sh [--device cuda]
set -euo pipefail
SCRIPT=scripts/wic.sh exec bash "$(dirname "$0")/instructions.sh" wic "$@"
