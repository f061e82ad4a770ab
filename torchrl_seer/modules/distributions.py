"""Policy distributions: a tanh-Gaussian whose log-probability is safe in fp16, and readers."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from tensordict import TensorDictBase
from tensordict.nn import ProbabilisticTensorDictModule, ProbabilisticTensorDictSequential
from torch import distributions as D
from torch import nn
from torch.distributions.transforms import ComposeTransform, Transform
from torchrl.modules.distributions import TanhNormal
from torchrl.modules.distributions.continuous import SafeTanhTransform
from torchrl.modules.distributions.utils import FasterTransformedDistribution

__all__ = [
    "DISCRETE_DISTRIBUTIONS",
    "StableNormal",
    "StableTanhNormal",
    "ThresholdedTanhTransform",
    "deterministic_action",
    "policy_distribution",
]

#: The distributions whose KL is exact and whose actions are compared by equality.
DISCRETE_DISTRIBUTIONS = (D.Categorical, D.OneHotCategorical)


def deterministic_action(dist: D.Distribution) -> torch.Tensor:
    """The deterministic action of a policy distribution: its deterministic sample, mode or mean.

    Args:
        dist (torch.distributions.Distribution): the policy's distribution.

    Returns:
        The first of ``deterministic_sample``, ``mode`` and ``mean`` that the distribution
        implements.

    Examples:
        >>> import torch
        >>> deterministic_action(torch.distributions.Normal(torch.zeros(2), torch.ones(2)))
        tensor([0., 0.])
    """
    for name in ("deterministic_sample", "mode", "mean"):
        try:
            value = getattr(dist, name)
        except (AttributeError, NotImplementedError):
            continue
        if isinstance(value, torch.Tensor):
            return value
    raise TypeError(f"cannot take a deterministic action from {type(dist).__name__}")


_LOG_SQRT_2PI = 0.5 * math.log(2 * math.pi)


def policy_distribution(policy: nn.Module, observations: TensorDictBase) -> D.Distribution:
    """The action distribution of a probabilistic policy, leaving global sampling modes alone.

    ``get_dist`` of a :class:`~tensordict.nn.ProbabilisticTensorDictSequential` (and so of a
    TorchRL ``ProbabilisticActor``) sets tensordict's process-wide interaction type (TorchRL's
    exploration type) while the network runs, so a call from a background thread can change
    the mode that a policy acting in another thread sees. For a policy made of deterministic
    modules followed by one probabilistic module, this function runs the deterministic part and
    builds the distribution from its output, which touches no global state and gives the same
    distribution. Any other policy is asked for its ``get_dist``.

    Args:
        policy (nn.Module): a probabilistic policy (e.g. TorchRL ``ProbabilisticActor``).
        observations (TensorDictBase): states with the policy's input keys (not modified).

    Returns:
        The policy's action distribution at ``observations``.

    Raises:
        TypeError: if ``policy`` has no ``get_dist``.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import TensorDictModule
        >>> from torchrl.modules import ProbabilisticActor
        >>> net = TensorDictModule(
        ...     torch.nn.Linear(4, 2), in_keys=["observation"], out_keys=["logits"]
        ... )
        >>> actor = ProbabilisticActor(
        ...     net, in_keys=["logits"], distribution_class=torch.distributions.Categorical
        ... )
        >>> states = TensorDict(observation=torch.randn(3, 4), batch_size=[3])
        >>> dist = policy_distribution(actor, states)
        >>> dist.probs.shape
        torch.Size([3, 2])
    """
    observations = observations.clone(False)
    if isinstance(policy, ProbabilisticTensorDictSequential):
        last = policy.module[-1]
        deterministic = policy.module[:-1]
        if isinstance(last, ProbabilisticTensorDictModule) and not any(
            isinstance(module, ProbabilisticTensorDictModule)
            for part in deterministic
            for module in part.modules()
        ):
            for part in deterministic:
                observations = part(observations)
            return last.get_dist(observations)
    get_dist = getattr(policy, "get_dist", None)
    if get_dist is None:
        raise TypeError(
            f"{type(policy).__name__} has no get_dist: expected a probabilistic policy "
            "(e.g. TorchRL ProbabilisticActor)"
        )
    return get_dist(observations)


class StableNormal(D.Normal):
    r"""Normal distribution whose log-probability never forms :math:`\sigma^2` (normal-fix).

    ``torch.distributions.Normal.log_prob`` computes :math:`-(x-\mu)^2 / (2\sigma^2)`. In
    fp16, :math:`\sigma^2` is subnormal below :math:`\sigma \approx 7.8\times10^{-3}` (at
    the policy's lower clamp :math:`\log\sigma = -5`, :math:`\sigma^2 \approx 4.5\times
    10^{-5}`) and :math:`(x-\mu)^2` rounds to zero for :math:`|x-\mu| < 2.4\times10^{-4}`,
    so the ratio loses its digits or becomes ``0/0``. Dividing first keeps everything in
    range:

    .. math::

        \log p(x) = -\tfrac12 \big((x-\mu)/\sigma\big)^2 - \log\sigma - \log\sqrt{2\pi}.

    Args:
        loc (torch.Tensor or float): mean :math:`\mu`.
        scale (torch.Tensor or float): standard deviation :math:`\sigma`.
        validate_args (bool, optional): forwarded to ``torch.distributions.Normal``.

    Examples:
        >>> import torch
        >>> from torchrl_seer.modules import StableNormal
        >>> loc = torch.zeros(1, dtype=torch.float16)
        >>> scale = torch.full((1,), 1e-4, dtype=torch.float16)
        >>> value = torch.full((1,), 5e-5, dtype=torch.float16)
        >>> torch.distributions.Normal(loc, scale).log_prob(value).isnan().item()
        True
        >>> round(StableNormal(loc, scale).log_prob(value).item(), 1)
        8.2
    """

    def __init__(
        self,
        loc: torch.Tensor | float,
        scale: torch.Tensor | float,
        validate_args: bool | None = None,
    ) -> None:
        super().__init__(loc, scale, validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        r"""Log-density of ``value``, computed as :math:`-z^2/2 - \log\sigma - \log\sqrt{2\pi}`.

        Args:
            value (torch.Tensor): points at which to evaluate the density.

        Returns:
            The log-density, broadcast over the batch shape.
        """
        if self._validate_args:
            self._validate_sample(value)
        standardized = (value - self.loc) / self.scale
        return -0.5 * standardized * standardized - self.scale.log() - _LOG_SQRT_2PI


class ThresholdedTanhTransform(SafeTanhTransform):
    r"""Safe tanh transform whose log-det-Jacobian uses a low softplus threshold (softplus-fix).

    .. math::

        \log\left|\frac{d\tanh(u)}{du}\right| = 2\big(\log 2 - u - \operatorname{softplus}(-2u)\big)

    ``softplus(x) = log1p(exp(x))`` is evaluated exactly below ``threshold`` and replaced by
    ``x`` above it. ``exp`` overflows fp16 above :math:`\ln 65504 \approx 11.09`, so the
    PyTorch default threshold of 20 lets inputs in :math:`(11.09, 20]` overflow wherever
    softplus is computed in fp16 (forward and backward); a threshold of 10 cannot (the
    approximation error there is :math:`\log(1+e^{-10}) < 5\times10^{-5}`).

    Args:
        threshold (float, optional): the softplus threshold. Defaults to ``10.0``.
        cache_size (int, optional): forwarded to ``torch.distributions.TanhTransform``.

    Examples:
        >>> import torch
        >>> from torchrl_seer.modules import ThresholdedTanhTransform
        >>> pre_tanh = torch.tensor([-30.0, 0.0, 30.0], dtype=torch.float16)
        >>> transform = ThresholdedTanhTransform()
        >>> log_det = transform.log_abs_det_jacobian(pre_tanh, transform(pre_tanh))
        >>> bool(torch.isfinite(log_det).all())
        True
    """

    def __init__(self, threshold: float = 10.0, cache_size: int = 0) -> None:
        if not threshold > 0:
            raise ValueError(f"threshold must be positive, got {threshold}.")
        super().__init__(cache_size=cache_size)
        self.threshold = threshold

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ThresholdedTanhTransform) and other.threshold == self.threshold

    __hash__ = Transform.__hash__

    def log_abs_det_jacobian(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        r"""Return :math:`2(\log 2 - x - \operatorname{softplus}(-2x))` with the low threshold.

        Args:
            x (torch.Tensor): pre-tanh values.
            y (torch.Tensor): ``tanh(x)`` (unused; kept for the ``Transform`` signature).

        Returns:
            The elementwise log-det-Jacobian.
        """
        return 2.0 * (math.log(2.0) - x - F.softplus(-2.0 * x, threshold=self.threshold))


class StableTanhNormal(TanhNormal):
    """TorchRL's :class:`~torchrl.modules.distributions.TanhNormal` with the two fp16 fixes.

    A drop-in ``distribution_class`` for :class:`~torchrl.modules.ProbabilisticActor`. With
    ``stable_normal=True`` the Gaussian is a :class:`StableNormal` (normal-fix); with
    ``tanh_threshold`` set, the tanh is a :class:`ThresholdedTanhTransform` (softplus-fix).
    Both are exact in fp32 up to rounding, so the class can be used at any precision; with
    both switched off it behaves as :class:`~torchrl.modules.distributions.TanhNormal`.

    Args:
        loc (torch.Tensor): mean of the Gaussian before the tanh.
        scale (torch.Tensor, float or callable): standard deviation of the Gaussian.
        upscale (torch.Tensor or number, optional): see ``TanhNormal``. Defaults to ``5.0``.
        low (torch.Tensor or number, optional): lower action bound. Defaults to ``-1.0``.
        high (torch.Tensor or number, optional): upper action bound. Defaults to ``1.0``.
        event_dims (int, optional): number of event dimensions. Defaults to ``min(1, loc.ndim)``.
        tanh_loc (bool, optional): see ``TanhNormal``. Defaults to ``False``.
        safe_tanh (bool, optional): see ``TanhNormal``. Defaults to ``True``.

    Keyword Args:
        stable_normal (bool, optional): use :class:`StableNormal` (the reference's
            ``stable_normal``). Defaults to ``True``.
        tanh_threshold (float or None, optional): softplus threshold of the tanh
            log-det-Jacobian (the reference's ``tanh_threshold``); ``None`` keeps TorchRL's
            transform. Defaults to ``10.0``.

    Examples:
        >>> import torch
        >>> from torchrl_seer.modules import StableTanhNormal
        >>> loc = torch.zeros(4, 2, dtype=torch.float16)
        >>> scale = torch.full((4, 2), 0.0067, dtype=torch.float16)
        >>> dist = StableTanhNormal(loc, scale)
        >>> action, log_prob = dist.rsample_and_log_prob()
        >>> action.dtype, log_prob.shape, bool(torch.isfinite(log_prob).all())
        (torch.float16, torch.Size([4]), True)
    """

    def __init__(
        self,
        loc: torch.Tensor,
        scale: torch.Tensor | float | Callable[[torch.Tensor], torch.Tensor],
        upscale: torch.Tensor | float = 5.0,
        low: torch.Tensor | float = -1.0,
        high: torch.Tensor | float = 1.0,
        event_dims: int | None = None,
        tanh_loc: bool = False,
        safe_tanh: bool = True,
        *,
        stable_normal: bool = True,
        tanh_threshold: float | None = 10.0,
    ) -> None:
        self.stable_normal = stable_normal
        self.tanh_threshold = tanh_threshold
        super().__init__(
            loc,
            scale,
            upscale=upscale,
            low=low,
            high=high,
            event_dims=event_dims,
            tanh_loc=tanh_loc,
            safe_tanh=safe_tanh,
        )

    def _thresholded(self, transform: Transform) -> Transform:
        """Return ``transform`` with its tanh part replaced by the thresholded tanh."""
        if self.tanh_threshold is None:
            return transform
        if isinstance(transform, ComposeTransform):
            tanh, *rest = transform.parts
            if isinstance(tanh, ThresholdedTanhTransform):
                return transform
            return type(transform)([ThresholdedTanhTransform(self.tanh_threshold), *rest])
        if isinstance(transform, ThresholdedTanhTransform):
            return transform
        return ThresholdedTanhTransform(self.tanh_threshold)

    def update(self, loc: torch.Tensor, scale: torch.Tensor) -> None:
        """Set new Gaussian parameters, building the fixed base distribution and transform.

        Args:
            loc (torch.Tensor): new mean.
            scale (torch.Tensor): new standard deviation.
        """
        self._t: Transform = self._thresholded(self._t)
        super().update(loc, scale)
        if self.stable_normal and not isinstance(self.root_dist, StableNormal):
            base: D.Distribution = StableNormal(self.loc, self.scale)
            if self._event_dims > 0:
                base = D.Independent(base, self._event_dims)
            FasterTransformedDistribution.__init__(self, base, self._t)
