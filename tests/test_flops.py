"""FLOP counts: torch's counter for matrix products, our formulas for the regression's dense solves."""

import torch

from gradtag.flops import SampledFlops, count_flops, format_flops


def test_matrix_product_forward_and_backward_count_2mnk_each():
    x, w = torch.randn(4, 6), torch.randn(6, 7, requires_grad=True)
    with count_flops() as flops:
        (x @ w).sum().backward()
    assert flops.total == 2 * (2 * 4 * 6 * 7)  # forward, and the weight gradient (x needs none)


def test_batched_solve_and_lu_count_the_textbook_formulas():
    n, batch = 5, 3
    A = torch.randn(batch, n, n, dtype=torch.float64) + n * torch.eye(n, dtype=torch.float64)
    b = torch.randn(batch, n, dtype=torch.float64)
    expected = batch * (2 * n**3 // 3 + 2 * n * n)
    with count_flops() as solve:
        torch.linalg.solve(A, b)
    with count_flops() as lu:
        factors, pivots, _ = torch.linalg.lu_factor_ex(A)
        torch.linalg.lu_solve(factors, pivots, b[:, :, None])
    assert solve.total == expected and lu.total == expected


def test_format_flops_picks_a_readable_unit():
    assert format_flops(None) == "–" and format_flops(512) == "512 FLOP"
    assert format_flops(3.2e9) == "3.2 GFLOP" and format_flops(5e8) == "500 MFLOP"


def test_sampled_count_of_a_row_linear_block_equals_counting_every_run():
    w = torch.randn(8, 3, requires_grad=True)
    batches = [torch.randn(rows, 8) for rows in (32, 32, 32, 7)]  # a short last batch, as in an epoch
    tally = SampledFlops()
    with count_flops() as exact:
        for batch in batches:
            with tally.measure(len(batch)):
                (batch @ w).sum().backward()
    assert tally.total == exact.total == sum(2 * 2 * len(batch) * 8 * 3 for batch in batches)
    assert SampledFlops().total == 0


def test_cholesky_and_the_in_place_projection_are_counted():
    """The step-3 factorisation and step 2's projection (in-place addmm_, which torch's counter leaves at zero)."""
    from gradtag.projection import Projector

    n, batch = 6, 4
    A = torch.randn(batch, n, n, dtype=torch.float64)
    A = A @ A.transpose(1, 2) + n * torch.eye(n, dtype=torch.float64)
    with count_flops() as cholesky:
        factors, _ = torch.linalg.cholesky_ex(A)
        torch.cholesky_solve(torch.randn(batch, n, 1, dtype=torch.float64), factors)
    assert cholesky.total == batch * (n**3 // 3 + 2 * n * n)
    projector = Projector(num_params=300, project_dim=8, seed=0)
    gradients = torch.randn(5, 300)
    with count_flops() as projection:
        projector.project([gradients])
    assert projection.total == 2 * 5 * 300 * 8  # 2 · rows · p · d: the products with P, block by block


def test_factored_projection_counts_the_per_sample_and_per_pair_products():
    """Pᵀ(δ ⊗ a) as (Pᵀa per sample) then δ per pair: 2·b·in·out·d + 2·b·K·out·d, plus 2·b·K·out·d for the bias."""
    from gradtag.projection import Projector

    batch, count, width_in, width_out, dim = 5, 3, 30, 20, 8
    projector = Projector(width_in * width_out + width_out, dim, seed=0)
    inputs, errors = torch.randn(batch, width_in), torch.randn(batch, count, width_out)
    with count_flops() as factored:
        projector.project_layers([(inputs, errors), errors])
    per_sample, per_pair = 2 * batch * width_in * width_out * dim, 2 * batch * count * width_out * dim
    assert factored.total == per_sample + 2 * per_pair
