"""Step 2: collect_gradients.py on a tiny planted checkpoint — the files it writes and what is in them (labels, base
logits, projected gradients checked against autograd and the regenerated P), sharding, resuming, and the refusals.

The helpers :func:`train_checkpoints` and :func:`collect` are shared with the step-3 and end-to-end tests.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import collect_gradients
import fit_linear_estimates
import train_multitask
from data import load_dataset
from gradtag.artifacts import read_json
from gradtag.checkpoints import weights_fingerprint
from gradtag.gradients import num_trainable_params
from gradtag.projection import Projector, projector_from_spec
from gradtag.results import read_results
from gradtag.training import load_checkpoint
from tests.conftest import TINY_PLANTED_FLAGS, exit_status, without_base_warnings

PROJECT_DIM = 8  # d: small, so that the (p, d) matrix is cheap to materialise in a test
TASKS = range(4)  # TINY_PLANTED has 4 tasks
NPY_KINDS = ("gradients", "outputs", "labels", "nodes")


# ---------------------------------------------------------------------------------------------------------- helpers
def train_checkpoints(root: Path, runs: int = 1) -> list[Path]:
    """Train ``runs`` tiny step-1 models (seeds 0..runs-1) with every folder under ``root``; their checkpoint folders."""
    flags = [*TINY_PLANTED_FLAGS, "--epochs", "20", "--patience", "5", "--no-progress", "--runs", str(runs)]
    folders = ["--data-dir", str(root / "planted"), "--saved-dir", str(root / "saved"), "--results-dir", str(root / "results")]
    train_multitask.main(train_multitask.get_args_parser().parse_args([*flags, *folders]))
    return [root / "saved" / "planted" / f"all_seed{seed}" for seed in range(runs)]


def collect_argv(checkpoint: Path, out: Path, *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--out", str(out), "--project-dim", str(PROJECT_DIM), "--no-progress", *extra]


def collect(checkpoint: Path, out: Path, *extra: str) -> None:
    """Run collect_gradients.py in-process (d = PROJECT_DIM unless ``extra`` says otherwise) into ``out``."""
    collect_gradients.main(collect_gradients.get_args_parser().parse_args(collect_argv(checkpoint, out, *extra)))


def npy_names(tasks, splits) -> set[str]:
    return {f"task_{task}_{split}_{kind}.npy" for task in tasks for split in splits for kind in NPY_KINDS}


def snapshot(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One checkpoint and its train/val gradients, shared by the tests of this module (read-only)."""
    root = tmp_path_factory.mktemp("collect")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)  # the feature cache lands in root/datasets/cache
        [checkpoint] = train_checkpoints(root)
        collect(checkpoint, root / "grads")
    return SimpleNamespace(root=root, checkpoint=checkpoint, grads=root / "grads")


def checkpoint_and_dataset(checkpoint: Path):
    config = read_json(checkpoint / "config.json")
    dataset = load_dataset(config["dataset"], config["args"]["data_dir"], **config["dataset_options"])
    model, _ = load_checkpoint(checkpoint, torch.device("cpu"), dataset)
    return model, dataset


# ---------------------------------------------------------------------------------------------------------- what is written
def test_writes_identity_files_and_consistent_arrays_per_task_and_split(base, workdir):
    model, dataset = checkpoint_and_dataset(base.checkpoint)
    names = {path.name for path in base.grads.iterdir()}
    assert names == {"projection.json", "config.json", "cost_shard0of1.json"} | npy_names(
        TASKS, ("train", "val")
    )  # default splits only

    spec = read_json(base.grads / "projection.json")
    assert spec == Projector(num_trainable_params(model), PROJECT_DIM, 0, kind="gaussian").spec()
    config = read_json(base.grads / "config.json")
    assert config["dataset"] == "planted" and config["dataset_fingerprint"] == dataset.fingerprint
    assert config["task_names"] == dataset.task_names and config["projection"] == spec
    assert config["checkpoint_fingerprint"] == weights_fingerprint(base.checkpoint / "model.pt")
    assert config["splits"] == ["train", "val"] and config["args"]["project_dim"] == PROJECT_DIM

    with torch.no_grad():
        logits = model(dataset.features).numpy()  # (N, n) base logits of every node
    for task in TASKS:
        for split in ("train", "val"):
            arrays = {kind: np.load(base.grads / f"task_{task}_{split}_{kind}.npy") for kind in NPY_KINDS}
            nodes = arrays["nodes"]
            assert nodes.dtype == np.int64 and np.array_equal(nodes, dataset.samples(task, split))
            assert len(nodes) > 0
            assert arrays["gradients"].shape == (len(nodes), PROJECT_DIM) and arrays["gradients"].dtype == np.float32
            assert arrays["outputs"].shape == arrays["labels"].shape == (len(nodes),)
            assert arrays["outputs"].dtype == arrays["labels"].dtype == np.float32
            assert np.array_equal(arrays["labels"], dataset.labels[nodes, task].astype(np.float32))
            np.testing.assert_allclose(arrays["outputs"], logits[nodes, task], rtol=1e-5, atol=1e-6)
            assert np.isfinite(arrays["gradients"]).all() and np.abs(arrays["gradients"]).max() > 0
        # every training set holds both classes (positives of the community and negatives outside it)
        assert set(np.unique(np.load(base.grads / f"task_{task}_train_labels.npy"))) == {0.0, 1.0}


@pytest.mark.parametrize("task, split, row", [(0, "train", 0), (3, "val", 5), (2, "val", -1)])
def test_projected_gradient_equals_P_transpose_times_autograd_gradient(base, workdir, task, split, row):
    model, dataset = checkpoint_and_dataset(base.checkpoint)
    node = int(np.load(base.grads / f"task_{task}_{split}_nodes.npy")[row])
    stored = np.load(base.grads / f"task_{task}_{split}_gradients.npy")[row]

    params = [param for param in model.parameters() if param.requires_grad]
    logit = model(dataset.features[node : node + 1])[0, task]
    flat = torch.cat([grad.reshape(-1) for grad in torch.autograd.grad(logit, params)]).double()
    P = Projector.from_spec(read_json(base.grads / "projection.json")).matrix().double()  # (p, d), regenerated from seed
    assert P.shape == (flat.numel(), PROJECT_DIM)
    expected = (P.T @ flat).numpy()
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-6 * np.abs(expected).max())
    assert float(np.load(base.grads / f"task_{task}_{split}_outputs.npy")[row]) == pytest.approx(logit.item(), rel=1e-5)


def test_kronecker_projection_through_steps_2_and_3(base, workdir):
    """--projection kronecker: the folder records the structured P, its gradients are Pᵀ ∇ with that P (rebuilt
    from projection.json), the other methods give the same numbers, and step 3 maps solutions back with it."""
    folder = workdir / "kronecker"
    collect(base.checkpoint, folder, "--projection", "kronecker", "--kronecker-rank", "3")
    spec = read_json(folder / "projection.json")
    assert spec["kind"] == "kronecker" and spec["rank"] == 3
    model, dataset = checkpoint_and_dataset(base.checkpoint)
    P = projector_from_spec(spec).matrix().double()
    node = int(np.load(folder / "task_1_val_nodes.npy")[2])
    logit = model(dataset.features[node : node + 1])[0, 1]
    flat = torch.cat([g.reshape(-1) for g in torch.autograd.grad(logit, list(model.parameters()))]).double()
    stored = np.load(folder / "task_1_val_gradients.npy")[2]
    np.testing.assert_allclose(stored, (P.T @ flat).numpy(), rtol=1e-4, atol=1e-6 * np.abs(stored).max())
    assert not np.allclose(stored, np.load(base.grads / "task_1_val_gradients.npy")[2])  # another P than the dense one
    collect(
        base.checkpoint, workdir / "kronecker_shared", "--projection", "kronecker", "--kronecker-rank", "3", "--method", "shared"
    )
    np.testing.assert_allclose(
        np.load(workdir / "kronecker_shared" / "task_1_val_gradients.npy"),
        np.load(folder / "task_1_val_gradients.npy"),
        rtol=1e-4,
        atol=1e-6,
    )
    subsets = workdir / "subsets.txt"
    subsets.write_text("0 1 2\n1 3\n")
    argv = ["--gradients", str(folder), "--subsets-file", str(subsets), "--results-dir", str(workdir / "est"), "--no-progress"]
    fit_linear_estimates.main(fit_linear_estimates.get_args_parser().parse_args([*argv, "--l2", "1"]))
    rows = read_results(workdir / "est" / "subsets_estimate.csv")
    assert len(rows) == 5 and all(np.isfinite(row["val_loss"]) and np.isfinite(row["distance"]) for row in rows)


# ---------------------------------------------------------------------------------------------------------- sharding
@pytest.fixture(scope="module")
def sharded(base, tmp_path_factory):
    """Shards 0 and 1 of 2 written into one folder; the file names present after shard 0 alone; their stdout."""
    folder = tmp_path_factory.mktemp("sharded") / "grads"
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(base.root)
        collect(base.checkpoint, folder, "--num-shards", "2", "--shard-id", "0")
        after_first = {path.name for path in folder.iterdir()}
        collect(base.checkpoint, folder, "--num-shards", "2", "--shard-id", "1")
    return SimpleNamespace(folder=folder, after_first=after_first)


def test_shards_split_tasks_by_index_and_together_match_an_unsharded_run(base, sharded):
    assert sharded.after_first == {"projection.json", "config.json", "cost_shard0of2.json"} | npy_names((0, 2), ("train", "val"))

    def arrays_and_identity(folder):
        return {path.name for path in folder.iterdir() if not path.name.startswith("cost_")}

    assert arrays_and_identity(sharded.folder) == arrays_and_identity(base.grads)
    assert {path.name for path in sharded.folder.glob("cost_*")} == {"cost_shard0of2.json", "cost_shard1of2.json"}
    assert read_json(sharded.folder / "projection.json") == read_json(base.grads / "projection.json")
    for name in npy_names(TASKS, ("train", "val")):
        ours, reference = np.load(sharded.folder / name), np.load(base.grads / name)
        assert ours.dtype == reference.dtype and ours.shape == reference.shape, name
        if name.endswith(("_nodes.npy", "_labels.npy")):
            assert np.array_equal(ours, reference), name
        else:  # batch shapes differ between shard layouts, so BLAS rounding may differ
            np.testing.assert_allclose(ours, reference, rtol=1e-5, atol=1e-6, err_msg=name)


# ---------------------------------------------------------------------------------------------------------- resuming
def test_second_run_skips_tasks_already_written(base, workdir, capsys):
    folder = workdir / "grads"
    shutil.copytree(base.grads, folder)
    before = snapshot(folder)
    stamps = {path.name: path.stat().st_mtime_ns for path in folder.iterdir()}
    collect(base.checkpoint, folder)
    assert "of 0 tasks (4 already done)" in capsys.readouterr().out
    assert snapshot(folder) == before
    assert {path.name: path.stat().st_mtime_ns for path in folder.iterdir()} == stamps

    # A task whose last file (nodes) is missing was interrupted: only its files are written again, but its whole
    # chunk (here all four tasks, --task-chunk 10) is computed, so that its batches and hence its bytes are the same.
    (folder / "task_1_val_nodes.npy").unlink()
    (folder / "task_1_val_gradients.npy").write_bytes(b"")  # and a damaged file is not counted as done
    collect(base.checkpoint, folder)
    assert "of 1 tasks (3 already done)" in capsys.readouterr().out
    after = snapshot(folder)
    assert {name: data for name, data in after.items() if name != "cost_shard0of1.json"} == {
        name: data for name, data in before.items() if name != "cost_shard0of1.json"
    }
    cost_before, cost_after = (json.loads(f["cost_shard0of1.json"]) for f in (before, after))
    assert cost_after["flops"] == 2 * cost_before["flops"]  # the chunk once more
    assert np.array_equal(np.load(folder / "task_1_val_nodes.npy"), np.load(base.grads / "task_1_val_nodes.npy"))
    np.testing.assert_allclose(
        np.load(folder / "task_1_val_gradients.npy"), np.load(base.grads / "task_1_val_gradients.npy"), rtol=1e-5, atol=1e-6
    )
    assert (folder / "task_0_train_gradients.npy").read_bytes() == before["task_0_train_gradients.npy"]


# ---------------------------------------------------------------------------------------------------------- refusals
def assert_one_line_error(capsys, *fragments: str) -> None:
    err = without_base_warnings(capsys.readouterr().err)
    assert err.startswith("error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err, (fragment, err)


def test_checkpoint_whose_dataset_fingerprint_does_not_match_is_refused(base, workdir, capsys):
    # The checkpoint's config now describes data (another split seed) other than what its weights were trained on.
    checkpoint = workdir / "saved" / "planted" / "all_seed0"
    shutil.copytree(base.checkpoint, checkpoint)
    config = json.loads((checkpoint / "config.json").read_text())
    config["dataset_options"]["split_seed"] = 1
    (checkpoint / "config.json").write_text(json.dumps(config))
    out = workdir / "grads"
    assert exit_status(collect_gradients.main, collect_gradients.get_args_parser(), collect_argv(checkpoint, out)) == 2
    assert_one_line_error(capsys, "dataset_fingerprint", str(checkpoint))
    assert not out.exists()


@pytest.mark.parametrize("flags", [["--project-dim", "4"], ["--seed", "1"], ["--projection", "rademacher"]])
def test_resuming_into_a_folder_of_another_projection_is_refused(base, workdir, capsys, flags):
    folder = workdir / "grads"
    shutil.copytree(base.grads, folder)
    (folder / "task_3_val_nodes.npy").unlink()  # work left to do, so a silent mix would write files
    before = snapshot(folder)
    argv = collect_argv(base.checkpoint, folder, *flags)
    assert exit_status(collect_gradients.main, collect_gradients.get_args_parser(), argv) == 2
    assert_one_line_error(capsys, "projection", str(folder))
    assert snapshot(folder) == before


@pytest.mark.parametrize(
    "shard_id, fragments", [("2", ["--shard-id 2", "0..1"]), ("-1", ["--shard-id", "must be an integer >= 0"])]
)
def test_shard_id_out_of_range_exits_2_before_any_work(base, workdir, capsys, shard_id, fragments):
    out = workdir / "grads"
    argv = collect_argv(base.checkpoint, out, "--num-shards", "2", "--shard-id", shard_id)
    assert exit_status(collect_gradients.main, collect_gradients.get_args_parser(), argv) == 2
    assert_one_line_error(capsys, *fragments)
    assert not out.exists() and not (workdir / "datasets").exists()
