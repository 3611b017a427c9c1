"""Closed-form least-squares refits that go with calibrated alpha (no gradient steps).

A scalar-alpha DyT cannot reproduce a norm exactly: the norm divides each token by its own RMS, DyT may not
(it is elementwise). What calibration can do is choose, in closed form, the parameters that make the
converted model's sub-layers see what the original's saw:

  affine   per-channel gamma (and beta, where the norm has one) of the DyT, by weighted least squares against
           the original norm's output. Only DyT parameters change; the final norm's fit is weighted by what the
           LM head reads.
  linear   affine, plus the linear layers that read the DyT's output ("consumers": q/k/v, gate/up, ...)
           absorb a full hidden x hidden least-squares map from DyT features to the original norm output,
           and each sub-layer's output projection (o_proj, down_proj, ...) is refitted so the sub-layer
           adds to the residual stream what the original's added; the final norm's map goes into the LM head
           (untied from the input embeddings if it was tied: vocab x hidden more parameters). Linear weights
           change (shapes do not).

Rows are weighted: the first token of each sequence is the model's attention sink (activations ~100x the
median in SmolLM2); every later token attends to its key and value, so its error costs far more than one
token's share. `sink_weight` multiplies its weight in every fit.
"""

from __future__ import annotations

import torch
from torch import nn


def affine_fit(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, with_bias: bool,
               ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]:
    """Per-channel weighted least squares y ~ gamma * z (+ beta); returns (gamma, beta, per-channel MSE).

    z, y: (tokens, hidden); w: (tokens,) row weights or None. Channels where z is (numerically) constant keep
    gamma = 0 for the varying part, so nothing divides by zero.
    """
    w = torch.ones(z.shape[0], device=z.device) if w is None else w
    w = (w / w.mean()).unsqueeze(1)
    if with_bias:
        zm, ym = (w * z).mean(0), (w * y).mean(0)
        zc, yc = z - zm, y - ym
    else:
        zc, yc = z, y
    gamma = (w * zc * yc).sum(0) / (w * zc.pow(2)).sum(0).clamp_min(1e-12)
    err = (w * (zc * gamma - yc).pow(2)).mean(0)
    beta = (ym - gamma * zm) if with_bias else None
    return gamma, beta, err


def logit_metric_affine(z: torch.Tensor, y: torch.Tensor, w: torch.Tensor | None, head_weight: torch.Tensor,
                        with_bias: bool = True, ridge: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-channel gamma (and beta) minimising the error the final norm causes in the *logits*:
    sum_t w_t ||(gamma * z_t + beta - y_t) @ H^T||^2 with H the (vocab, hidden) output embedding, so channels the
    LM head reads strongly count for more than plain MSE gives them. With C = H^T H, s = Z^T w, the normal
    equations are [[C o Z^T W Z, diag(s) C], [C diag(s), (sum w) C]] [gamma; beta] = [diag(Z^T W Y C); C Y^T w]."""
    z, y = z.double(), y.double()
    w = torch.ones(z.shape[0], dtype=z.dtype) if w is None else (w.double() / w.double().mean())
    head = head_weight.detach().double().cpu()
    c = head.T @ head
    zw = z * w.unsqueeze(1)
    lhs = c * (zw.T @ z)
    rhs = (zw * (y @ c)).sum(0)
    d = z.shape[1]
    if with_bias:
        s = zw.sum(0)
        top = torch.cat([lhs, s.unsqueeze(1) * c], 1)
        bottom = torch.cat([c * s.unsqueeze(0), w.sum() * c], 1)
        lhs = torch.cat([top, bottom], 0)
        rhs = torch.cat([rhs, c @ (y * w.unsqueeze(1)).sum(0)])
    lhs.diagonal().add_(ridge * float(lhs.diagonal().mean()))
    solution = torch.linalg.solve(lhs, rhs).float()
    return solution[:d], (solution[d:] if with_bias else None)


def ridge_solve(x: torch.Tensor, target: torch.Tensor, w: torch.Tensor | None, ridge: float = 1e-3,
                prior: torch.Tensor | None = None) -> torch.Tensor:
    """B minimising sum_rows w * ||x B - target||^2 + ridge * mean(diag(x^T x)) * ||B - prior||^2 (prior 0 when
    None): along directions the rows rarely use, B stays at the prior instead of growing. The products over the
    rows run in float32, the solve in float64 (returned): float32's rounding moves the solution by ~1e-5 relative
    even with attention-sink rows weighted 30x, far below the ridge, and its matmuls run ~2x float64's."""
    x, target = x.float(), target.float()
    if w is not None:
        root = (w.float() / w.float().mean()).sqrt().unsqueeze(1)
        x, target = x * root, target * root
    gram = (x.T @ x).double()
    strength = ridge * float(gram.diagonal().mean().clamp_min(1e-12))
    gram.diagonal().add_(strength)
    rhs = (x.T @ target).double()
    if prior is not None:
        rhs = rhs + strength * prior.double().to(rhs.device)
    return torch.linalg.solve(gram, rhs)


def is_linear(module: nn.Module) -> bool:
    """nn.Linear, or the transposed Conv1D that GPT-2 uses for its linear layers."""
    from transformers.pytorch_utils import Conv1D

    return isinstance(module, (nn.Linear, Conv1D))


def linear_weight_in_out(module: nn.Module) -> torch.Tensor:
    """The weight as an (in, out) matrix, whatever the layer's storage convention."""
    return module.weight.data.T if isinstance(module, nn.Linear) else module.weight.data


def set_linear_weight_in_out(module: nn.Module, weight_in_out: torch.Tensor) -> None:
    value = weight_in_out.T if isinstance(module, nn.Linear) else weight_in_out
    module.weight.data.copy_(value.to(module.weight.dtype))


def fold_map_into_consumers(consumers: list[nn.Module], map_in_out: torch.Tensor) -> None:
    """Consumers read y ~ z @ map instead of the norm's output: W' = map @ W (an offset stays in the DyT's beta)."""
    for lin in consumers:
        weight = linear_weight_in_out(lin).double()
        set_linear_weight_in_out(lin, map_in_out.double().to(weight.device) @ weight)


def fold_map_into_head(model: nn.Module, map_in_out: torch.Tensor) -> None:
    """The LM head reads y ~ z @ map instead of the final norm's output: W' = W @ map^T. A head tied to the
    input embeddings is untied first (the embeddings must keep reading tokens as before), which adds
    vocab x hidden parameters to the saved model."""
    head, embed = model.get_output_embeddings(), model.get_input_embeddings()
    weight = head.weight.data.double() @ map_in_out.double().to(head.weight.device).T
    tied = embed is not None and head.weight is embed.weight
    if tied:
        head.weight = nn.Parameter(weight.to(embed.weight.dtype))
        model.config.tie_word_embeddings = False  # transformers 5 re-ties from the config on save and load
    else:
        head.weight.data.copy_(weight.to(head.weight.dtype))


def refit_output_projection(lin: nn.Module, inputs: torch.Tensor, target: torch.Tensor,
                            w: torch.Tensor | None, ridge: float = 1e-3, towards_current: bool = False) -> None:
    """Least-squares weights (and bias, if the layer has one) mapping `inputs` to `target`; the ridge pulls
    towards zero, or towards the layer's current (original) weights with `towards_current`."""
    x = inputs
    if lin.bias is not None:
        x = torch.cat([inputs, torch.ones(inputs.shape[0], 1, dtype=inputs.dtype, device=inputs.device)], 1)
    prior = None
    if towards_current:
        prior = linear_weight_in_out(lin).double().cpu()
        if lin.bias is not None:
            prior = torch.cat([prior, lin.bias.data.double().cpu().unsqueeze(0)], 0)
    solution = ridge_solve(x, target, w, ridge, prior)
    if lin.bias is not None:
        lin.bias.data.copy_(solution[-1].to(lin.bias.dtype))
        solution = solution[:-1]
    set_linear_weight_in_out(lin, solution)


@torch.no_grad()
def trace_consumers(root: nn.Module, norms: dict[str, nn.Module], run  # noqa: ANN001
                    ) -> dict[str, tuple[list[nn.Module], nn.Module | None]]:
    """For each norm module, the linear layers under `root` whose input *is* that norm's output, and the output
    projection of their sub-layer (the last linear that runs inside the consumers' common parent), from one traced
    forward (`run()`), so names and families do not matter: {key: (consumers, output projection or None)}."""
    produced: dict[int, str] = {}  # id of a norm's output tensor -> its key
    kept: list[torch.Tensor] = []  # hold the outputs so that their ids stay unique during the trace
    consumers: dict[str, list[nn.Module]] = {key: [] for key in norms}
    order: list[nn.Module] = []

    def post(key):  # noqa: ANN001, ANN202
        def hook(module, args, out):  # noqa: ANN001
            produced[id(out)] = key
            kept.append(out)
        return hook

    def pre(module, args):  # noqa: ANN001
        order.append(module)
        key = produced.get(id(args[0])) if args and isinstance(args[0], torch.Tensor) else None
        if key is not None and module not in consumers[key]:
            consumers[key].append(module)

    handles = [norm.register_forward_hook(post(key)) for key, norm in norms.items()]
    names = {}
    for name, module in root.named_modules():
        if is_linear(module):
            names[module] = name
            handles.append(module.register_forward_pre_hook(pre))
    try:
        run()
    finally:
        for handle in handles:
            handle.remove()
    return {key: (found, _output_projection(found, order, names)) for key, found in consumers.items()}


def _output_projection(consumers: list[nn.Module], order: list[nn.Module], names: dict[nn.Module, str],
                       ) -> nn.Module | None:
    """The last linear that ran inside the consumers' common parent module (o_proj, down_proj, ...)."""
    if not consumers:
        return None
    prefixes = [names[c].rpartition(".")[0] for c in consumers]
    parent = prefixes[0]
    while parent and not all(p == parent or p.startswith(parent + ".") for p in prefixes):
        parent = parent.rpartition(".")[0]
    inside = [m for m in order if m not in consumers and parent and names[m].startswith(parent + ".")]
    return inside[-1] if inside else None
