"""AMP-style dynamic loss scaling that unscales the gradients (the naive fp16 baseline)."""

from __future__ import annotations

import torch
from torch.optim import Optimizer

from torchrl_seer.optim.finite_step import all_finite
from torchrl_seer.optim.loss_scaler import LossScaler

__all__ = ["AmpStyleLossScaler"]


class AmpStyleLossScaler(LossScaler):
    r"""The supervised-learning loss scaler, applied to low-precision parameters (a baseline).

    This is ``torch.amp.GradScaler``'s algorithm (which refuses fp16 parameters) reproduced
    for pure low-precision training, i.e. the reference's ``use_grad_scaler_naive``: the loss
    is multiplied by :math:`S`, the gradients are divided by :math:`S` **in their own dtype**
    before the step, a step with a non-finite gradient is skipped and :math:`S` is halved
    (down to ``min_scale``), and :math:`S` doubles after ``growth_interval`` finite steps.
    An update that would leave a non-finite weight (plain Adam's :math:`\epsilon` rounds
    to zero in fp16) is undone and counted in ``nonfinite_updates``: the baseline fails by
    skipping, never by writing NaN into the weights. In fp16 the unscale
    underflows the small gradients, and plain Adam's :math:`g^2` and :math:`\epsilon`
    underflow too: this configuration is shipped so that users can watch it fail.

    Args:
        optimizer (torch.optim.Optimizer): the optimizer to step (typically
            ``torch.optim.Adam``).

    Keyword Args:
        init_scale (float, optional): initial loss scale. Defaults to ``65536.0`` (AMP's).
        growth_interval (int, optional): finite steps before doubling. Defaults to ``2000``.
        min_scale (float, optional): floor of the loss scale. Defaults to ``1.0``.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import AmpStyleLossScaler
        >>> weight = torch.nn.Parameter(torch.ones(2, dtype=torch.float16))
        >>> scaler = AmpStyleLossScaler(torch.optim.Adam([weight], lr=1e-3), init_scale=1024.0)
        >>> scaler.scale(weight.sum()).backward()
        >>> scaler.step()
        True
    """

    def __init__(
        self,
        optimizer: Optimizer,
        *,
        init_scale: float = 65536.0,
        growth_interval: int = 2000,
        min_scale: float = 1.0,
    ) -> None:
        super().__init__(
            optimizer,
            init_scale=init_scale,
            growth_interval=growth_interval,
            min_scale=min_scale,
        )

    def _gradients_finite(self) -> bool:
        return all_finite(self.gradients())

    def _back_off(self, factor: float) -> None:
        self.loss_scale *= factor

    def _prepare_step(self) -> None:
        with torch.no_grad():
            for grad in self.gradients():
                grad.div_(self.loss_scale)

    def _grow(self) -> None:
        self.loss_scale *= 2.0
