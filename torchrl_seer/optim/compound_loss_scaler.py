"""Compound loss scaling: a loss scale that is never unscaled (Björck et al., 2021)."""

from __future__ import annotations

import math

import torch
from torch.optim import Optimizer

from torchrl_seer.optim.finite_step import all_finite
from torchrl_seer.optim.loss_scaler import LossScaler

__all__ = ["CompoundLossScaler"]


class CompoundLossScaler(LossScaler):
    r"""Loss scaling that never unscales, for pure low-precision training with ``HAdam``.

    AMP-style scalers multiply the loss by :math:`S` and divide the gradients by :math:`S`
    before the step; in fp16 that division underflows the small gradients it was meant to
    rescue. The compound scaler never unscales. hAdam's moments :math:`m` and :math:`s` are
    linear in the gradient, hence in :math:`S`, and the scaler keeps :math:`\epsilon`
    proportional to :math:`S` too, so the update :math:`m / (s + \epsilon)` does not depend
    on :math:`S` at all. The rules (``use_grad_scaler`` in the reference):

    * :meth:`scale` returns :math:`S \cdot L`; differentiate that.
    * :meth:`step`: if any element of :math:`1.1 \cdot (\beta_1/\sqrt{\beta_2}) \cdot g` is
      non-finite, skip the optimizer step and halve :math:`S`, :math:`m`, :math:`s` and
      :math:`\epsilon` (:math:`\epsilon` floored at ``min_eps``, :math:`S` at ``min_scale``:
      at the floor the step is skipped and nothing is rescaled, so training resumes as soon
      as the gradients are finite again). An update that would leave a non-finite weight is
      undone and skipped too (see :class:`~torchrl_seer.optim.LossScaler`).
    * After ``growth_interval`` consecutive finite steps, if every element of
      :math:`1.1 \cdot 2 m` and :math:`1.1 \cdot 2 s` is finite, double :math:`S`, :math:`m`,
      :math:`s` and :math:`\epsilon`.

    Use one scaler per optimizer (the reference has one each for the critic, the actor and
    the temperature). :math:`S` and :math:`\epsilon` are Python floats (fp32 or wider).

    Args:
        optimizer (torch.optim.Optimizer): the optimizer whose gradients are scaled. It must
            expose ``linear_moments()`` (see :meth:`HAdam.linear_moments
            <torchrl_seer.optim.HAdam.linear_moments>`): the state tensors that are linear in
            the gradient. Its ``eps`` is read as the already-scaled :math:`\epsilon` (the
            reference uses ``1e-4`` with :math:`S = 10^4`).

    Keyword Args:
        init_scale (float, optional): initial loss scale :math:`S`. Defaults to ``1e4``.
        growth_interval (int, optional): number of consecutive finite steps before trying to
            double the scale. Defaults to ``10_000``.
        min_eps (float, optional): floor of :math:`\epsilon` when halving. Defaults to
            ``1e-7``.
        headroom (float, optional): safety factor of the finiteness checks. Defaults to
            ``1.1``.
        min_scale (float, optional): floor of :math:`S`; at the floor a non-finite step is
            skipped without rescaling :math:`m`, :math:`s` and :math:`\epsilon`.
            Defaults to ``1.0``.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import CompoundLossScaler, HAdam
        >>> weight = torch.nn.Parameter(torch.ones(2, dtype=torch.float16))
        >>> optimizer = HAdam([weight], lr=1e-3, eps=1e-4)
        >>> scaler = CompoundLossScaler(optimizer, init_scale=1e4)
        >>> scaler.scale((weight * 3.0).sum()).backward()
        >>> scaler.step()
        True
        >>> weight.grad = torch.full_like(weight, float("inf"))
        >>> scaler.step()  # skipped: S, m, s and eps are halved
        False
        >>> scaler.loss_scale, optimizer.param_groups[0]["eps"]
        (5000.0, 5e-05)
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        init_scale: float = 1e4,
        growth_interval: int = 10_000,
        min_eps: float = 1e-7,
        headroom: float = 1.1,
        min_scale: float = 1.0,
    ) -> None:
        if not callable(getattr(optimizer, "linear_moments", None)):
            raise TypeError(
                "CompoundLossScaler needs an optimizer whose moments are linear in the loss "
                "scale and listed by a `linear_moments()` method, such as "
                f"torchrl_seer.optim.HAdam; got {type(optimizer).__name__}. (Adam's second "
                "moment grows with the square of the scale; use an unscaling scaler with it.)"
            )
        super().__init__(
            optimizer,
            init_scale=init_scale,
            growth_interval=growth_interval,
            min_scale=min_scale,
        )
        self.min_eps = min_eps
        self.headroom = headroom

    def _rescale(self, factor: float) -> None:
        self.loss_scale *= factor
        with torch.no_grad():
            for moment in self.optimizer.linear_moments():  # type: ignore[attr-defined]
                moment.mul_(factor)
        for group in self.optimizer.param_groups:
            group["eps"] = max(group["eps"] * factor, self.min_eps)

    def _gradients_finite(self) -> bool:
        return all(
            all_finite(
                (p.grad for p in group["params"] if p.grad is not None),
                factor=self.headroom * group["betas"][0] / math.sqrt(group["betas"][1]),
            )
            for group in self.optimizer.param_groups
        )

    def _back_off(self, factor: float) -> None:
        if factor < 1.0:
            self._rescale(factor)

    def _grow(self) -> None:
        moments = self.optimizer.linear_moments()  # type: ignore[attr-defined]
        if all_finite(moments, factor=2.0 * self.headroom):
            self._rescale(2.0)
