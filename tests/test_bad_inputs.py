"""Bad input, table-driven across every script: exit status 2, one error line naming the flag or file, and nothing
under the working folder changed (same files, same bytes).

One tiny pipeline (θ*, gradients, subsets, estimate, truth, affinity) is built once; each case may first make a
damaged copy of an artifact, then runs a script in-process on it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

import collect_gradients
import compare_affinities
import fit_linear_estimates
import pipeline_summary
import run_clustering
import sample_subsets
import select_tasks
import taylor_check
import train_multitask
from tests.conftest import TINY_PLANTED_FLAGS, exit_status

DATA = [*TINY_PLANTED_FLAGS, "--data-dir", "planted"]
TRAIN = [*DATA, "--epochs", "20", "--patience", "5", "--no-progress"]
CKPT = "saved/planted/all_seed0"
GRADS = "gradients/planted/all_seed0_d8"
SUBSETS = "sampled_tasks/planted_m4_a3_s0.txt"
ESTIMATE = "results/planted_m4_a3_s0_estimate.csv"
TRUTH = "results/planted_m4_a3_s0_finetune.csv"
AFFINITY = "results/planted_m4_a3_s0_estimate_higher_order.npy"


def call(module, *argv) -> None:
    module.main(module.get_args_parser().parse_args([str(arg) for arg in argv]))


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("bad_inputs")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        call(train_multitask, *TRAIN)
        call(collect_gradients, "--checkpoint", CKPT, "--project-dim", 8, "--no-progress")
        call(sample_subsets, *TINY_PLANTED_FLAGS, "--num-subsets", 4, "--subset-size", 3)
        call(fit_linear_estimates, "--gradients", GRADS, "--subsets-file", SUBSETS, "--no-progress")
        call(train_multitask, *TRAIN, "--subsets-file", SUBSETS, "--init-from", CKPT, "--fixed-steps", 3)
        (folder / "notes.txt").write_text("a user's own file\n")
    return folder


# ---------------------------------------------------------------------------------------------------------- damage
def copy_to(source: str, target: str) -> str:
    (shutil.copytree if Path(source).is_dir() else shutil.copy)(source, target)
    return target


def truncated(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def checkpoint_truncated() -> str:
    folder = copy_to(CKPT, "bad/ckpt_truncated")
    truncated(Path(folder) / "model.pt")
    return folder


def checkpoint_random_bytes() -> str:
    folder = copy_to(CKPT, "bad/ckpt_random")
    (Path(folder) / "model.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    return folder


def with_config(source: str, target: str, edit) -> str:
    """A copy of artifact folder ``source`` at ``target`` whose config.json went through ``edit(config)`` (in place)."""
    folder = copy_to(source, target)
    config_path = Path(folder) / "config.json"
    config = json.loads(config_path.read_text())
    edit(config)
    config_path.write_text(json.dumps(config))
    return folder


def checkpoint_other_width() -> str:
    return with_config(CKPT, "bad/ckpt_wide", lambda config: config["model_options"].update(head_width=8))


def gradients_truncated() -> str:
    folder = copy_to(GRADS, "bad/grads_truncated")
    truncated(Path(folder) / "task_0_train_gradients.npy")
    return folder


def gradients_of_retrained_base() -> str:
    # what gradients look like once θ* is retrained to other weights: their recorded fingerprint no longer matches
    return with_config(GRADS, "bad/grads_stale", lambda config: config.update(checkpoint_fingerprint="0" * 16))


def results_copy(path: str, edit) -> str:
    """A copy of a results CSV and its sidecar under bad/, passed through ``edit(csv_text, sidecar) -> (text, sidecar)``."""
    target = Path("bad") / Path(path).name
    target.parent.mkdir(exist_ok=True)
    text, sidecar = edit(Path(path).read_text(), json.loads(Path(path).with_suffix(".json").read_text()))
    target.write_text(text)
    target.with_suffix(".json").write_text(json.dumps(sidecar))
    return str(target)


def truth_not_numeric() -> str:
    return results_copy(TRUTH, lambda text, meta: (text.replace(text.splitlines()[1].split(",")[4], "abc", 1), meta))


def truth_cut_short() -> str:
    return results_copy(TRUTH, lambda text, meta: (text[: text.rindex(",")], meta))


def truth_of_other_subsets() -> str:
    return results_copy(TRUTH, lambda text, meta: (text, {**meta, "subsets": meta["subsets"][:2]}))


def truth_of_other_base() -> str:
    return results_copy(TRUTH, lambda text, meta: (text, {**meta, "init": {**meta["init"], "init_fingerprint": "0" * 16}}))


def affinity_with(value: float) -> str:
    T = np.load(AFFINITY)
    T[0, 1] = value
    Path("bad").mkdir(exist_ok=True)
    np.save("bad/affinity.npy", T)
    return "bad/affinity.npy"


def text_file(name: str, text: str) -> str:
    Path("bad").mkdir(exist_ok=True)
    Path("bad", name).write_text(text)
    return f"bad/{name}"


def symlink(name: str) -> str:
    Path("bad").mkdir(exist_ok=True)
    Path("bad", name).symlink_to(Path("notes.txt").resolve())
    return f"bad/{name}"


def out_folder_with_user_files() -> str:
    Path("bad/out/sub").mkdir(parents=True)
    Path("bad/out/notes.txt").write_text("keep me\n")
    return "bad/out"


# ---------------------------------------------------------------------------------------------------------- cases
# name: (script, argv (callables build damaged inputs first), what the error line must contain)
CASES = {
    # step 1 / truth: numeric flags, dataset flags, subsets files, --init-from
    "train --epochs 0": (train_multitask, [*TRAIN, "--epochs", "0"], "--epochs: must be an integer >= 1"),
    "train --lr -1": (train_multitask, [*TRAIN, "--lr", "-1"], "--lr: must be a finite number >= 0"),
    "train --lr nan": (train_multitask, [*TRAIN, "--lr", "nan"], "--lr: must be a finite number"),
    "train --batch-size 0": (train_multitask, [*TRAIN, "--batch-size", "0"], "--batch-size: must be an integer >= 1"),
    "train --eval-every 0": (train_multitask, [*TRAIN, "--eval-every", "0"], "--eval-every: must be"),
    "train --patience 0": (train_multitask, [*TRAIN, "--patience", "0"], "--patience: must be"),
    "train --dropout 1": (train_multitask, [*TRAIN, "--dropout", "1"], "--dropout: must be a finite number in [0, 1)"),
    "train --weight-decay -1": (train_multitask, [*TRAIN, "--weight-decay", "-1"], "--weight-decay: must be"),
    "train --head-width 0": (train_multitask, [*TRAIN, "--head-width", "0"], "--head-width: must be"),
    "train --runs 0": (train_multitask, [*TRAIN, "--runs", "0"], "--runs: must be"),
    "train --epochs x": (train_multitask, [*TRAIN, "--epochs", "x"], "--epochs: must be an integer >= 1, got 'x'"),
    "train unknown flag": (train_multitask, [*TRAIN, "--bogus"], "unrecognized arguments: --bogus"),
    "train --train-frac 1.5": (
        train_multitask,
        [*TRAIN, "--train-frac", "1.5"],
        "--train-frac: must be a finite number in (0, 1)",
    ),
    "train --planted-noise 2": (train_multitask, [*TRAIN, "--planted-noise", "2"], "--planted-noise: must be"),
    "train --num-tasks 0": (train_multitask, [*TRAIN, "--num-tasks", "0"], "--num-tasks: must be"),
    "train core larger than region": (train_multitask, [*TRAIN, "--planted-core-size", "500"], "--planted-core-size 500"),
    "train --tag-every 0": (train_multitask, [*TRAIN, "--record-tag", "--tag-every", "0"], "--tag-every: must be"),
    "truth --record-tag": (
        train_multitask,
        [*TRAIN, "--subsets-file", SUBSETS, "--record-tag"],
        "--record-tag records TAG's affinity while training θ* (step 1)",
    ),
    "truth --truth-seeds 0": (train_multitask, [*TRAIN, "--subsets-file", SUBSETS, "--truth-seeds", "0"], "--truth-seeds"),
    "truth --fixed-steps 0": (
        train_multitask,
        [*TRAIN, "--subsets-file", SUBSETS, "--init-from", CKPT, "--fixed-steps", "0"],
        "--fixed-steps",
    ),
    "truth missing subsets file": (train_multitask, [*TRAIN, "--subsets-file", "none.txt"], "none.txt does not exist"),
    "truth subsets file with a bad line": (
        train_multitask,
        [*TRAIN, "--subsets-file", lambda: text_file("bad_line.txt", "0 1\n0 x\n")],
        "bad_line.txt:2",
    ),
    "truth from a truncated model.pt": (
        train_multitask,
        [*TRAIN, "--subsets-file", SUBSETS, "--init-from", checkpoint_truncated],
        "ckpt_truncated/model.pt is not a readable checkpoint",
    ),
    "truth from random bytes": (
        train_multitask,
        [*TRAIN, "--subsets-file", SUBSETS, "--init-from", checkpoint_random_bytes],
        "ckpt_random/model.pt is not a readable checkpoint",
    ),
    "truth from a model.pt of another width": (
        train_multitask,
        [*TRAIN, "--subsets-file", SUBSETS, "--init-from", checkpoint_other_width],
        "ckpt_wide/model.pt does not fit",
    ),
    "truth from a gradients folder": (
        train_multitask,
        [*TRAIN, "--subsets-file", SUBSETS, "--init-from", GRADS],
        "is not a checkpoint folder",
    ),
    "truth results under a file": (
        train_multitask,
        [*TRAIN, "--subsets-file", SUBSETS, "--init-from", CKPT, "--results-dir", "notes.txt/results"],
        "notes.txt is a file, not a folder",
    ),
    # step 2
    "collect --project-dim 0": (collect_gradients, ["--checkpoint", CKPT, "--project-dim", "0"], "--project-dim: must be"),
    "collect --num-shards 0": (collect_gradients, ["--checkpoint", CKPT, "--num-shards", "0"], "--num-shards: must be"),
    "collect --shard-id 2": (collect_gradients, ["--checkpoint", CKPT, "--num-shards", "2", "--shard-id", "2"], "--shard-id 2"),
    "collect --task-chunk 0": (collect_gradients, ["--checkpoint", CKPT, "--task-chunk", "0"], "--task-chunk: must be"),
    "collect --overwrite with bad --tasks": (
        collect_gradients,
        ["--checkpoint", CKPT, "--out", out_folder_with_user_files, "--overwrite", "--tasks", "0 99"],
        "--tasks '0 99'",
    ),
    "collect missing checkpoint": (collect_gradients, ["--checkpoint", "saved/none"], "saved/none/config.json does not exist"),
    "collect from a gradients folder": (collect_gradients, ["--checkpoint", GRADS], "is not a checkpoint folder"),
    "collect from a truncated model.pt": (collect_gradients, ["--checkpoint", checkpoint_truncated], "not a readable checkpoint"),
    "collect --out is a file": (collect_gradients, ["--checkpoint", CKPT, "--out", "notes.txt"], "--out notes.txt is a file"),
    # sampling
    "sample --num-subsets 0": (sample_subsets, [*DATA, "--num-subsets", "0"], "--num-subsets: must be"),
    "sample --subset-size 0": (sample_subsets, [*DATA, "--subset-size", "0"], "--subset-size: must be"),
    "sample --subset-size above n": (sample_subsets, [*DATA, "--subset-size", "9"], "--subset-size 9 must lie within 1..4"),
    # step 3
    "fit --l2 -1": (fit_linear_estimates, ["--gradients", GRADS, "--subsets-file", SUBSETS, "--l2", "-1"], "--l2: must be"),
    "fit --l2 inf": (fit_linear_estimates, ["--gradients", GRADS, "--subsets-file", SUBSETS, "--l2", "inf"], "--l2: must be"),
    "fit --batch-size 0": (
        fit_linear_estimates,
        ["--gradients", GRADS, "--subsets-file", SUBSETS, "--batch-size", "0"],
        "--batch-size: must be",
    ),
    "fit on a checkpoint folder": (
        fit_linear_estimates,
        ["--gradients", CKPT, "--subsets-file", SUBSETS],
        "is not a gradients folder",
    ),
    "fit on a truncated gradient file": (
        fit_linear_estimates,
        ["--gradients", gradients_truncated, "--subsets-file", SUBSETS],
        "task_0_train_gradients.npy is damaged",
    ),
    "fit on gradients of a retrained θ*": (
        fit_linear_estimates,
        ["--gradients", gradients_of_retrained_base, "--subsets-file", SUBSETS, "--eval", "reconstructed"],
        "θ* was retrained since",
    ),
    "fit missing subsets file": (fit_linear_estimates, ["--gradients", GRADS, "--subsets-file", "none.txt"], "none.txt"),
    "fit exact-step reconstructed": (
        fit_linear_estimates,
        ["--gradients", GRADS, "--subsets-file", SUBSETS, "--solver", "exact-step", "--eval", "reconstructed"],
        "--solver exact-step",
    ),
    # comparison
    "compare --k 0": (compare_affinities, ["--estimated", ESTIMATE, "--trained", TRUTH, "--k", "0"], "--k: must be"),
    "compare a non-numeric truth": (compare_affinities, ["--estimated", ESTIMATE, "--trained", truth_not_numeric], ":2:"),
    "compare a truth cut short": (compare_affinities, ["--estimated", ESTIMATE, "--trained", truth_cut_short], "cut short"),
    "compare a truth of other subsets": (
        compare_affinities,
        ["--estimated", ESTIMATE, "--trained", truth_of_other_subsets],
        "--allow-partial",
    ),
    "compare a truth of another θ*": (
        compare_affinities,
        ["--estimated", ESTIMATE, "--trained", truth_of_other_base],
        "other θ* weights",
    ),
    "compare a missing truth": (
        compare_affinities,
        ["--estimated", ESTIMATE, "--trained", "none.csv"],
        "none.csv does not exist",
    ),
    # step 4
    "cluster --k 0": (run_clustering, ["--affinity", AFFINITY, "--k", "0", "--out", "g.txt"], "--k: must be"),
    "cluster --temperature 0": (
        run_clustering,
        ["--affinity", AFFINITY, "--k", "2", "--out", "g.txt", "--temperature", "0"],
        "--temperature: must be",
    ),
    "cluster an infinite entry": (
        run_clustering,
        ["--affinity", lambda: affinity_with(np.inf), "--k", "2", "--out", "g.txt"],
        "infinite entries",
    ),
    "cluster a text file": (
        run_clustering,
        ["--affinity", lambda: text_file("t.npy", "text"), "--k", "2", "--out", "g.txt"],
        "not a loadable .npy",
    ),
    "cluster --out is a symlink": (
        run_clustering,
        ["--affinity", AFFINITY, "--k", "2", "--out", lambda: symlink("link.txt"), "--overwrite"],
        "is not a regular file",
    ),
    "cluster --out is a device": (
        run_clustering,
        ["--affinity", AFFINITY, "--k", "2", "--out", "/dev/null", "--overwrite"],
        "/dev/null exists and is not a regular file",
    ),
    # forward/backward selection
    "select --target out of range": (select_tasks, ["--gradients", GRADS, "--target", "4"], "--target 4 is out of range"),
    "select --max-size 0": (select_tasks, ["--gradients", GRADS, "--target", "0", "--max-size", "0"], "--max-size: must be"),
    "select on a checkpoint folder": (select_tasks, ["--gradients", CKPT, "--target", "0"], "is not a gradients folder"),
    "select on a truncated gradient file": (
        select_tasks,
        ["--gradients", gradients_truncated, "--target", "0"],
        "task_0_train_gradients.npy is damaged",
    ),
    # Taylor check and summary
    "taylor --steps 0": (taylor_check, ["--checkpoint", CKPT, "--steps", "5", "0"], "--steps: must be"),
    "taylor --num-subsets 0": (taylor_check, ["--checkpoint", CKPT, "--num-subsets", "0"], "--num-subsets: must be"),
    "summary missing groups": (pipeline_summary, ["--groups", "none.json"], "none.json does not exist"),
    "summary check without a summary": (pipeline_summary, ["--check-readme", "notes.txt"], "--summary"),
}


def tree(folder: Path) -> dict[str, bytes | None]:
    """Every path under ``folder`` (folders as None) with its bytes."""
    return {str(path.relative_to(folder)): None if path.is_dir() else path.read_bytes() for path in sorted(folder.rglob("*"))}


def refused(module, argv: list, folder: Path, capsys) -> str:
    """Run ``module`` on ``argv`` in-process; assert exit 2, one ``error:`` line on stderr (``warning:`` lines aside)
    and every file under ``folder`` unchanged; return the error line."""
    before = tree(folder)
    status = exit_status(module.main, module.get_args_parser(), [str(arg) for arg in argv])
    captured = capsys.readouterr()
    errors = [line for line in captured.err.splitlines() if not line.startswith("warning:")]
    assert status == 2, captured
    assert len(errors) == 1 and errors[0].startswith("error: "), errors
    assert tree(folder) == before, "the failed run changed files"
    return errors[0]


def test_there_are_at_least_40_cases_across_every_script():
    assert len(CASES) >= 40
    assert {module for module, _, _ in CASES.values()} == {
        train_multitask,
        collect_gradients,
        sample_subsets,
        fit_linear_estimates,
        compare_affinities,
        run_clustering,
        taylor_check,
        pipeline_summary,
        select_tasks,
    }


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_exits_2_with_one_line_and_changes_nothing(root, monkeypatch, capsys, case):
    module, argv, fragment = CASES[case]
    monkeypatch.chdir(root)
    argv = [arg() if callable(arg) else arg for arg in argv]
    try:
        error = refused(module, argv, root, capsys)
        assert fragment in error, (fragment, error)
    finally:
        shutil.rmtree(root / "bad", ignore_errors=True)


def test_overwrite_replaces_only_the_steps_own_files(root, monkeypatch):
    monkeypatch.chdir(root)
    out = Path(out_folder_with_user_files())
    try:
        call(collect_gradients, "--checkpoint", CKPT, "--project-dim", 8, "--out", out, "--no-progress")
        call(collect_gradients, "--checkpoint", CKPT, "--project-dim", 8, "--out", out, "--no-progress", "--overwrite")
        assert (out / "notes.txt").read_text() == "keep me\n" and (out / "sub").is_dir()
        arrays = {name: data for name, data in tree(out).items() if name.endswith(".npy")}
        assert arrays == {name: data for name, data in tree(Path(GRADS)).items() if name.endswith(".npy")}
        cost, first_cost = (json.loads((folder / "cost_shard0of1.json").read_text()) for folder in (out, Path(GRADS)))
        assert cost["flops"] == first_cost["flops"]  # the overwritten run's cost only, not added to the first run's
    finally:
        shutil.rmtree(root / "bad", ignore_errors=True)


def test_a_second_run_on_a_locked_truth_csv_is_refused(root, monkeypatch, capsys):
    from gradtag.artifacts import exclusive_lock

    monkeypatch.chdir(root)
    argv = [*TRAIN, "--subsets-file", SUBSETS, "--init-from", CKPT, "--fixed-steps", "3", "--results-name", "locked"]
    csv_path = root / "results" / "locked.csv"
    with exclusive_lock(csv_path, "test"):  # as if another process were training into it
        assert exit_status(train_multitask.main, train_multitask.get_args_parser(), argv) == 2
    assert "another run is writing" in capsys.readouterr().err and not csv_path.exists()
    call(train_multitask, *argv)  # the lock is gone with its holder
    assert csv_path.is_file() and not (root / "results" / ".locked.csv.lock").exists()
    csv_path.unlink()
    csv_path.with_suffix(".json").unlink()


def test_an_identical_retrain_keeps_the_weights_fingerprint_and_resumes(tmp_path, monkeypatch, capsys):
    """Fingerprints hash the weights, not model.pt's bytes: retraining θ* identically keeps gradients resumable."""
    from gradtag.checkpoints import weights_fingerprint

    monkeypatch.chdir(tmp_path)
    call(train_multitask, *TRAIN)
    first = weights_fingerprint(Path(CKPT) / "model.pt")
    call(collect_gradients, "--checkpoint", CKPT, "--project-dim", 8, "--no-progress", "--tasks", "0 1")
    call(train_multitask, *TRAIN, "--overwrite")
    assert weights_fingerprint(Path(CKPT) / "model.pt") == first
    capsys.readouterr()
    call(collect_gradients, "--checkpoint", CKPT, "--project-dim", 8, "--no-progress")
    assert "of 2 tasks (2 already done)" in capsys.readouterr().out
