"""Kahan-compensated soft (Polyak) target update for low-precision targets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torchrl.objectives import LossModule, SoftUpdate

from torchrl_seer.optim import all_finite

__all__ = ["KahanSoftUpdate"]


class KahanSoftUpdate(SoftUpdate):
    r"""Drop-in for TorchRL's :class:`~torchrl.objectives.SoftUpdate` for fp16/bf16 targets.

    ``SoftUpdate`` does ``target.lerp_(source, tau)``. With :math:`\tau = 0.005` the increment
    :math:`\tau(\theta - \theta')` is mostly below half a unit in the last place of
    :math:`\theta'` in fp16 (11-bit significand) and almost always in bf16 (8-bit), so the
    target freezes. ``KahanSoftUpdate`` (Kahan-momentum, the reference's
    ``soft_update_scale``) stores the target scaled, :math:`\tilde\theta' = s\,\theta'`,
    with a compensation buffer :math:`c`, both in the target's dtype, and on each
    :meth:`~torchrl.objectives.TargetNetUpdater.step` computes

    .. math::

        u = \tau(s\theta - \tilde\theta'),\quad y = u - c,\quad t = \tilde\theta' + y,\quad
        c = (t - \tilde\theta') - y,\quad \tilde\theta' = t,\quad \theta' = \tilde\theta' / s.

    The scale lifts the increments and the compensation out of fp16's subnormal range.
    **Overflow hazard:** :math:`s\theta` must stay finite, i.e. :math:`|\theta| <
    \text{finfo.max} / s` (6.55 for fp16 and :math:`s = 10^4`). The updater checks this at
    construction and after every step and raises with the largest safe scale. With
    ``scale=1`` (the right choice in bf16, whose range is fp32's) no scaled copy is
    allocated: the target itself is the Kahan sum and only :math:`c` is extra memory.

    Args:
        loss_module (LossModule): loss with ``target_*_params`` (e.g. ``SACLoss`` or
            :class:`~torchrl_seer.objectives.LowPrecisionSACLoss`).

    Keyword Args:
        eps (float, optional): decay :math:`1-\tau`; exclusive with ``tau``.
        tau (float, optional): Polyak :math:`\tau`; exclusive with ``eps``.
        scale (float, optional): target scale :math:`s`. Defaults to ``1e4``.

    Examples:
        >>> import torch
        >>> from torchrl.modules import MLP, ValueOperator
        >>> from torchrl.objectives import DQNLoss
        >>> from torchrl_seer.objectives import KahanSoftUpdate
        >>> net = MLP(in_features=3, out_features=2, num_cells=[8]).to(torch.float16)
        >>> value = ValueOperator(net, in_keys=["observation"], out_keys=["action_value"])
        >>> loss = DQNLoss(value, action_space="one-hot", delay_value=True)
        >>> updater = KahanSoftUpdate(loss, tau=0.005, scale=1e3)
        >>> updater.step()
        >>> loss.target_value_network_params.dtype
        torch.float16
    """

    def __init__(
        self,
        loss_module: LossModule,
        *,
        eps: float | None = None,
        tau: float | None = None,
        scale: float = 1e4,
    ) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}.")
        self.scale = float(scale)
        super().__init__(loss_module, eps=eps, tau=tau)

    def init_(self) -> None:
        """Copy the sources into the targets and allocate the scaled copy and compensation."""
        super().init_()
        with torch.no_grad():
            if self.scale == 1.0:
                self._scaled_targets = self._targets
            else:
                self._scaled_targets = self._targets.apply(lambda t: t.data * self.scale)
            self._compensation = self._targets.apply(lambda t: torch.zeros_like(t.data))
        self._check_finite()

    def _check_finite(self) -> None:
        if not all_finite(self._scaled_targets.values(True, True)):
            largest = max(float(t.abs().max()) for t in self._targets.values(True, True))
            dtype = next(iter(self._targets.values(True, True))).dtype
            raise OverflowError(
                f"KahanSoftUpdate: the scaled target overflowed {dtype} (scale={self.scale:g}, "
                f"largest |target weight|={largest:.4g}, largest finite "
                f"{torch.finfo(dtype).max:g}). Use scale < {torch.finfo(dtype).max / largest:.4g}."
            )

    @torch.no_grad()
    def step(self) -> None:
        """Apply one Kahan-compensated soft update to every target.

        Raises:
            OverflowError: if a scaled target weight is no longer finite.
        """
        if not self.initialized:
            raise RuntimeError(f"{type(self).__name__} must be initialized before step().")
        tau = 1.0 - self.eps
        for key, source in self._sources.items():
            target_key = f"target_{key}"
            target = self._targets.get(target_key)
            scaled = self._scaled_targets.get(target_key)
            compensation = self._compensation.get(target_key)
            self._kahan_step(source.data, target, scaled, compensation, tau)
        self._check_finite()

    def _kahan_step(
        self,
        source: TensorDictBase,
        target: TensorDictBase,
        scaled: TensorDictBase,
        compensation: TensorDictBase,
        tau: float,
    ) -> None:
        corrected = (source * self.scale - scaled) * tau - compensation
        total = scaled + corrected
        compensation.copy_((total - scaled) - corrected)
        scaled.copy_(total)
        if scaled is not target:
            target.data.copy_(scaled / self.scale)

    def state_dict(self) -> dict[str, Any]:
        """Return the updater progress with the compensation (and scaled-target) buffers.

        Returns:
            The :class:`~torchrl.objectives.TargetNetUpdater` state plus ``"compensation"``
            and, when ``scale != 1``, ``"scaled_targets"`` (nested dicts of tensors).
        """
        state = super().state_dict()
        state["compensation"] = self._compensation.to_dict()
        if self._scaled_targets is not self._targets:
            state["scaled_targets"] = self._scaled_targets.to_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`.

        Args:
            state_dict (mapping): the saved updater state.
        """
        super().load_state_dict(state_dict)
        self._compensation.update_(TensorDict(state_dict["compensation"]))
        if "scaled_targets" in state_dict:
            self._scaled_targets.update_(TensorDict(state_dict["scaled_targets"]))
