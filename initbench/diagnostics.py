"""What happens inside training: gradient norms, weight and activation distributions, and where a
run first went non-finite.

Everything is on by default (``diagnostics.enabled``) and cheap enough to stay on; the overhead
is measured by ``scripts/bench_diagnostics.py``.

**grad_norms.csv.** Every ``grad_every`` steps, from step 0 (the gradient of the initial
weights), one row per parameter tensor, in model order:

- ``grad_norm``: ||g||, the L2 norm of the whole gradient tensor (unscaled under fp16);
- ``weight_norm``: ||W|| before the update of that step;
- ``update_ratio``: ||W_after - W_before|| / ||W_before|| for that step's update (empty when
  ||W_before|| = 0).

``step`` s always means "the weights after s optimizer updates", here and in the distribution
tables. Norms are taken with one fused pass (``torch._foreach_norm``) on the device; the weights
are copied only on the steps that log, to measure their update.

**distributions.csv and histograms.csv.** At initialization (epoch 0) and after the epochs in
``distribution_epochs`` (default: the first, the middle and the last), for every Linear, Conv
and recurrent layer, two tensors:

- ``weight``: the layer's weight (for a recurrent layer: its hidden-to-hidden matrices, all
  layers together; its input matrices are ``weight_ih``);
- ``activation``: the layer's output *after the nonlinearity that follows it*: the output of the
  first activation module (the model's ``activation``: ReLU, tanh, ...) that runs after the layer,
  so after batch norm and after the residual addition where those come first. Dead ReLUs and
  saturated tanh/sigmoid units exist only after the nonlinearity, so this is where they are
  counted. A layer that no activation module follows (the classifier, every layer of a model
  with ``activation=linear``, a recurrent layer) is described by its own output (the logits, for
  the classifier).

Activations are measured on a fixed batch of ``activation_batch`` training images, in training
mode (batch norm uses the batch statistics, as during a training step) with the running
statistics restored afterwards, under ``torch.no_grad``. Each activation is summarized inside its
forward hook and released, so a 50-block ResNet never holds more than a layer or two.

Moments: mean, std (population), min, max, ``zero_fraction`` (exact zeros: dead ReLU units),
``saturated_fraction`` (after tanh: |y| > 0.99; after sigmoid: y < 0.01 or y > 0.99; empty
otherwise). Non-finite values are left out of the moments and the counts.

*Binning.* Histograms share one dyadic grid: every bin has a width of a power of two, 2**e, and
every edge is an integer multiple of it, ``bins`` bins from ``-(bins // 2) * 2**e`` (or from 0
for a tensor with no negative values at initialization, such as a ReLU output, until negative
values appear). The exponent is chosen per (layer, tensor) at initialization, as the smallest
that covers the values, and then kept (across a resume too): later epochs of the same layer use
the very same edges, and only when values outgrow them does the exponent go up, by as many
doublings as needed, so that nothing is ever clipped. Two histograms with different exponents,
from two initializers or two layers, compare exactly after summing adjacent pairs of bins of the
finer one until the widths agree. Empty bins before the first and after the last non-empty one
are not written; every other bin is, zero or not. Edges are written in full precision. The counts
of a histogram sum to the number of finite values of the tensor (weight elements, or activation
elements over the batch).

**Divergence.** On every step the loss and the gradient norm of each parameter tensor (the fused
pass above) are written, on the device, into one row of a small ring of ``RING`` steps: one more
kernel per step, and no host read. Every ``RING`` steps, at logging steps and before anything is
read, the ring is folded, still on the device, into the first step at which each value was
non-finite and its last finite value.
:meth:`Diagnostics.locate_divergence` reads them once, when the trainer finds a non-finite loss,
and the trainer writes them into ``summary.json["divergence"]``:

- ``step``: the first step at which the loss or any gradient was non-finite (numbered as in
  grad_norms.csv, so possibly earlier than the step at which the trainer noticed); ``epoch``:
  the epochs completed before it, as in grad_norms.csv;
- ``cause``: ``gradient`` when the loss of that step was still finite (the backward pass
  overflowed), ``loss`` when the forward pass already had;
- ``layer``, the parameter tensor that went first, and ``layer_basis``, the rule that named it.
  For ``gradient``: of the parameters whose gradient was non-finite at that step, the one
  nearest the output (the last in model order), since backpropagation runs from the output
  towards the input and carries a non-finite value born at one layer into every layer before it
  within the same pass. For ``loss``: every gradient turns non-finite at once and cannot tell;
  ``layer`` is then the parameter whose gradient norm had grown the most, as a ratio, from the
  first step tracked (step 0, or where a resumed run restarted) to its last finite step; null
  when no two earlier steps exist to compare;
- ``nonfinite_parameters``: how many parameter tensors had a non-finite gradient at that step.

Under fp16 the gradient scaler skips steps whose gradients overflow, which is not divergence;
there only the loss is tracked. With diagnostics off, ``layer`` is the first parameter whose
weight or gradient is non-finite when the trainer notices.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)

WEIGHTED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
            nn.ConvTranspose3d, nn.RNNBase)  # fmt: skip
# Saturation: tanh beyond +-0.99, sigmoid below 0.01 or above 0.99: centre and half-width.
SATURATION = {"tanh": (0.0, 0.99), "sigmoid": (0.5, 0.49)}
NEVER = 2**62  # "no non-finite value yet" in the first-step trackers
RING = 64  # steps of per-step values held on the device between two folds
# An all-zero tensor (zeros init, Fixup's last conv) has no scale; it gets bins of this width
# until it grows.
MIN_EXPONENT = -40

BASIS_GRADIENT = "the non-finite gradient nearest the output (backpropagation reached it first)"
BASIS_GROWTH = "the gradient norm that grew the most, from the first step to the last finite one"
BASIS_STATE = "the first non-finite weight or gradient in model order, when detected"


class Diagnostics:
    """Records grad_norms.csv, distributions.csv and histograms.csv, and tracks divergence.

    The trainer calls, in order: :meth:`on_start` (after initialization), then per step
    :meth:`after_backward` (gradients present, before the optimizer step) and :meth:`after_step`,
    :meth:`on_epoch_end` per epoch, and :meth:`locate_divergence` when the loss is non-finite.

    Args:
        cfg: the ``diagnostics`` config node.
        model: the model being trained (not a compiled wrapper: hooks go on its modules).
        table: ``table(name)`` returns the :class:`initbench.record.TableWriter` of a table.
        epochs: the run's epochs, for the default ``distribution_epochs``.
        probe_batch: returns the fixed, normalized batch that activations are measured on.
        gradients_may_overflow: the gradient scaler is on (fp16): a non-finite gradient is a
            skipped step, not divergence, so only the loss is tracked.
    """

    def __init__(self, cfg, model: nn.Module, table: Callable, *, epochs: int,
                 probe_batch: Callable[[], Tensor],
                 gradients_may_overflow: bool = False):  # fmt: skip
        self.cfg = cfg
        self.model = model
        self.table = table
        self.probe_batch = probe_batch
        self.enabled = bool(cfg.enabled)
        self.gradients_may_overflow = gradients_may_overflow
        self.names: list[str] = []
        self.params: list[nn.Parameter] = []
        for name, param in model.named_parameters():
            if param.requires_grad and param.numel() > 0:
                self.names.append(name)
                self.params.append(param)
        if cfg.distribution_epochs is None:
            self.epochs = {1, max(1, (epochs + 1) // 2), epochs}
        else:
            self.epochs = {int(epoch) for epoch in cfg.distribution_epochs}
        self.layers = [(name, module) for name, module in model.named_modules()
                       if isinstance(module, WEIGHTED)]  # fmt: skip
        self.activation = getattr(model, "activation", None)
        self.nonlinearity = _nonlinearity_type(self.activation)
        self.grad_every = int(cfg.grad_every)

        device = self.params[0].device if self.params else torch.device("cpu")
        self._zero = torch.zeros((), device=device)  # the norm of a missing gradient
        # Per-step values, [loss, norm of each gradient], one row per step, written on the
        # device; every RING steps (and before anything reads them) they are folded into the
        # per-column summaries below, also on the device.
        columns = 1 if gradients_may_overflow else len(self.params) + 1
        self._ring = torch.zeros(RING, columns, device=device)
        self._ring_rows = torch.arange(RING, device=device).unsqueeze(1)
        self._ring_start, self._ring_used = 0, 0
        # per column: the first step it was non-finite, its last finite value, its first value
        self._first_nonfinite = torch.full((columns,), NEVER, device=device)
        self._last_finite = torch.full((columns,), math.nan, device=device)
        self._initial: Tensor | None = None
        self._initial_step: int | None = None
        self._epoch_starts: list[tuple[int, int]] = []  # (first step, epoch), for divergence
        self._pending: dict[str, Any] | None = None  # a logging step between backward and step
        self._warned = False
        # (layer, tensor) -> (exponent of the bin width, starts at zero): the fixed bins
        self._grids: dict[tuple[str, str], tuple[int, bool]] = {}

    def logs(self, step: int) -> bool:
        return self.enabled and step % self.grad_every == 0

    # --- every step ---------------------------------------------------------------------
    def on_start(self) -> None:
        if self.enabled:
            self.record_distributions(epoch=0, step=0)

    @torch.no_grad()
    def after_backward(self, step: int, epoch: int, loss: Tensor | None = None) -> None:
        """Check the loss and gradients of ``step`` for finiteness, on the device; on a logging
        step also keep what :meth:`after_step` needs. Reads nothing back to the host."""
        if not self.enabled:
            return
        if not self._epoch_starts or self._epoch_starts[-1][1] != epoch:
            self._epoch_starts.append((step, epoch))
        logs = self.logs(step)
        norms: list[Tensor] = []
        if logs or not self.gradients_may_overflow:
            grads = [p.grad if p.grad is not None else self._zero for p in self.params]
            norms = list(torch._foreach_norm(grads))
        loss_value = self._zero if loss is None else loss.detach().float().reshape(())
        if self._ring_used == RING or step != self._ring_start + self._ring_used:
            self._fold()
        if self._ring_used == 0:
            self._ring_start = step
        row = self._ring[self._ring_used]
        # one kernel per step beyond the norms: checking for non-finite values waits for the fold
        if self.gradients_may_overflow:
            row.copy_(loss_value.reshape(1))
        else:
            torch.stack([loss_value, *norms], out=row)
        self._ring_used += 1
        if logs:
            weights = [p.detach() for p in self.params]
            self._pending = {
                "step": step, "epoch": epoch, "grad_norms": torch.stack(norms).float(),
                "weight_norms": torch.stack(torch._foreach_norm(weights)).float(),
                # a copy of the weights, on logging steps only, to measure the update
                "before": torch._foreach_mul(weights, 1.0),
            }  # fmt: skip

    def _fold(self) -> None:
        """Fold the ring's rows into the per-column summaries, on the device (no host read)."""
        used, start = self._ring_used, self._ring_start
        if used == 0:
            return
        values = self._ring[:used]  # (steps, columns)
        rows = self._ring_rows[:used]  # (steps, 1)
        finite = torch.isfinite(values)
        first = torch.where(finite, NEVER, rows + start).amin(0)
        torch.minimum(self._first_nonfinite, first, out=self._first_nonfinite)
        last_row = torch.where(finite, rows, -1).amax(0)  # -1: never finite in these steps
        last = values.gather(0, last_row.clamp_min(0).unsqueeze(0)).squeeze(0)
        torch.where(last_row >= 0, last, self._last_finite, out=self._last_finite)
        if self._initial is None:
            self._initial, self._initial_step = values[0].clone(), start
        self._ring_used = 0

    @torch.no_grad()
    def after_step(self, step: int, epoch: int) -> None:
        """On a logging step: measure the update and write the rows (the one host read)."""
        pending, self._pending = self._pending, None
        if pending is None or pending["step"] != step:
            return
        weights = [p.detach() for p in self.params]
        updates = torch._foreach_sub(weights, pending["before"])
        update_norms = torch.stack(torch._foreach_norm(updates)).float()
        weight_norms = pending["weight_norms"]
        ratios = torch.where(weight_norms > 0, update_norms / weight_norms, math.nan)
        self._fold()
        nonfinite = (self._first_nonfinite.min() < NEVER).float().reshape(1)
        values = torch.cat([pending["grad_norms"], weight_norms, ratios, nonfinite]).cpu()
        grad, weight, ratio = values[:-1].view(3, -1).tolist()
        self.table("grad_norms").write(
            {"step": step, "epoch": epoch, "layer": name, "grad_norm": g, "weight_norm": w,
             "update_ratio": None if w == 0 else r}
            for name, g, w, r in zip(self.names, grad, weight, ratio, strict=True)
        )  # fmt: skip
        if values[-1].item() and not self._warned:
            self._warned = True
            found = self.locate_divergence()
            log.warning("non-finite values: cause=%s step=%s layer=%s", found.get("cause"),
                        found.get("step"), found.get("layer"))  # fmt: skip

    # --- distributions ------------------------------------------------------------------
    def on_epoch_end(self, epoch: int, step: int, last: bool = False) -> None:
        if self.enabled and (epoch in self.epochs or last):
            self.record_distributions(epoch=epoch, step=step)

    @torch.no_grad()
    def record_distributions(self, epoch: int, step: int) -> None:
        """Weight and activation moments and histograms of every layer, at this point."""
        started = time.perf_counter()
        # Training mode, so that batch norm normalizes with the batch statistics as in a
        # training step: at initialization its running statistics are still mean 0, var 1,
        # which would show a network that training never runs. The buffers (running
        # statistics; spectral norm's vectors, which even reading a weight updates) are put
        # back afterwards, so that recording changes nothing in the run.
        saved = [(buffer, buffer.clone()) for buffer in self.model.buffers()]
        was_training = self.model.training
        self.model.train()
        try:
            summaries = [self._summarize(name, kind, tensor, saturation=None)
                         for name, module in self.layers
                         for kind, tensor in _weights_of(module)]  # fmt: skip
            summaries += self._activations()
        finally:
            for buffer, value in saved:
                buffer.copy_(value)
            self.model.train(was_training)
        self._write(summaries, epoch, step)
        log.debug("distributions: epoch=%d step=%d layers=%d seconds=%.3f", epoch, step,
                  len(self.layers), time.perf_counter() - started)  # fmt: skip

    def _activations(self) -> list[_Summary]:
        """Run the probe batch; summarize each layer's activation inside the hooks, so that no
        activation outlives the next nonlinearity."""
        summaries: list[_Summary] = []
        waiting: dict[str, Tensor] = {}  # layers run since the last nonlinearity: their outputs
        described: set[str] = set()

        def after_layer(name: str):
            def hook(module, inputs, output):
                if name in described:  # a module called twice: its first call counts
                    return
                output = output[0] if isinstance(output, tuple) else output
                if self.nonlinearity is None:  # no nonlinearity will follow: describe now
                    described.add(name)
                    summaries.append(self._summarize(name, "activation", output, None))
                else:
                    waiting[name] = output

            return hook

        def after_nonlinearity(module, inputs, output):
            if not waiting:
                return
            # one measurement shared by the layers it follows (a ResNet block's conv2 and
            # projection shortcut both end in the block's last ReLU)
            values = self._measure(output, self.activation)
            for name in waiting:
                described.add(name)
                summaries.append(self._bin(name, "activation", values))
            waiting.clear()

        hooks = [module.register_forward_hook(after_layer(name)) for name, module in self.layers]
        if self.nonlinearity is not None:
            hooks += [module.register_forward_hook(after_nonlinearity)
                      for module in self.model.modules()
                      if isinstance(module, self.nonlinearity)]  # fmt: skip
        try:
            self.model(self.probe_batch())
            for name, output in waiting.items():  # no nonlinearity came after them
                summaries.append(self._summarize(name, "activation", output, None))
        finally:
            for hook in hooks:
                hook.remove()
        return summaries

    def _summarize(self, layer: str, kind: str, tensor: Tensor,
                   saturation: str | None) -> _Summary:  # fmt: skip
        return self._bin(layer, kind, self._measure(tensor, saturation))

    def _measure(self, tensor: Tensor, saturation: str | None) -> _Values:
        """The finite values of ``tensor``, flattened, and their range (one host read: the
        histogram's edges depend on it)."""
        values = tensor.detach().float().reshape(-1)
        if values.numel() == 0:
            return _Values(values, math.nan, math.nan, None)
        low, high = torch.stack(torch.aminmax(values)).tolist()
        if not (math.isfinite(low) and math.isfinite(high)):
            values = values[torch.isfinite(values)]
            low, high = (torch.stack(torch.aminmax(values)).tolist() if values.numel()
                         else (math.nan, math.nan))  # fmt: skip
        return _Values(values, low, high, saturation if saturation in SATURATION else None)

    def _bin(self, layer: str, kind: str, measured: _Values) -> _Summary:
        """Moments (left on the device) and the histogram on this (layer, tensor)'s grid."""
        x, count, bins = measured.values, measured.values.numel(), self.cfg.bins
        summary = _Summary(layer, kind, measured.low, measured.high)
        if count == 0:
            return summary
        exponent, from_zero = _dyadic_grid(measured.low, measured.high, bins)
        if (layer, kind) in self._grids:  # fixed at initialization; widened only if outgrown
            fixed_exponent, fixed_from_zero = self._grids[layer, kind]
            from_zero = fixed_from_zero and measured.low >= 0
            needed, _ = _dyadic_grid(measured.low, measured.high, bins, from_zero=from_zero)
            exponent = max(fixed_exponent, needed)
        self._grids[layer, kind] = (exponent, from_zero)
        summary.width = math.ldexp(1.0, exponent)
        summary.first_edge = 0.0 if from_zero else -(bins // 2) * summary.width
        summary.counts = _histogram(x, bins, summary.first_edge, summary.width)
        var, mean = torch.var_mean(x, correction=0)
        moments = [mean, var.sqrt(), (count - torch.count_nonzero(x)) / count]
        if measured.saturation is not None:
            centre, half_width = SATURATION[measured.saturation]
            moments.append(torch.count_nonzero((x - centre).abs() > half_width) / count)
        summary.moments = torch.stack([moment.float() for moment in moments])
        return summary

    def _write(self, summaries: list[_Summary], epoch: int, step: int) -> None:
        """Read every summary back at once and append the rows."""
        filled = [summary for summary in summaries if summary.moments is not None]
        if filled:
            moments = torch.cat([summary.moments for summary in filled]).cpu().tolist()
            counts = torch.stack([summary.counts for summary in filled]).cpu().tolist()
            offset = 0
            for summary, row in zip(filled, counts, strict=True):
                size = summary.moments.numel()
                summary.moments, summary.counts = moments[offset : offset + size], row
                offset += size
        moment_rows, histogram_rows = [], []
        for summary in summaries:
            mean, std, zeros, *saturated = summary.moments or [math.nan] * 3
            key = {"epoch": epoch, "step": step, "layer": summary.layer, "tensor": summary.kind}
            moment_rows.append({
                **key, "mean": mean, "std": std, "min": summary.low, "max": summary.high,
                "zero_fraction": zeros, "saturated_fraction": saturated[0] if saturated else None,
            })  # fmt: skip
            nonempty = [index for index, count in enumerate(summary.counts or []) if count]
            if not nonempty:
                continue
            for index in range(nonempty[0], nonempty[-1] + 1):
                low = summary.first_edge + index * summary.width
                histogram_rows.append({
                    # repr: the shortest text that reads back as exactly this dyadic edge
                    **key, "bin_low": repr(low), "bin_high": repr(low + summary.width),
                    "count": summary.counts[index],
                })  # fmt: skip
        self.table("distributions").write(moment_rows)
        self.table("histograms").write(histogram_rows)

    # --- divergence ---------------------------------------------------------------------
    @torch.no_grad()
    def locate_divergence(self) -> dict[str, Any]:
        """Where the run first went non-finite (see the module docstring); one host read."""
        self._fold()
        first = self._first_nonfinite.cpu().tolist() if self.enabled else [NEVER]
        loss_first, grad_first = first[0], first[1:]
        if not grad_first:  # gradients not tracked (fp16)
            grad_first = [NEVER] * len(self.names)
        step = min(first)
        if step >= NEVER:
            return self._state_when_detected()
        epoch = max((e for start, e in self._epoch_starts if start <= step), default=None)
        bad = [name for name, at in zip(self.names, grad_first, strict=True) if at == step]
        found: dict[str, Any] = {
            "step": step, "epoch": epoch,
            "cause": "loss" if loss_first == step else "gradient",
            "layer": bad[-1] if bad else None, "layer_basis": BASIS_GRADIENT if bad else None,
            "nonfinite_parameters": len(bad),
        }  # fmt: skip
        if found["cause"] == "loss":
            grown = self._fastest_growing(step)
            found.update(layer=grown, layer_basis=BASIS_GROWTH if grown else None)
        return found

    def _fastest_growing(self, step: int) -> str | None:
        """The parameter whose gradient norm grew the most from the first step tracked to the
        last finite one before ``step``; None without two steps to compare."""
        if self._initial is None or self._initial.numel() < 2 or step < self._initial_step + 2:
            return None
        initial = self._initial[1:].cpu().tolist()
        last = self._last_finite[1:].cpu().tolist()
        growth = [(now / then, name)
                  for name, then, now in zip(self.names, initial, last, strict=True)
                  if then > 0 and math.isfinite(now)]  # fmt: skip
        return max(growth)[1] if growth else None

    def _state_when_detected(self) -> dict[str, Any]:
        """No per-step record (diagnostics off, or only the epoch's mean loss overflowed):
        the first parameter, in model order, whose weight or gradient is not finite now."""
        for name, param in zip(self.names, self.params, strict=True):
            if not torch.isfinite(param).all():
                return {"cause": "weight", "layer": name, "layer_basis": BASIS_STATE}
            if param.grad is not None and not torch.isfinite(param.grad).all():
                return {"cause": "gradient", "layer": name, "layer_basis": BASIS_STATE}
        return {"cause": "loss", "layer": None, "layer_basis": BASIS_STATE}

    # --- resume -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The fixed histogram grids: a resumed run keeps binning each layer as before."""
        return {
            "grids": [
                [layer, kind, exponent, from_zero]
                for (layer, kind), (exponent, from_zero) in self._grids.items()
            ]
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._grids = {(layer, kind): (int(exponent), bool(from_zero))
                       for layer, kind, exponent, from_zero in state.get("grids", [])}  # fmt: skip


# ----------------------------------------------------------------------------- helpers


@dataclass
class _Values:
    """The finite values of one tensor, flattened, with their range (already on the host)."""

    values: Tensor
    low: float
    high: float
    saturation: str | None


@dataclass
class _Summary:
    """One (layer, tensor) at one point. ``moments`` ([mean, std, zero fraction, saturated
    fraction?]) and ``counts`` are device tensors until :meth:`Diagnostics._write` reads them
    back as lists."""

    layer: str
    kind: str
    low: float
    high: float
    moments: Any = None
    counts: Any = None
    width: float = math.nan
    first_edge: float = math.nan


def _histogram(values: Tensor, bins: int, first_edge: float, width: float) -> Tensor:
    """Counts (int64) of ``values`` in ``bins`` bins of ``width`` from ``first_edge``; the last
    bin includes its upper edge."""
    last_edge = first_edge + bins * width
    if values.device.type not in ("cpu", "cuda"):  # histc has CPU and CUDA kernels only
        values = values.cpu()
    if values.is_cuda and torch.are_deterministic_algorithms_enabled():
        # histc has no deterministic CUDA kernel; sorting and searching is deterministic
        edges = first_edge + width * torch.arange(bins + 1, device=values.device)
        ordered = torch.sort(values).values
        below = torch.searchsorted(ordered, edges[:-1].to(ordered.dtype))
        top = torch.searchsorted(ordered, edges[-1:].to(ordered.dtype), right=True)
        return torch.diff(torch.cat([below, top]))
    counts = torch.zeros(bins, dtype=torch.int64, device=values.device)
    # histc counts in the input's precision: float32 stops adding 1 at 2**24, so count in
    # chunks that small and add the chunks' counts as integers
    for chunk in values.split(2**24):
        counts += torch.histc(chunk, bins=bins, min=first_edge, max=last_edge).long()
    return counts


def _dyadic_grid(low: float, high: float, bins: int, from_zero: bool | None = None):
    """(exponent, from_zero): the smallest power-of-two bin width whose grid covers
    [low, high], starting at 0 when nothing is negative, else centred on 0."""
    if from_zero is None:
        from_zero = low >= 0
    if from_zero:
        needed = high / bins
    else:
        half = bins // 2
        needed = max(-low / half, high / (bins - half))
    if not needed > 0:
        return MIN_EXPONENT, from_zero
    mantissa, exponent = math.frexp(needed)  # needed = mantissa * 2**exponent, 0.5 <= m < 1
    if mantissa == 0.5:
        exponent -= 1
    return max(exponent, MIN_EXPONENT), from_zero


def _weights_of(module: nn.Module) -> Iterator[tuple[str, Tensor]]:
    if isinstance(module, nn.RNNBase):
        # the recurrent matrices carry the initializers' intent (orthogonal, identity)
        recurrent = [w for name, w in module.named_parameters() if name.startswith("weight_hh")]
        inputs = [w for name, w in module.named_parameters() if name.startswith("weight_ih")]
        if recurrent:
            yield "weight", torch.cat([w.detach().reshape(-1) for w in recurrent])
        if inputs:
            yield "weight_ih", torch.cat([w.detach().reshape(-1) for w in inputs])
        return
    weight = getattr(module, "weight", None)  # a parametrized weight (spectral norm) as used
    if isinstance(weight, Tensor):
        yield "weight", weight


def _nonlinearity_type(activation: str | None) -> type[nn.Module] | None:
    """The module class of the model's activation; None when there is none to hook: no
    activation, or ``linear`` (nn.Identity also stands in for an absent norm layer)."""
    if activation in (None, "linear"):
        return None
    from initbench.models.mlp import make_activation

    try:
        return type(make_activation(activation))
    except ValueError:
        return None
