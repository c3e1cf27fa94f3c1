"""The dataset scripts as a new user runs them, in a copy of the repository: ``scripts/snap.sh`` on a small generated
SNAP graph with no planted groups and ``scripts/instructions.sh`` on a tiny BERT must end with exit 0 and their summary;
a setting that cannot work is refused before any training, naming the script's variable, not a step's flag."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

import pipeline_summary
from models.text import tiny_backbone, tiny_tokenizer
from tests.conftest import REPO

# the settings every test run of snap.sh shares: a few tasks, few subsets, short training
SNAP_SMALL = dict(NUM_TASKS="6", SUBSETS="10", SUBSET_SIZE="3", CALIBRATE="4", K="3", EPOCHS="15", HOP_WIDTH="8")
TORCH_STEPS = ("train_multitask.py", "collect_gradients.py", "fit_linear_estimates.py")


def copy_repository(target) -> None:
    """The repository's files as a fresh clone has them (no saved/, results/ or caches), under ``target``."""
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, text=True
    )
    if listed.returncode == 0:
        for name in listed.stdout.splitlines():
            source = REPO / name
            if source.is_file():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(source, target / name)
    else:  # not a git checkout: everything but outputs and caches
        shutil.copytree(
            REPO,
            target,
            dirs_exist_ok=True,
            ignore=shutil.ignore_patterns(
                ".git", "__pycache__", "saved", "results", "gradients", "datasets", "sampled_tasks", ".pytest_cache"
            ),
        )


def small_snap_graph(folder, name: str, num_communities: int = 8, seed: int = 0) -> None:
    """SNAP-format files of a 300-node graph: ``num_communities`` random overlapping communities (22-40 nodes) with
    dense insides, plus random edges; a header line, tab-separated ids, no planted grouping of the communities."""
    rng = np.random.default_rng(seed)
    sizes = np.linspace(40, 22, num_communities).astype(int)
    communities = [np.sort(rng.choice(300, size=size, replace=False)) for size in sizes]
    edges = set()
    for members in communities:
        for _ in range(3 * len(members)):
            a, b = rng.choice(members, 2, replace=False)
            edges.add((min(a, b), max(a, b)))
    for _ in range(600):
        a, b = rng.choice(300, 2, replace=False)
        edges.add((min(a, b), max(a, b)))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"com-{name}.ungraph.txt").write_text("# a generated graph\n" + "".join(f"{a}\t{b}\n" for a, b in sorted(edges)))
    (folder / f"com-{name}.top5000.cmty.txt").write_text("".join("\t".join(map(str, c)) + "\n" for c in communities))


@pytest.fixture(scope="module")
def clone(tmp_path_factory):
    """A copy of the repository with a small graph of a user's own in ``mydata/``."""
    root = tmp_path_factory.mktemp("clone")
    copy_repository(root)
    small_snap_graph(root / "mydata", "mygraph")
    return root


def run_bash(script: str, *argv: str, cwd, **settings: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **settings}
    return subprocess.run(["bash", script, *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


def outputs(folder) -> set[str]:
    """Every file and folder the steps write under ``folder``."""
    folders = ("saved", "gradients", "results", "sampled_tasks")
    return {str(path.relative_to(folder)) for name in folders for path in (folder / name).rglob("*")}


def test_snap_script_ends_with_its_summary_on_a_graph_of_ones_own(clone):
    done = run_bash("scripts/snap.sh", "mygraph", "--no-progress", cwd=clone, DATA_DIR="mydata", **SNAP_SMALL)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (clone / "results" / "mygraph_summary.md").read_text()
    assert summary.startswith("Groups found (sdp, k = 3): ")
    groups = [set(map(int, group.split())) for group in summary.splitlines()[0].split(": ", 1)[1].split(" | ")]
    assert sorted(task for group in groups for task in group) == list(range(6))
    assert "| grouped | 3 |" in summary and "| STL | 6 |" in summary and "| MTL | 1 |" in summary
    rows = [line for line in summary.splitlines() if line.startswith(("| loss |", "| f1 |"))]
    assert len(rows) == 2
    for row in rows:  # no planted groups: the group effect and the ARI against them are absent, the rest is there
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert cells[6] == cells[9] == "–"
        assert all(re.fullmatch(r"-?\d+\.\d+", cells[index]) for index in (1, 2, 3, 4, 7, 8, 10))
    # every step's wall and CPU seconds, at the thread count every torch step was given
    assert "| step | wall s | CPU s (1 torch thread per step) |" in done.stdout
    for step in ("check_data", "train_theta", "gradients", "truth_calibration", "estimate", "truth_finetune", "grouped_training"):
        assert re.search(rf"^\| {step} \| \d+\.\d \| \d+\.\d \|$", done.stdout, re.M), step
    calls = [line for line in done.stdout.splitlines() if line.startswith("== ") and any(s in line for s in TORCH_STEPS)]
    assert len(calls) == 6 and all("--threads 1" in line for line in calls)
    assert "check README's copy" not in done.stdout  # README holds no block of this summary: no hint that fails


@pytest.mark.parametrize(
    "settings, argv, variable",
    [
        (dict(NUM_TASKS="9"), [], "NUM_TASKS"),  # 8 communities in the file
        (dict(SUBSETS="50", SUBSET_SIZE="5"), [], "SUBSETS"),  # 6 tasks have 6 subsets of 5
        ({}, ["--num-tasks", "8"], "NUM_TASKS"),  # a script setting passed as a step flag
        ({}, ["--num-subsets", "8"], "SUBSETS"),
        (dict(CALIBRATE="2"), [], "CALIBRATE"),  # too few to calibrate on, known before anything is trained
    ],
)
def test_snap_script_refuses_before_training_naming_its_variable(clone, settings, argv, variable):
    before = outputs(clone)
    done = run_bash("scripts/snap.sh", "mygraph", *argv, cwd=clone, DATA_DIR="mydata", **{**SNAP_SMALL, **settings})
    assert done.returncode == 2, done.stderr[-2000:]
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("scripts/snap.sh: ") and variable in last
    assert "== train_theta" not in done.stdout
    assert outputs(clone) == before


def test_snap_script_refuses_an_unknown_extra_flag_and_lists_its_settings(clone):
    done = run_bash("scripts/snap.sh", "mygraph", "--foo", cwd=clone, DATA_DIR="mydata")
    assert done.returncode == 2 and done.stdout == ""
    assert done.stderr.count("\n") == 1 and "--foo" in done.stderr and "--help" in done.stderr
    helped = run_bash("scripts/snap.sh", "--help", cwd=clone)
    assert helped.returncode == 0
    declared = re.findall(r"^knob (\w+) ", (clone / "scripts" / "snap.sh").read_text(), re.M)
    assert len(declared) >= 20
    for name in declared:
        assert re.search(rf"^  {name} ", helped.stdout, re.M), name


# ---------------------------------------------------------------------------------------------------------- text
RTE_WORDS = "the cat dog sat ran on a mat park big small red blue is was not".split()
INSTRUCTIONS = [
    "{{premise}} Question: {{hypothesis}} True or false? ||| {{ answer_choices[label] }}",
    "Given {{premise}} should we assume that {{hypothesis}} ||| {{ answer_choices[label] }}",
    "{{premise}} Does this mean that {{hypothesis}} ||| {{ answer_choices[label] }}",
    "Suppose {{premise}} Can we infer that {{hypothesis}} ||| {{ answer_choices[label] }}",
]


def tiny_rte(folder) -> None:
    """train.jsonl (48) and val.jsonl (32) of RTE-shaped examples: entailment exactly when the hypothesis repeats the
    premise's first three words."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    for split, count in (("train", 48), ("val", 32)):
        lines = []
        for index in range(count):
            premise = " ".join(rng.choice(RTE_WORDS, 5))
            entailed = index % 2 == 0
            hypothesis = " ".join(premise.split()[:3]) if entailed else " ".join(rng.choice(RTE_WORDS, 3))
            label = "entailment" if entailed else "not_entailment"
            lines.append(json.dumps({"premise": premise, "hypothesis": hypothesis, "label": label, "idx": index}))
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def test_instruction_script_ends_with_its_summary_on_a_tiny_bert(clone):
    tiny_rte(clone / "tinyrte")
    (clone / "instructions.json").write_text(json.dumps(INSTRUCTIONS))
    words = sorted({*RTE_WORDS, *(w for t in INSTRUCTIONS for w in re.findall(r"[a-z]+", t.lower())), "yes", "no"})
    tokenizer = tiny_tokenizer(words, "encoder")
    tiny_backbone("encoder", len(tokenizer)).save_pretrained(clone / "tinybert")
    tokenizer.save_pretrained(clone / "tinybert")
    settings = dict(
        DATA_DIR="tinyrte",
        INSTRUCTIONS="instructions.json",
        MODEL="tinybert",
        NUM_TASKS="4",
        EXAMPLES_PER_TASK="8",
        EVAL_PER_TASK="8",
        EPOCHS="2",
        LORA_RANK="2",
        SUBSETS="4",
        SUBSET_SIZE="2",
        K="2",
        CALIBRATE="4",
        PROJECT_DIM="8",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
    )
    done = run_bash("scripts/rte.sh", "--no-progress", cwd=clone, **settings)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = (clone / "results" / "rte_summary.md").read_text()
    assert summary.startswith("Groups found (sdp, k = 2): ")
    assert "avg test accuracy" in summary and "| STL | 4 |" in summary
    assert re.search(r"^\| loss \| -?\d\.\d{3} \|", summary, re.M)


def test_instruction_script_without_instructions_is_one_line(clone):
    done = run_bash("scripts/wic.sh", cwd=clone)
    assert done.returncode == 2 and done.stderr.startswith("scripts/wic.sh: set INSTRUCTIONS") and done.stderr.count("\n") == 1


# ---------------------------------------------------------------------------------------------------------- summary
def test_summary_of_a_run_without_planted_groups(tmp_path):
    """compare_affinities.py writes the group effect only with --planted: the summary shows '–' there."""
    figures = {
        "spearman_per_task_subsets": 0.5,
        "spearman_per_task_rows": 0.25,
        "spearman_per_task_columns": 0.95,
        "spearman_pooled": 0.75,
        "relative_distance_raw": 0.01,
        "relative_distance_row_centered": 0.2,
        "split_half": {"rows_full": 0.6},
        "distance": {"median": 0.1},
        "ari_estimate_vs_truth": 1.0,
    }
    comparison = {"by_score": {"loss": {"truths": {"t.csv": figures}}}}
    markdown = pipeline_summary.summary_markdown({"method": "sdp", "k": 2, "groups": [[0], [1]]}, None, comparison)
    assert (
        markdown.splitlines()[-1] == "| loss | 0.500 | 0.250 | 0.950 | 0.750 | 0.0100 / 0.200 | – | 0.600 | 0.100 | – | 1.000 |"
    )
    planted = {**figures, "group_effect_slope": -0.02, "group_effect_t": -3.5, "ari_vs_planted": 0.5}
    comparison["by_score"]["loss"]["truths"]["t.csv"] = planted
    markdown = pipeline_summary.summary_markdown({"method": "sdp", "k": 2, "groups": [[0], [1]]}, None, comparison)
    row = "| loss | 0.500 | 0.250 | 0.950 | 0.750 | 0.0100 / 0.200 | -0.0200 (-3.5) | 0.600 | 0.100 | 0.500 | 1.000 |"
    assert markdown.splitlines()[-1] == row


def test_summary_suggests_the_readme_check_only_where_readme_has_the_block(tmp_path, capsys):
    """scripts/text_default.sh ended by suggesting a --check-readme that README has no block for (exit 2): the
    suggestion is printed only for a summary README holds, and the suggested command then runs."""
    groups = tmp_path / "groups.json"
    groups.write_text(json.dumps({"method": "sdp", "k": 2, "groups": [[0], [1]]}))
    readme = (REPO / "README.md").read_text()
    for name in ("planted_summary.md", "text_planted_summary.md", "mygraph_summary.md"):
        written = tmp_path / "results" / name
        pipeline_summary.main(pipeline_summary.get_args_parser().parse_args(["--groups", str(groups), "--write", str(written)]))
        last = capsys.readouterr().out.strip().splitlines()[-1]
        in_readme = f"<!-- pipeline_summary: {name} -->" in readme
        assert ("--check-readme" in last) == in_readme, (name, last)
        if in_readme:
            check = pipeline_summary.get_args_parser().parse_args(
                ["--check-readme", str(REPO / "README.md"), "--summary", str(written)]
            )
            with pytest.raises(SystemExit) as differs:  # README holds the real run's figures, not this toy's: exit 1, not 2
                pipeline_summary.main(check)
            assert differs.value.code == 1
    assert "<!-- pipeline_summary: planted_summary.md -->" in readme  # the case with a block is exercised
