"""The first-order Taylor check (Table 1): taylor_residuals against a brute-force autograd expansion and its behaviour
as Δ → 0, and taylor_check.py end to end on a tiny planted checkpoint (JSON keys, distances, refusals, --help)."""

import copy
import json

import pytest
import torch

from gradtag.gradients import flat_params, set_flat_params
from gradtag.taylor import taylor_residuals
from models import build_model
from taylor_check import get_args_parser, main
from tests.conftest import TINY_PLANTED_FLAGS, exit_status, run_script
from train_multitask import get_args_parser as train_args_parser
from train_multitask import main as train_main

IN_DIM, NUM_HOPS, NUM_TASKS, NUM_SAMPLES = 6, 2, 3, 24


def tiny_case(batch_norm: bool):
    """A float32 SIGN (as checkpoints are), samples with their tasks, θ* and a random unit direction u, (p,)."""
    torch.manual_seed(0)
    model = build_model("sign", IN_DIM, NUM_HOPS, NUM_TASKS, hop_width=5, head_width=4, batch_norm=batch_norm)
    if batch_norm:  # non-trivial running statistics, so eval mode differs from train mode
        with torch.no_grad():
            model.train()
            for _ in range(3):
                model(torch.randn(32, NUM_HOPS + 1, IN_DIM) * 2 + 1)
    generator = torch.Generator().manual_seed(1)
    x = torch.randn(NUM_SAMPLES, NUM_HOPS + 1, IN_DIM, generator=generator)
    tasks = torch.randint(0, NUM_TASKS, (NUM_SAMPLES,), generator=generator)
    base = flat_params(model)
    direction = torch.randn(base.shape, generator=generator)
    return model, x, tasks, base, direction / direction.norm()


def brute_force(model, base, tuned, x, tasks) -> dict:
    """The same ratios by plain autograd, one sample at a time, on float64 copies of the model at θ* and at W."""
    at_base, at_tuned = copy.deepcopy(model).double(), copy.deepcopy(model).double()
    set_flat_params(at_base, base.double())
    set_flat_params(at_tuned, tuned.double())
    at_base.eval(), at_tuned.eval()
    delta = tuned.double() - base.double()
    residual = change = output = 0.0
    for x_one, task in zip(x.double(), tasks, strict=True):
        logit = at_base(x_one.unsqueeze(0))[0, task]
        gradient = torch.cat([g.reshape(-1) for g in torch.autograd.grad(logit, list(at_base.parameters()))])
        f_base, f_tuned = logit.item(), at_tuned(x_one.unsqueeze(0))[0, task].item()
        residual += (f_tuned - f_base - float(gradient @ delta)) ** 2
        change += (f_tuned - f_base) ** 2
        output += f_tuned**2
    return {
        "relative_distance": float(delta.norm() / base.double().norm()),
        "residual_vs_change": residual / change,
        "residual_vs_output": residual / output,
        "change_vs_output": change / output,
    }


# ---------------------------------------------------------------------------------------------------------- the math
def test_taylor_residuals_equal_a_brute_force_autograd_expansion():
    model, x, tasks, base, direction = tiny_case(batch_norm=False)
    tuned = base + 0.3 * base.norm() * direction  # a large step: the residual is far from 0
    result = taylor_residuals(model, base, tuned, x, tasks, batch_size=7)  # batches of 7 do not change anything
    reference = brute_force(model, base, tuned, x, tasks)
    assert result["num_samples"] == NUM_SAMPLES
    assert result["residual_vs_change"] > 1e-3
    for key, value in reference.items():
        assert result[key] == pytest.approx(value, rel=1e-9), key
    assert result["distance"] == pytest.approx(0.3 * float(base.double().norm()), rel=1e-6)


@pytest.mark.parametrize("batch_norm", [False, True], ids=["plain", "batch-norm"])
def test_residual_vanishes_like_the_square_of_the_step(batch_norm):
    """Residual/change is O(‖Δ‖²): its square root, the norm ratio, shrinks linearly in ‖Δ‖."""
    model, x, tasks, base, direction = tiny_case(batch_norm)
    base, direction = base.double(), direction.double()  # a float32 W would round such small steps
    scales = [1e-4, 5e-5, 2.5e-5, 1.25e-5]  # small enough that no ReLU or batch-norm unit changes side
    results = [taylor_residuals(model, base, base + scale * base.norm() * direction, x, tasks) for scale in scales]
    for scale, result in zip(scales, results, strict=True):
        assert result["relative_distance"] == pytest.approx(scale, rel=1e-12)
    ratios = [results[i]["residual_vs_change"] / results[i + 1]["residual_vs_change"] for i in range(len(scales) - 1)]
    assert all(3.0 < ratio < 5.0 for ratio in ratios), ratios  # halving ‖Δ‖ quarters the ratio of squares
    # with the second-order term (Remark 3.1) the residual is O(‖Δ‖³), so its ratio of squares to the change is O(‖Δ‖⁴)
    second = [result["residual_second_order_vs_change"] for result in results]
    assert all(second[i] / second[i + 1] > 3.0 for i in range(len(second) - 1)), second
    assert all(s < 1e-3 * r["residual_vs_change"] for s, r in zip(second, results, strict=True))
    assert results[-1]["residual_vs_change"] < 1e-8
    tiny = taylor_residuals(model, base, base + 1e-7 * base.norm() * direction, x, tasks)
    assert tiny["residual_vs_change"] < 1e-10 and tiny["residual_vs_output"] < 1e-20
    exact = taylor_residuals(model, base, base.clone(), x, tasks)
    assert exact["distance"] == 0 and exact["residual_vs_change"] == 0 and exact["residual_vs_output"] == 0


def test_moving_only_the_output_bias_is_exactly_linear():
    """Moving only the output layer's bias changes logits linearly in the parameters: the residual is 0."""
    model, x, tasks, base, _ = tiny_case(batch_norm=False)
    tuned = base.clone()
    tuned[-NUM_TASKS:] += torch.tensor([0.5, -1.0, 2.0])  # the last trainable tensor is the output bias
    result = taylor_residuals(model, base, tuned, x, tasks)
    assert result["change_vs_output"] > 1e-3 and result["residual_vs_change"] < 1e-24


# ---------------------------------------------------------------------------------------------------------- the script
@pytest.fixture
def tiny_checkpoint(tmp_path, workdir):
    flags = [*TINY_PLANTED_FLAGS, "--epochs", "20", "--patience", "5", "--no-progress"]
    folders = ["--data-dir", str(tmp_path / "planted"), "--saved-dir", str(tmp_path / "saved")]
    train_main(train_args_parser().parse_args([*flags, *folders]))
    return tmp_path / "saved" / "planted" / "all_seed0"


def check_args(checkpoint, tmp_path, *extra: str) -> list[str]:
    return ["--checkpoint", str(checkpoint), "--results-dir", str(tmp_path / "results"), "--no-progress", *extra]


def test_taylor_check_end_to_end_writes_json(tmp_path, tiny_checkpoint, capsys):
    argv = check_args(tiny_checkpoint, tmp_path, "--subset-size", "2", "--num-subsets", "2", "--steps", "40", "5", "15")
    main(get_args_parser().parse_args(argv))
    out = tmp_path / "results" / "planted_taylor.json"
    written = json.loads(out.read_text())
    for key in ("dataset", "dataset_fingerprint", "checkpoint", "checkpoint_fingerprint", "subsets", "steps", "training"):
        assert key in written, key
    assert written["steps"] == [5, 15, 40]
    recorded = json.loads((tiny_checkpoint / "config.json").read_text())["training"]
    for key in ("weight_decay", "balanced", "lr"):  # fine-tuning inherits the checkpoint's recorded settings
        assert written["training"][key] == recorded[key], key
    assert len(written["subsets"]) == 2 and all(len(subset) == 2 for subset in written["subsets"])
    assert len(written["rows"]) == 6 and [row["steps"] for row in written["averages"]] == [5, 15, 40]
    for row in written["rows"]:
        for key in ("subset", "steps", "relative_distance", "residual_vs_change", "residual_vs_output", "num_samples"):
            assert key in row, key
        assert row["num_samples"] > 0 and 0 <= row["residual_vs_change"] and row["relative_distance"] > 0
    for subset_id in (0, 1):
        distances = [row["relative_distance"] for row in written["rows"] if row["subset_id"] == subset_id]
        assert distances == sorted(distances), distances  # more fine-tuning steps, further from θ*
    printed = capsys.readouterr().out
    assert "| subset | steps |" in printed and f"wrote {out}" in printed

    # the same seed draws the same subsets and fine-tunes to the same W; an existing output is not overwritten
    assert exit_status(main, get_args_parser(), argv) == 2
    main(get_args_parser().parse_args([*argv, "--overwrite"]))
    again = json.loads(out.read_text())
    assert again["subsets"] == written["subsets"]
    assert [row["relative_distance"] for row in again["rows"]] == pytest.approx(
        [row["relative_distance"] for row in written["rows"]]
    )


def test_bad_input_exits_2_with_one_line(tmp_path, tiny_checkpoint, capsys):
    missing = check_args(tmp_path / "saved" / "planted" / "nothing_here", tmp_path)
    assert exit_status(main, get_args_parser(), missing) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "nothing_here" in error
    assert exit_status(main, get_args_parser(), check_args(tiny_checkpoint, tmp_path, "--subset-size", "5")) == 2
    assert "--subset-size 5" in capsys.readouterr().err
    assert exit_status(main, get_args_parser(), check_args(tiny_checkpoint, tmp_path, "--steps", "10", "0")) == 2
    assert not (tmp_path / "results").exists()


def test_help_exits_0_and_every_flag_is_documented(tmp_path):
    proc = run_script("taylor_check.py", "--help", cwd=tmp_path)
    assert proc.returncode == 0 and "--subset-size" in proc.stdout
    undocumented = [action.dest for action in get_args_parser()._actions if not (action.help or "").strip()]
    assert undocumented == []
