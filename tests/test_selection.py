"""Greedy forward and backward task selection: on a toy additive score (known best subset), and select_tasks.py end
to end on the tiny planted graph (the JSON it writes, --train, refusals)."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest

import select_tasks
from gradtag.selection import select
from tests.conftest import exit_status
from tests.test_collect_gradients import collect, train_checkpoints

# task 0 is the target; 1 and 3 help it, 2 and 4 hurt it: the best subset is {0, 1, 3}
GAINS = {0: 0.0, 1: 1.0, 2: -0.5, 3: 0.3, 4: -0.2}


class AdditiveScore:
    """f(S) = Σ_{i∈S} gain_i; records the batches it is asked for."""

    def __init__(self):
        self.calls = []

    def __call__(self, subsets):
        self.calls.append(list(subsets))
        return [sum(GAINS[task] for task in subset) for subset in subsets]


@pytest.mark.parametrize("direction", ["forward", "backward"])
def test_selection_finds_the_best_subset_of_an_additive_score(direction):
    score = AdditiveScore()
    path = select(score, 0, 5, direction)
    assert path.chosen == (0, 1, 3) and path.score == pytest.approx(1.3)
    assert all(0 in subset for batch in score.calls for subset in batch)
    if direction == "forward":  # one batched call per round: {0} alone, then 4, 3 and 2 candidates
        assert [len(batch) for batch in score.calls] == [1, 4, 3, 2]
        assert [step.best for step in path.rounds] == [(0, 1), (0, 1, 3), (0, 1, 3, 4)]
    else:
        assert [len(batch) for batch in score.calls] == [1, 4, 3, 2]
        assert [step.best for step in path.rounds] == [(0, 1, 3, 4), (0, 1, 3), (0, 1)]
    assert [step.kept for step in path.rounds] == [True, True, False]


def test_max_size_caps_forward_and_forces_backward_removals():
    forward = select(AdditiveScore(), 0, 5, "forward", max_size=2)
    assert forward.chosen == (0, 1) and len(forward.rounds) == 1
    backward = select(AdditiveScore(), 0, 5, "backward", max_size=2)
    assert backward.chosen == (0, 1) and backward.score == pytest.approx(1.0)
    assert backward.rounds[-2].kept and backward.rounds[-2].best_score < 1.3  # forced although worse than {0, 1, 3}


def test_a_target_alone_with_nothing_better_stays_alone():
    path = select(lambda subsets: [-len(subset) for subset in subsets], 2, 4, "forward")
    assert path.chosen == (2,) and len(path.rounds) == 1 and not path.rounds[0].kept


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    root = tmp_path_factory.mktemp("select")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(root)
        [checkpoint] = train_checkpoints(root)
        collect(checkpoint, root / "grads")
    return SimpleNamespace(root=root, checkpoint=checkpoint, grads=root / "grads")


def argv(base, results, *extra) -> list[str]:
    return ["--gradients", str(base.grads), "--results-dir", str(results), "--no-progress", "--threads", "1", *extra]


def test_select_tasks_writes_its_path_and_trains_the_chosen_subset(base, workdir, capsys):
    results = workdir / "results"
    flags = argv(base, results, "--target", "1", "--direction", "backward", "--train", "--data-dir", str(base.root / "planted"))
    record = select_tasks.main(select_tasks.get_args_parser().parse_args(flags))
    out = capsys.readouterr().out
    written = json.loads((results / "planted_select_task1_backward.json").read_text())
    assert written["chosen"] == record["chosen"] and 1 in written["chosen"] and written["start"]["subset"] == [0, 1, 2, 3]
    assert (
        len(written["rounds"]) == sum(line.startswith("round ") for line in out.splitlines())
        and written["rounds"][0]["candidates"]
    )
    kept = [written["start"]["estimate"]] + [step["estimate"] for step in written["rounds"] if step["kept"]]
    assert written["estimate"] == kept[-1] and kept == sorted(kept)  # each kept removal improved the estimate
    trained = written["trained"]
    assert trained["score"] < 0 and (results / "planted_select_task1_backward_finetune.csv").is_file()
    assert trained["start_score"] < 0  # backward starts from all tasks: trained beside the chosen subset
    lines = [line for line in (results / "planted_select_task1_backward_chosen.txt").read_text().splitlines() if line[0] != "#"]
    assert lines == [" ".join(map(str, written["chosen"])), " ".join(map(str, written["start"]["subset"]))]
    assert f"trained {trained['score']:.4f}" in out and "wrote " + str(results / "planted_select_task1_backward.json") in out


@pytest.mark.parametrize(
    "extra, fragment",
    [
        (["--target", "4"], "--target 4 is out of range; the gradients hold tasks 0..3"),
        (["--target", "0", "--max-size", "0"], "--max-size: must be an integer >= 1"),
        (["--target", "0", "--direction", "sideways"], "invalid choice: 'sideways'"),
        (["--target", "0", "--solver", "exact-step", "--l2", "0"], "--solver exact-step"),
    ],
)
def test_bad_input_is_one_error_line_and_writes_nothing(base, workdir, capsys, extra, fragment):
    results = workdir / "results"
    assert exit_status(select_tasks.main, select_tasks.get_args_parser(), argv(base, results, *extra)) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and fragment in err, err
    assert not results.exists()


def test_an_existing_json_is_refused_without_overwrite(base, workdir, capsys):
    results = workdir / "results"
    flags = argv(base, results, "--target", "0", "--name", "once")
    select_tasks.main(select_tasks.get_args_parser().parse_args(flags))
    before = (results / "once.json").read_bytes()
    assert exit_status(select_tasks.main, select_tasks.get_args_parser(), flags) == 2
    assert "once.json already exists; pass --overwrite" in capsys.readouterr().err
    assert (results / "once.json").read_bytes() == before
    select_tasks.main(select_tasks.get_args_parser().parse_args([*flags, "--overwrite"]))
