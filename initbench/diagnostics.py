"""What happens inside training: gradient norms, weight and activation distributions.

Everything here runs on the device and reads back to the host only on the steps it logs:
``after_backward`` and ``after_step`` return at once on other steps.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose2d, nn.LSTM, nn.GRU,
            nn.RNN)  # fmt: skip
SATURATING = {"tanh": 0.99, "sigmoid": 0.01}  # |tanh| > 0.99, sigmoid < 0.01 or > 0.99


class Diagnostics:
    def __init__(self, cfg, model: nn.Module, table: Callable, *, epochs: int,
                 probe_batch: Callable[[], torch.Tensor]):  # fmt: skip
        self.cfg = cfg
        self.model = model
        self.table = table
        self.probe_batch = probe_batch
        self.enabled = bool(cfg.enabled)
        self.names, self.params = [], []
        for name, param in model.named_parameters():
            if param.requires_grad and param.numel() > 0:
                self.names.append(name)
                self.params.append(param)
        self.epochs = set(cfg.distribution_epochs or {1, max(1, (epochs + 1) // 2), epochs})
        self._before: list[torch.Tensor] | None = None
        self._grad_norms: torch.Tensor | None = None

    def logs(self, step: int) -> bool:
        return self.enabled and step % self.cfg.grad_every == 0

    # --- gradient norms -----------------------------------------------------------------
    def on_start(self) -> None:
        if self.enabled:
            self.record_distributions(epoch=0, step=0)

    def after_backward(self, step: int, epoch: int) -> None:
        if not self.logs(step):
            return
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.params]
        self._grad_norms = torch.stack(torch._foreach_norm(grads)).float()
        self._before = [p.detach().clone() for p in self.params]

    def after_step(self, step: int, epoch: int) -> None:
        if not self.logs(step) or self._before is None:
            return
        weights = [p.detach() for p in self.params]
        weight_norms = torch.stack(torch._foreach_norm(self._before)).float()
        updates = torch._foreach_sub(weights, self._before)
        update_norms = torch.stack(torch._foreach_norm(updates)).float()
        ratio = update_norms / weight_norms.clamp_min(1e-30)
        grad, weight, ratio = torch.stack([self._grad_norms, weight_norms, ratio]).cpu().tolist()
        self._before = None
        self.table("grad_norms").write(
            {"step": step, "epoch": epoch, "layer": name, "grad_norm": g, "weight_norm": w,
             "update_ratio": r}
            for name, g, w, r in zip(self.names, grad, weight, ratio)
        )  # fmt: skip

    # --- distributions ------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, step: int, last: bool = False) -> None:
        if self.enabled and (epoch in self.epochs or last):
            self.record_distributions(epoch=epoch, step=step)

    @torch.no_grad()
    def record_distributions(self, epoch: int, step: int) -> None:
        bins = self.cfg.bins
        moments, histograms = [], []

        def add(layer: str, tensor_kind: str, values: torch.Tensor, saturation: str | None):
            values = values.detach().float().flatten()
            values = values[torch.isfinite(values)]
            if values.numel() == 0:
                return
            low, high = values.min(), values.max()
            span = float(high - low) or 1.0
            counts = torch.histc(values, bins=bins, min=float(low), max=float(low) + span)
            saturated = math.nan
            if saturation == "tanh":
                saturated = (values.abs() > SATURATING["tanh"]).float().mean().item()
            elif saturation == "sigmoid":
                saturated = ((values < 0.01) | (values > 0.99)).float().mean().item()
            moments.append({
                "epoch": epoch, "step": step, "layer": layer, "tensor": tensor_kind,
                "mean": values.mean().item(), "std": values.std().item() if values.numel() > 1
                else 0.0, "min": float(low), "max": float(high),
                "zero_fraction": (values == 0).float().mean().item(),
                "saturated_fraction": saturated,
            })  # fmt: skip
            edges = torch.linspace(float(low), float(low) + span, bins + 1)
            histograms.extend(
                {"epoch": epoch, "step": step, "layer": layer, "tensor": tensor_kind,
                 "bin_low": edges[i].item(), "bin_high": edges[i + 1].item(), "count": int(c)}
                for i, c in enumerate(counts.tolist())
            )  # fmt: skip

        layers = [(name, module) for name, module in self.model.named_modules()
                  if isinstance(module, WEIGHTED)]  # fmt: skip
        for name, module in layers:
            weight = getattr(module, "weight", None)
            if weight is None:
                weight = getattr(module, "weight_hh_l0", None)
            if weight is not None:
                add(name, "weight", weight, None)

        activation = getattr(self.model, "activation", None)
        outputs: dict[str, torch.Tensor] = {}
        hooks = [module.register_forward_hook(_keep_output(name, outputs))
                 for name, module in layers]  # fmt: skip
        was_training = self.model.training
        self.model.eval()
        try:
            self.model(self.probe_batch())
        finally:
            for hook in hooks:
                hook.remove()
            self.model.train(was_training)
        for name, _ in layers:
            if name in outputs:
                # the pre-activation; for a saturating nonlinearity measure after it
                values = outputs[name]
                kind = activation if activation in SATURATING else None
                if kind == "tanh":
                    values = torch.tanh(values)
                elif kind == "sigmoid":
                    values = torch.sigmoid(values)
                add(name, "activation", values, kind)
        self.table("distributions").write(moments)
        self.table("histograms").write(histograms)

    # --- divergence ---------------------------------------------------------------------
    @torch.no_grad()
    def locate_divergence(self) -> dict[str, Any]:
        """The first parameter, in the model's order, whose weight or gradient is not finite."""
        for name, param in zip(self.names, self.params):
            if not torch.isfinite(param).all():
                return {"layer": name, "where": "weight"}
            if param.grad is not None and not torch.isfinite(param.grad).all():
                return {"layer": name, "where": "gradient"}
        return {"layer": None, "where": "loss"}

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


def _keep_output(name: str, outputs: dict[str, torch.Tensor]):
    def hook(module, inputs, output):
        outputs[name] = output[0] if isinstance(output, tuple) else output

    return hook
