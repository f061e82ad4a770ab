"""Kahan-compensated soft (Polyak) target update for low-precision targets."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from tensordict import TensorDict
from torchrl.objectives import LossModule, SoftUpdate

from torchrl_seer.optim import check_compensation_dtype, compensated_add_, compensated_lerp_

__all__ = ["KahanSoftUpdate"]


class KahanSoftUpdate(SoftUpdate):
    r"""Drop-in for TorchRL's :class:`~torchrl.objectives.SoftUpdate` for fp16/bf16 targets.

    ``SoftUpdate`` does ``target.lerp_(source, tau)``. With :math:`\tau = 0.005` the increment
    :math:`\tau(\theta - \theta')` is mostly below half a unit in the last place of
    :math:`\theta'` in fp16 (11-bit significand) and almost always in bf16 (8-bit), so the
    target freezes. ``KahanSoftUpdate`` (Kahan-momentum, the reference's
    ``soft_update_scale``) keeps a compensation buffer :math:`c` per target and, on each
    :meth:`~torchrl.objectives.TargetNetUpdater.step`, adds the increment with Kahan
    summation on the scaled target :math:`\tilde\theta' = s\,\theta'`:

    .. math::

        u = \tau(s\theta - \tilde\theta'),\quad y = u - c,\quad t = \tilde\theta' + y,\quad
        c = (t - \tilde\theta') - y,\quad \theta' = t / s.

    The scale lifts the increments and the compensation out of fp16's subnormal range.
    **One persistent copy:** the reference keeps :math:`\tilde\theta'` *and*
    :math:`\theta'`; here only :math:`\theta'` (what the target network reads) and
    :math:`c` persist. Each step rebuilds :math:`\tilde\theta' = \operatorname{fl}(s
    \theta')` as a transient (one target tensor at a time) and, after
    :math:`\theta' = \operatorname{fl}(t / s)`, adds :math:`\operatorname{fl}(s\theta') -
    t` to :math:`c` (an exact fp16 difference, by Sterbenz's lemma), so the pair
    :math:`(\operatorname{fl}(s\theta'), c)` represents exactly the sum the two-copy update
    holds. For a power-of-two :math:`s` and normal :math:`\theta'` that correction is zero
    and the update is bit-identical to the two-copy one.

    **Overflow hazard:** :math:`s\theta'` must stay finite, i.e. :math:`|\theta'| <
    \text{finfo.max} / s` (6.55 for fp16 and :math:`s = 10^4`). The updater checks this at
    construction, and before every step (:math:`s\theta`, :math:`s\theta'` and their gap)
    raises with a safe scale **before** writing any target, so the targets never hold a
    non-finite value. ``scale=1``
    (the right choice in bf16, whose range is fp32's) skips the rebuild.

    With ``compensation_dtype=torch.int8`` the compensation takes one byte per weight: each
    step forms :math:`x = \bar\theta' + \tau(\theta - \bar\theta')` in fp32 from the value
    the pair represents, :math:`\bar\theta' = \theta' - c`, and keeps its residual
    in units of :math:`\operatorname{ulp}(\theta')/2^7` (see
    :func:`~torchrl_seer.optim.compensated_add_`). The fp32 arithmetic has no subnormal
    problem, so this mode needs no scale (``scale`` must be 1) and has no overflow hazard
    below the dtype's own range.

    Args:
        loss_module (LossModule): loss with ``target_*_params`` (e.g. ``SACLoss`` or
            :class:`~torchrl_seer.objectives.LowPrecisionSACLoss`).

    Keyword Args:
        eps (float, optional): decay :math:`1-\tau`; exclusive with ``tau``.
        tau (float, optional): Polyak :math:`\tau`; exclusive with ``eps``.
        scale (float, optional): target scale :math:`s`. Defaults to ``1e4``.
        compensation_dtype (torch.dtype, optional): ``None`` for a compensation in the
            target's dtype (the reference), or ``torch.int8`` (fp16/bf16 targets,
            ``scale=1``). Defaults to ``None``.

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
        >>> compact = KahanSoftUpdate(loss, tau=0.005, scale=1.0, compensation_dtype=torch.int8)
        >>> compact.step()
    """

    def __init__(
        self,
        loss_module: LossModule,
        *,
        eps: float | None = None,
        tau: float | None = None,
        scale: float = 1e4,
        compensation_dtype: torch.dtype | None = None,
    ) -> None:
        if not scale > 0:
            raise ValueError(f"scale must be positive, got {scale}.")
        check_compensation_dtype(compensation_dtype)
        if compensation_dtype is not None and scale != 1.0:
            raise ValueError(
                f"an int8 compensation sums in fp32 and needs no target scale: use scale=1.0, "
                f"got {scale}."
            )
        self.scale = float(scale)
        self.compensation_dtype = compensation_dtype
        super().__init__(loss_module, eps=eps, tau=tau)

    def init_(self) -> None:
        """Copy the sources into the targets and allocate the compensation buffers."""
        super().init_()
        with torch.no_grad():
            for target in self._targets.values(True, True):
                check_compensation_dtype(self.compensation_dtype, target.dtype)
            self._compensation = self._targets.apply(
                lambda t: torch.zeros_like(t.data, dtype=self.compensation_dtype or t.dtype)
            )
        self._check_finite()

    def _check_finite(self) -> None:
        for target in self._targets.values(True, True):
            largest = target.data.abs().amax()
            if torch.isfinite(largest * self.scale):
                continue
            dtype = target.dtype
            raise OverflowError(
                f"KahanSoftUpdate: the scaled target overflowed {dtype} (scale={self.scale:g}, "
                f"largest |target weight|={float(largest):.4g}, largest finite "
                f"{torch.finfo(dtype).max:g}). Use scale < "
                f"{torch.finfo(dtype).max / float(largest):.4g}."
            )

    @torch.no_grad()
    def step(self) -> None:
        """Apply one Kahan-compensated soft update to every target.

        Raises:
            OverflowError: if the step would overflow the targets' dtype (a scaled weight, or
                the gap between source and target, beyond its range); it is raised before
                any target is written, so the targets stay finite.
        """
        if not self.initialized:
            raise RuntimeError(f"{type(self).__name__} must be initialized before step().")
        tau = 1.0 - self.eps
        leaves = []
        for key, sources in self._sources.items():
            targets = self._targets.get(f"target_{key}")
            compensations = self._compensation.get(f"target_{key}")
            for leaf in targets.keys(True, True):
                leaves.append(
                    (sources.get(leaf).data, targets.get(leaf).data, compensations.get(leaf))
                )
        if self.compensation_dtype is not None:
            # a convex combination formed in fp32: within the dtype's range
            for source, target, compensation in leaves:
                # lerp from the represented value, not from its 16-bit part
                compensated_lerp_(target, compensation, source, tau)
            return
        # s θ - s θ' is finite only if s θ, s θ' and their gap are: check every leaf first
        gaps: list[tuple[torch.Tensor | None, torch.Tensor]] = []
        for source, target, _ in leaves:
            if self.scale == 1.0:
                gaps.append((None, torch.sub(source, target)))
            else:
                scaled = torch.mul(target, self.scale)
                gaps.append((scaled, torch.mul(source, self.scale).sub_(scaled)))
        if not bool(torch.stack([torch.isfinite(gap).all() for _, gap in gaps]).all()):
            self._raise_overflow([(source, target) for source, target, _ in leaves])
        for (_, target, compensation), (scaled_target, gap) in zip(leaves, gaps, strict=True):
            self._kahan_step(target, compensation, scaled_target, gap.mul_(tau))

    def _raise_overflow(self, pairs: list[tuple[torch.Tensor, torch.Tensor]]) -> None:
        largest = max(
            float(torch.maximum(source.abs().amax(), target.abs().amax()))
            for source, target in pairs
        )
        dtype = pairs[0][1].dtype
        limit = torch.finfo(dtype).max
        raise OverflowError(
            f"KahanSoftUpdate: this step would overflow {dtype} (scale={self.scale:g}, "
            f"largest |weight| of source or target={largest:.4g}, largest finite "
            f"{limit:g}); no target was updated. Use scale < {limit / (2 * largest):.4g}."
        )

    def _kahan_step(
        self,
        target: torch.Tensor,
        compensation: torch.Tensor,
        scaled: torch.Tensor | None,
        increment: torch.Tensor,
    ) -> None:
        scratch = torch.empty_like(target)
        if scaled is None:  # scale 1
            compensated_add_(target, compensation, increment, scratch=scratch)
            return
        # transients: the rebuilt scaled target, the increment and the Kahan scratch
        compensated_add_(scaled, compensation, increment, scratch=scratch)
        torch.div(scaled, self.scale, out=target)
        # (fl(s * target), c) must represent what (scaled, c) does: add the exact difference
        compensation.add_(torch.mul(target, self.scale, out=increment).sub_(scaled))

    def state_dict(self) -> dict[str, Any]:
        """Return the updater progress with the compensation buffers.

        Returns:
            The :class:`~torchrl.objectives.TargetNetUpdater` state plus ``"compensation"``
            (a nested dict of tensors; the targets themselves belong to the loss module).
        """
        state = super().state_dict()
        state["compensation"] = self._compensation.to_dict()
        return state

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state produced by :meth:`state_dict`.

        Args:
            state_dict (mapping): the saved updater state.
        """
        super().load_state_dict(state_dict)
        self._compensation.update_(TensorDict(state_dict["compensation"]))
