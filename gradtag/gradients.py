"""Per-sample output gradients at the meta-initialisation θ* and their projections (Sec. 3.1, Alg. 1 of the paper).

Grad-TAG linearises the network around θ*: f(x; θ* + Δ) ≈ f(x; θ*) + ∇θ f(x; θ*)ᵀ Δ (Eq. 3), where f(x; θ) is the
logit of the sample's task. For a node ``n`` and task ``j`` the feature used in the logistic regressions is
g = Pᵀ ∇θ logit_j(x_n; θ*) ∈ R^d.

All gradients are taken in eval mode (batch norm uses its running statistics, dropout is off) through
``torch.func.functional_call``; per-sample gradients come from one ``vmap`` call, never a Python loop over samples.
Parameter order everywhere is ``model.named_parameters()`` restricted to ``requires_grad`` parameters: the same order
as :func:`flat_params`, :func:`set_flat_params` and the rows of the :class:`~gradtag.projection.Projector`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn
from torch.func import functional_call, grad, jvp, vjp, vmap
from tqdm.auto import tqdm

from gradtag.projection import KroneckerProjector, Projector
from models.modes import eval_mode, functional_state

GRADIENT_METHODS = ("factored", "shared", "per_pair")


# ---------------------------------------------------------------------------------------------------------- parameters
def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The ``requires_grad`` parameters of ``model`` by name, in ``named_parameters()`` order (detached views)."""
    return {name: param.detach() for name, param in model.named_parameters() if param.requires_grad}


def num_trainable_params(model: nn.Module) -> int:
    """p: the number of trainable scalars, i.e. the rows of the projection matrix."""
    return sum(param.numel() for param in model.parameters() if param.requires_grad)


def flat_params(model: nn.Module) -> torch.Tensor:
    """θ as one (p,) tensor (a copy) in the gradient order, on the parameters' device and dtype."""
    return torch.cat([param.reshape(-1) for param in trainable_parameters(model).values()]).clone()


def relative_distance(weights: torch.Tensor, start: torch.Tensor) -> float:
    """‖weights − start‖ / ‖start‖ for two (p,) flat parameter vectors (:func:`flat_params`); inf if start is zero."""
    norm = float(start.norm())
    return float((weights - start).norm()) / norm if norm > 0 else float("inf")


@torch.no_grad()
def set_flat_params(model: nn.Module, vector: torch.Tensor) -> None:
    """Copy a (p,) vector into the trainable parameters of ``model`` in place, e.g. Ŵ = θ* + P ŵ (Eq. 5)."""
    params = [param for param in model.parameters() if param.requires_grad]
    total = sum(param.numel() for param in params)
    if vector.dim() != 1 or vector.numel() != total:
        raise ValueError(f"expected a vector of {total} entries (trainable parameters), got shape {tuple(vector.shape)}")
    offset = 0
    for param in params:
        param.copy_(vector[offset : offset + param.numel()].view_as(param))
        offset += param.numel()


def unflatten_params(vector: torch.Tensor, shapes: dict[str, torch.Size]) -> dict[str, torch.Tensor]:
    """Split a (p,) vector into named views of the given shapes, in the given (``named_parameters``) order."""
    pieces, offset = {}, 0
    for name, shape in shapes.items():
        size = int(np.prod(shape)) if len(shape) else 1
        pieces[name] = vector[offset : offset + size].view(shape)
        offset += size
    if offset != vector.numel():
        raise ValueError(f"expected a vector of {offset} entries (trainable parameters), got {vector.numel()}")
    return pieces


def _single_logits(model: nn.Module, constants: dict):
    """f(params, x) -> (T,) logits of one sample x of shape (num_hops + 1, in_dim)."""

    def logits(params: dict, x: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (params, constants), (x.unsqueeze(0),)).squeeze(0)

    return logits


# ---------------------------------------------------------------------------------------------------------- gradients
def output_gradients(model: nn.Module, x: torch.Tensor, tasks: torch.Tensor) -> list[torch.Tensor]:
    """∇θ logit_{tasks[b]}(x[b]; θ) for every sample b, one vmapped ``torch.func.grad`` call.

    Args:
        model: maps (B, num_hops + 1, in_dim) to (B, T) logits; evaluated in eval mode.
        x: (B, num_hops + 1, in_dim) float hop features, on the model's device.
        tasks: (B,) int64 task index of each sample.

    Returns:
        One tensor (B, *param.shape) per trainable parameter, in ``named_parameters()`` order. Cost: one forward and
        one backward per sample (per (node, task) pair), batched by vmap.
    """
    params, constants = functional_state(model, x.device)
    logits = _single_logits(model, constants)

    def task_logit(params: dict, x_one: torch.Tensor, task: torch.Tensor) -> torch.Tensor:
        return logits(params, x_one).gather(0, task.reshape(1)).squeeze(0)

    with eval_mode(model):
        per_sample = vmap(grad(task_logit), in_dims=(None, 0, 0))(params, x, tasks.to(x.device))
    return [per_sample[name] for name in params]


def output_gradients_multi(model: nn.Module, x: torch.Tensor, tasks: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
    """∇θ logit_{tasks[b, k]}(x[b]; θ) for K tasks per sample with ONE forward pass per sample.

    Each sample is forwarded once with ``torch.func.vjp``; its pullback is then applied to K one-hot cotangents
    (vmap over cotangents inside vmap over samples). A caller whose nodes have different numbers of tasks either pads
    rows of ``tasks`` with any valid index and drops those slots, or (as :func:`collect_projected_gradients` does)
    buckets nodes by their number of tasks so that no padding is needed.

    Cost model per node with K tasks, F being one sample's forward pass: shared, F + K·(A + W); one pass per pair,
    K·(F + A + W). A (the backward through activations, ≈ F) and W (the per-pair weight-gradient outer products,
    p multiply-adds and p floats written) are paid per pair either way, so sharing saves (K − 1)·F, at most about a
    third of the gradient time when W ≈ F. Memory: B·K·p floats for the returned gradients. Projecting them costs
    B·K·p·d multiply-adds, d times W, and dominates both; see ``benchmarks/bench_gradients.py``.

    Args:
        model: maps (B, num_hops + 1, in_dim) to (B, T) logits; evaluated in eval mode.
        x: (B, num_hops + 1, in_dim) float hop features, on the model's device.
        tasks: (B, K) int64 task indices.

    Returns:
        ``(grads, logits)``: one tensor (B, K, *param.shape) per trainable parameter in ``named_parameters()``
        order, and the logits (B, T) of every sample at θ.
    """
    params, constants = functional_state(model, x.device)
    logits = _single_logits(model, constants)

    def per_node(x_one: torch.Tensor, task_row: torch.Tensor) -> tuple[dict, torch.Tensor]:
        out, pullback = vjp(lambda p: logits(p, x_one), params)
        # K one-hot cotangents (K, T): row k selects logit task_row[k].
        one_hot = (task_row.unsqueeze(-1) == torch.arange(out.shape[-1], device=out.device)).to(out.dtype)
        (grads,) = vmap(pullback)(one_hot)
        return grads, out

    with eval_mode(model):
        grads, out = vmap(per_node)(x, tasks.to(x.device))
    return [grads[name] for name in params], out


def _parameter_owners(model: nn.Module) -> list[tuple[nn.Module, str]]:
    """(module, "weight" | "bias") owning each trainable parameter, in ``named_parameters()`` order; raises
    ValueError for a parameter outside ``nn.Linear`` and eval-mode batch norm with running statistics (whose
    per-sample gradients are not a function of the layer's own input and error alone)."""
    owners = {}
    for module_name, module in model.named_modules():
        for role, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            supported = isinstance(module, nn.Linear) or (
                isinstance(module, nn.modules.batchnorm._BatchNorm) and module.track_running_stats
            )
            if not supported:
                raise ValueError(
                    f"parameter {module_name}.{role} belongs to a {type(module).__name__}: the factored gradients "
                    "support nn.Linear and batch norm with running statistics; use method='shared'"
                )
            owners[id(param)] = (module, role)
    return [owners[id(param)] for param in model.parameters() if param.requires_grad]


def output_gradient_factors(
    model: nn.Module, x: torch.Tensor, tasks: torch.Tensor
) -> tuple[list[torch.Tensor | tuple[torch.Tensor, torch.Tensor]], torch.Tensor]:
    """∇θ logit_{tasks[b, k]}(x[b]; θ) in factored form, for ``Projector.project_layers`` (see gradtag.projection).

    One forward pass of the batch records each layer's input a and output; K backward passes (one per column of
    ``tasks``, each the sum over samples of the chosen logits: samples do not interact in eval mode) give each
    layer's error δ = ∂logit/∂output per (sample, task). A linear layer's weight gradient is then δ ⊗ a (returned as
    the pair, never formed), its bias gradient δ; batch norm's are δ·â and δ with â the normalised input.

    Args:
        model: every trainable parameter in an ``nn.Linear`` or a batch norm (each called once per forward).
        x: (B, ...) model input, or a dict of keyword inputs (a text batch); tasks: (B, K) int64 task indices. A model
            with one output per sample, (B,), is read as (B, 1): its task index is 0.

    Returns:
        ``(parts, logits)``: per trainable parameter in ``named_parameters()`` order either ``(inputs (B, in),
        errors (B, K, out))`` (a linear weight on 2-D inputs) or the gradient (B, K, *shape); and logits (B, T).
    """
    owners = _parameter_owners(model)
    modules = list(dict.fromkeys(module for module, _ in owners))
    inputs, outputs = {}, {}

    def record(module, args, output):
        if module in outputs:
            raise ValueError(f"{type(module).__name__} is called twice in one forward pass; use method='shared'")
        inputs[module], outputs[module] = args[0].detach(), output

    handles = [module.register_forward_hook(record) for module in modules]
    try:
        with eval_mode(model), torch.enable_grad():
            logits = model(**x) if isinstance(x, dict) else model(x)
            logits = logits.unsqueeze(1) if logits.dim() == 1 else logits
            chosen = logits.gather(1, tasks)  # (B, K)
            errors = {module: [] for module in modules}
            for k in range(tasks.shape[1]):
                grads = torch.autograd.grad(
                    chosen[:, k].sum(), [outputs[m] for m in modules], retain_graph=True, allow_unused=True
                )
                for module, grad_out in zip(modules, grads, strict=True):
                    errors[module].append(torch.zeros_like(outputs[module]) if grad_out is None else grad_out)
    finally:
        for handle in handles:
            handle.remove()
    errors = {module: torch.stack(values, dim=1).detach() for module, values in errors.items()}  # (B, K, out)
    parts = []
    for module, role in owners:
        error, given = errors[module], inputs[module]
        if isinstance(module, nn.Linear):
            if role == "bias":
                parts.append(error if error.dim() == 3 else error.sum(dim=tuple(range(2, error.dim() - 1))))
            elif given.dim() == 2:
                parts.append((given, error))
            else:  # a sequence input (B, ..., in): the weight gradient sums over positions
                parts.append(torch.einsum("bk...o,b...i->bkoi", error, given))
        else:
            if role == "bias":
                parts.append(error)
            else:
                normalised = (given - module.running_mean) / torch.sqrt(module.running_var + module.eps)
                parts.append(error * normalised.unsqueeze(1))
    return parts, logits.detach()


# ---------------------------------------------------------------------------------------------------------- collection
def _as_index(values, name: str) -> np.ndarray:
    array = values.detach().cpu().numpy() if isinstance(values, torch.Tensor) else np.asarray(values)
    if array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"{name} must be a 1-D integer array, got dtype {array.dtype} and shape {array.shape}")
    return array.astype(np.int64)


def group_pairs_by_node(nodes: np.ndarray, batch_size: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Group pair positions by node and cut the nodes into batches of at most ``batch_size`` nodes with EQUAL counts.

    Nodes are bucketed by their number of pairs K, so a batch needs no padding: the vmap over K cotangents in
    :func:`output_gradients_multi` does no wasted work and the (b, K, *shape) gradients are projected as they are.
    The price is at most one partly filled batch per distinct K.

    Args:
        nodes: (N,) int64 node index of each pair.
        batch_size: the most nodes per batch.

    Returns:
        ``[(node ids (b,), pair positions (b, K))]``: ``positions[i, k]`` is the index into ``nodes`` of the k-th pair
        of node ``node_ids[i]``, pairs of a node kept in input order. Every position appears exactly once.
    """
    order = np.argsort(nodes, kind="stable")
    unique, starts, counts = np.unique(nodes[order], return_index=True, return_counts=True)
    batches = []
    for width in np.unique(counts):
        members = np.flatnonzero(counts == width)
        for first in range(0, len(members), batch_size):
            chosen = members[first : first + batch_size]
            positions = order[starts[chosen, None] + np.arange(width)[None, :]]
            batches.append((unique[chosen], positions))
    return batches


def collect_projected_gradients(
    model: nn.Module,
    features: torch.Tensor | np.ndarray,
    pairs: tuple[Sequence[int], Sequence[int]],
    projector: Projector | KroneckerProjector,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    progress: bool = True,
    method: str = "factored",
    desc: str = "gradients",
) -> tuple[np.ndarray, np.ndarray]:
    """Projected output gradients g = Pᵀ ∇θ logit_j(x_n; θ*) for a list of (node n, task j) pairs (Alg. 1, lines 2-4).

    Args:
        model: the network at θ* (left unchanged: it is evaluated in eval mode through ``functional_call``).
        features: (num_nodes, num_hops + 1, in_dim) float hop features of all nodes (cast to the parameters' dtype).
        pairs: ``(node_index (N,), task_index (N,))`` integer arrays; a node may appear with several tasks.
        projector: a :class:`Projector` with ``num_params == num_trainable_params(model)``.
        batch_size: nodes per vmap call; each brings all of its K pairs, so a call holds b·K·p gradient entries.
        device: where gradients and projections are computed.
        progress: show a tqdm bar (``desc``) counting pairs.
        method: one of :data:`GRADIENT_METHODS`, all giving the same numbers up to float rounding:
            ``"factored"`` (:func:`output_gradient_factors`: one forward per node, layer inputs contracted with P
            once per node, errors once per pair; the default, needs linear layers and batch norm only),
            ``"shared"`` (:func:`output_gradients_multi`: one forward per node, full per-pair gradients, then
            projected), ``"per_pair"`` (:func:`output_gradients`: one forward per pair).

    Returns:
        ``(gradients, logits)``: (N, d) float32 projected gradients and (N,) float32 logits logit_j(x_n; θ*), both
        NumPy arrays with row i belonging to pair i of the input.
    """
    node_index, task_index = _as_index(pairs[0], "node_index"), _as_index(pairs[1], "task_index")
    if node_index.shape != task_index.shape:
        raise ValueError(f"node_index {node_index.shape} and task_index {task_index.shape} differ in shape")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if method not in GRADIENT_METHODS:
        raise ValueError(f"unknown gradient method {method!r}; choose from {GRADIENT_METHODS}")
    num_params = num_trainable_params(model)
    if projector.num_params != num_params:
        raise ValueError(f"projector has num_params={projector.num_params} but the model has {num_params} trainable")
    features = torch.as_tensor(features)
    count = len(node_index)
    gradients = np.zeros((count, projector.project_dim), dtype=np.float32)
    logits = np.zeros(count, dtype=np.float32)
    if count == 0:
        return gradients, logits
    if node_index.min() < 0 or node_index.max() >= len(features):
        raise ValueError(f"node_index must lie in [0, {len(features)})")

    dtype = next(iter(trainable_parameters(model).values())).dtype
    bar = tqdm(total=count, desc=desc, unit="pair", disable=not progress)
    for nodes, positions in group_pairs_by_node(node_index, batch_size):
        x = features[torch.as_tensor(nodes)].to(device=device, dtype=dtype)
        tasks = torch.as_tensor(task_index[positions], device=x.device)
        if method == "factored":
            parts, out = output_gradient_factors(model, x, tasks)
            projected = projector.project_layers(parts).flatten(0, 1)
            batch_logits = out.gather(1, tasks).reshape(-1)
        elif method == "shared":
            grads, out = output_gradients_multi(model, x, tasks)
            projected = projector.project([g.flatten(0, 1) for g in grads])  # (b, K, *shape) -> (b * K, *shape)
            batch_logits = out.gather(1, tasks).reshape(-1)
        else:
            x_pairs = x.repeat_interleave(tasks.shape[1], dim=0)
            flat = output_gradients(model, x_pairs, tasks.reshape(-1))
            with torch.no_grad(), eval_mode(model):
                params, constants = functional_state(model, x.device)
                out = functional_call(model, (params, constants), (x_pairs,))
            batch_logits = out.gather(1, tasks.reshape(-1, 1)).reshape(-1)
            projected = projector.project(flat)
        target = positions.reshape(-1)
        gradients[target] = projected.float().cpu().numpy()
        logits[target] = batch_logits.detach().float().cpu().numpy()
        bar.update(len(target))
    bar.close()
    return gradients, logits


# ---------------------------------------------------------------------------------------------------------- expansion
def _batched_logits(model: nn.Module, device, dtype: torch.dtype | None):
    """(logits(params, x) -> (b, T) of a batch, the model's trainable parameters, their shapes, the dtype): the
    functional model with everything in ``dtype`` (default: the trainable parameters' own) on ``device``."""
    params, constants = functional_state(model, device)
    dtype = dtype or next(iter(params.values())).dtype
    params = {name: t.to(dtype) for name, t in params.items()}
    constants = {name: t.to(dtype) if t.is_floating_point() else t for name, t in constants.items()}
    shapes = {name: param.shape for name, param in params.items()}

    def logits(p: dict, x_batch: torch.Tensor) -> torch.Tensor:
        return functional_call(model, (p, constants), (x_batch,))

    return logits, params, shapes, dtype


def batched_logits(
    model: nn.Module, weights: torch.Tensor, x: torch.Tensor, batch_size: int = 8192, dtype: torch.dtype | None = None
) -> torch.Tensor:
    """(B, T) logits of the network with its trainable parameters set to ``weights`` ((p,), :func:`flat_params`
    order), computed in eval mode in ``dtype`` (default: the parameters' own); the model itself is left unchanged."""
    logits, _, shapes, dtype = _batched_logits(model, x.device, dtype)
    params = unflatten_params(weights.to(x.device, dtype), shapes)
    with eval_mode(model), torch.no_grad():
        return torch.cat([logits(params, x[start : start + batch_size].to(dtype)) for start in range(0, len(x), batch_size)])


def taylor_logits(
    model: nn.Module,
    base: torch.Tensor,
    delta: torch.Tensor,
    x: torch.Tensor,
    batch_size: int = 8192,
    dtype: torch.dtype | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The Taylor terms of the logits along Δ at θ: f(θ), ∇f(θ)·Δ and Δᵀ∇²f(θ)Δ, each (B, T).

    f(x; θ + Δ) ≈ f + ∇f·Δ (Eq. 3, first order) + ½ Δᵀ∇²f Δ (the second-order term of the paper's Remark 3.1), with
    the directional derivatives exact: forward-over-forward ``torch.func.jvp`` of the functional model (eval mode),
    about three forward passes' work per batch and no Hessian formed.

    Args:
        model: maps (B, num_hops + 1, in_dim) to (B, T) logits; supplies the architecture and its buffers.
        base: (p,) θ in :func:`flat_params` order; delta: (p,) Δ, same order.
        x: (B, num_hops + 1, in_dim) float hop features.
        batch_size: samples per jvp call (memory knob; no effect on the result).
        dtype: floating dtype of the computation (default: the parameters' own).
    """
    logits, _, shapes, dtype = _batched_logits(model, x.device, dtype)
    theta = unflatten_params(base.to(x.device, dtype), shapes)
    tangent = unflatten_params(delta.to(x.device, dtype), shapes)
    terms = ([], [], [])
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            x_batch = x[start : start + batch_size].to(dtype)

            def first_order(p: dict, x_batch=x_batch) -> tuple[torch.Tensor, torch.Tensor]:
                return jvp(lambda q: logits(q, x_batch), (p,), (tangent,))

            (value, slope), (_, curvature) = jvp(first_order, (theta,), (tangent,))
            for collected, term in zip(terms, (value, slope, curvature), strict=True):
                collected.append(term)
    return tuple(torch.cat(collected) for collected in terms)


def jacobian_products(
    model: nn.Module, x: torch.Tensor, tangents: torch.Tensor, batch_size: int = 1024, output: int | None = None
) -> torch.Tensor:
    """∇θ f(x; θ)·v_k for every sample, output and direction: (B, T, K), in the parameters' dtype; with ``output``,
    only that logit's: (B, K) (what is kept is then B·K floats, not B·T·K).

    ``x``: (B, num_hops + 1, in_dim) hop features; ``tangents``: (K, p) directions in :func:`flat_params` order. One
    forward-mode ``torch.func.jvp`` per batch, vmapped over the K directions (eval mode); exact, no projection.
    ``batch_size`` samples per call bounds the memory (K × batch_size × the widest layer) and does not change the
    result.
    """
    logits, params, shapes, dtype = _batched_logits(model, x.device, None)
    tangents = tangents.to(x.device, dtype)
    parts = []
    with eval_mode(model), torch.no_grad():
        for start in range(0, len(x), batch_size):
            x_batch = x[start : start + batch_size].to(dtype)

            def along(direction: torch.Tensor, x_batch=x_batch) -> torch.Tensor:
                products = jvp(lambda q: logits(q, x_batch), (params,), (unflatten_params(direction, shapes),))[1]
                return products if output is None else products[:, output]

            products = vmap(along)(tangents)  # (K, b, T), or (K, b) for one output
            parts.append(products.permute(1, 2, 0) if output is None else products.T.contiguous())
    if parts:
        return torch.cat(parts)
    return torch.empty((0, 0, len(tangents)) if output is None else (0, len(tangents)), dtype=dtype)
