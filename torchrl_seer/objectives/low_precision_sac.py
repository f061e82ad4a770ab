"""SAC whose networks, targets, temperature and TD target all live in fp16 or bf16."""

from __future__ import annotations

import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from tensordict import NestedKey, TensorDictBase
from tensordict.nn import (
    ProbabilisticTensorDictModule,
    ProbabilisticTensorDictSequential,
    TensorDictModule,
    dispatch,
)
from torch import nn
from torch.optim import Adam, Optimizer
from torchrl.modules.distributions import TanhNormal
from torchrl.objectives import SACLoss, SoftUpdate, ValueEstimators

from torchrl_seer.modules.distributions import StableTanhNormal
from torchrl_seer.objectives.kahan_soft_update import KahanSoftUpdate
from torchrl_seer.optim import (
    NONFINITE_INPUTS_KEY,
    AmpStyleLossScaler,
    CompoundLossScaler,
    HAdam,
    LossScaler,
    LossScalingStepper,
    check_compensation_dtype,
    has_native_kernels,
)

__all__ = ["PRECISION_PRESETS", "LowPrecisionSACLoss"]

_LOW_PRECISION_DTYPES = (torch.float16, torch.bfloat16, torch.float32)

#: Switches of :class:`LowPrecisionSACLoss` for each named precision.
#: ``fp16`` is the paper's full method (all six fixes). ``bf16`` keeps what matters for an
#: 8-bit mantissa with fp32's range: hAdam, the two distribution fixes (free), Kahan target
#: updates without scaling and Kahan-compensated updates of *every* network, and no loss
#: scaling (gradients cannot underflow in bf16). ``fp16-lean`` and ``bf16-lean`` fit the
#: learner state in 0.55 of fp32's: the Kahan compensations are int8
#: (:func:`~torchrl_seer.optim.compensated_add_`), the target keeps its compensation (the
#: critical one at :math:`\tau = 0.005`; no scaled copy, no overflow hazard) and log-alpha
#: its own, while the critic and actor updates are rounded stochastically (exact on average
#: at no memory cost; one more int8 buffer would not fit). ``naive-fp16`` is the
#: supervised-learning recipe that fails; ``fp32`` is TorchRL's SAC (all switches off).
PRECISION_PRESETS: dict[str, dict[str, Any]] = {
    "fp32": {
        "dtype": torch.float32,
        "use_num_adam": False,
        "use_grad_scaler": False,
        "stable_normal": False,
        "tanh_threshold": None,
        "soft_update_scale": None,
        "crit_kahan": False,
        "alpha_kahan": False,
    },
    "fp16": {
        "dtype": torch.float16,
        "use_num_adam": True,
        "use_grad_scaler": True,
        "stable_normal": True,
        "tanh_threshold": 10.0,
        "soft_update_scale": 1e4,
        "crit_kahan": True,
        "alpha_kahan": True,
    },
    "bf16": {
        "dtype": torch.bfloat16,
        "use_num_adam": True,
        "use_grad_scaler": False,
        "stable_normal": True,
        "tanh_threshold": 10.0,
        "soft_update_scale": 1.0,
        "crit_kahan": True,
        "alpha_kahan": True,
        "actor_kahan": True,
        "stochastic_moment_decay": True,
    },
    "fp16-lean": {
        "dtype": torch.float16,
        "use_num_adam": True,
        "use_grad_scaler": True,
        "stable_normal": True,
        "tanh_threshold": 10.0,
        "soft_update_scale": 1.0,
        "crit_kahan": False,
        "alpha_kahan": True,
        "compensation_dtype": torch.int8,
        "stochastic_rounding": True,
    },
    "bf16-lean": {
        "dtype": torch.bfloat16,
        "use_num_adam": True,
        "use_grad_scaler": False,
        "stable_normal": True,
        "tanh_threshold": 10.0,
        "soft_update_scale": 1.0,
        "crit_kahan": False,
        "alpha_kahan": True,
        "actor_kahan": False,
        "compensation_dtype": torch.int8,
        "stochastic_rounding": True,
        "stochastic_moment_decay": True,
    },
    "naive-fp16": {
        "dtype": torch.float16,
        "use_num_adam": False,
        "use_grad_scaler": False,
        "use_grad_scaler_naive": True,
        "stable_normal": False,
        "tanh_threshold": None,
        "soft_update_scale": None,
        "crit_kahan": False,
        "alpha_kahan": False,
    },
}


class LowPrecisionSACLoss(SACLoss):
    r"""TorchRL's :class:`~torchrl.objectives.SACLoss` run entirely in fp16 or bf16.

    Implements Björck et al., "Low-Precision Reinforcement Learning: Running Soft
    Actor-Critic in Half Precision" (ICML 2021): no fp32 master weights. The actor, the
    stacked critic copies (``qvalue_network_params``) and their targets are cast to
    ``dtype``; log :math:`\alpha` is held in ``dtype`` too (``SACLoss`` keeps an fp32
    parameter); every floating input read from the batch (observations, actions, rewards) is
    cast to ``dtype`` on entry, so the replay buffer stays fp32 and the TD target
    :math:`r + \gamma (1-d) V'` is built in ``dtype``. The loss returns the usual
    ``loss_actor``, ``loss_qvalue``, ``loss_alpha``, ``alpha`` and ``entropy`` entries, in
    ``dtype``.

    The six numerical fixes are switches named after the reference's config keys:

    * ``use_num_adam`` — :class:`~torchrl_seer.optim.HAdam` (never forms :math:`g^2`);
    * ``use_grad_scaler`` — :class:`~torchrl_seer.optim.CompoundLossScaler`, one per loss;
    * ``stable_normal`` — :class:`~torchrl_seer.modules.StableNormal` log-probability;
    * ``tanh_threshold`` — softplus threshold of the tanh log-det
      (:class:`~torchrl_seer.modules.ThresholdedTanhTransform`);
    * ``soft_update_scale`` — :class:`~torchrl_seer.objectives.KahanSoftUpdate` with that
      target scale;
    * ``crit_kahan`` / ``alpha_kahan`` (and ``actor_kahan``, used for bf16) — Kahan-
      compensated parameter updates (``HAdam(kahan=True)``).

    The two distribution fixes act at construction: the actor's ``TanhNormal`` is swapped
    for :class:`~torchrl_seer.modules.StableTanhNormal` (in place, so a collector sharing
    the actor samples from the same distribution). The other four configure the objects
    returned by :meth:`make_optimization_stepper` and :meth:`make_target_updater`.
    ``use_grad_scaler_naive`` selects the failing baseline (plain ``Adam`` with an
    unscaling :class:`~torchrl_seer.optim.AmpStyleLossScaler`). ``compensation_dtype`` and
    ``stochastic_rounding`` trade compensation memory for precision (int8 Kahan residuals,
    stateless unbiased rounding). :data:`PRECISION_PRESETS` holds the fp16, bf16,
    fp16-lean, bf16-lean (learner state at 0.55 of fp32's), naive-fp16 and fp32
    configurations.

    **Faults.** Every floating input is range-checked when it is cast down: the loss output
    counts the values that are NaN, infinite or beyond ``dtype``'s range (``65504`` in fp16)
    in ``num_nonfinite_inputs``, and the stepper of :meth:`make_optimization_stepper` skips
    such an update whole and counts it (``skipped_updates``), rather than training toward an
    infinite target; rescale large rewards before the loss if they are expected. In every
    configuration (bf16 and fp32 included, with or without a loss scaler) a non-finite loss
    term or gradient skips that optimizer's step, and an update that would leave a
    non-finite weight is undone, so no parameter ever holds a non-finite value; see
    :class:`~torchrl_seer.optim.LossScalingStepper` for the counters.

    .. note:: The networks are cast **in place** (``module.to(dtype)``). A policy used by a
       collector must then cast its fp32 observations to ``dtype`` (and its actions back);
       see the recipe ``examples/lowprec_sac_dmc.py``.

    Args:
        actor_network (ProbabilisticTensorDictSequential): the stochastic actor; with either
            distribution fix on, its distribution must be a ``TanhNormal``.
        qvalue_network (TensorDictModule or list of TensorDictModule): the Q-network(s).
        value_network (TensorDictModule, optional): V-network (SAC v1). Defaults to ``None``.

    Keyword Args:
        dtype (torch.dtype, optional): ``torch.float16`` or ``torch.bfloat16``
            (``torch.float32`` gives an fp32 reference). Defaults to ``torch.float16``.
        use_num_adam (bool, optional): hAdam instead of Adam. Defaults to ``True``.
        use_grad_scaler (bool, optional): compound loss scaling. Defaults to ``True``.
        use_grad_scaler_naive (bool, optional): AMP-style unscaling scaler (baseline).
            Defaults to ``False``.
        stable_normal (bool, optional): normal-fix. Defaults to ``True``.
        tanh_threshold (float or None, optional): softplus-fix threshold, ``None`` for off.
            Defaults to ``10.0``.
        soft_update_scale (float or None, optional): Kahan-momentum target scale :math:`s`,
            ``None`` for TorchRL's ``SoftUpdate``. Defaults to ``1e4``.
        crit_kahan (bool, optional): Kahan-compensated critic updates. Defaults to ``True``.
        alpha_kahan (bool, optional): Kahan-compensated log-alpha updates. Defaults to ``True``.
        actor_kahan (bool, optional): Kahan-compensated actor updates (not in the reference;
            recommended in bf16). Defaults to ``False``.
        compensation_dtype (torch.dtype, optional): dtype of every Kahan compensation
            buffer (optimizers and target updater): ``None`` for the network dtype (the
            reference), ``torch.int8`` for the compact one-byte residual of
            :func:`~torchrl_seer.optim.compensated_add_` (needs ``soft_update_scale`` 1 or
            ``None``). Defaults to ``None``.
        stochastic_rounding (bool, optional): round the updates of the networks without
            Kahan compensation stochastically (:func:`~torchrl_seer.optim.stochastic_add_`;
            exact on average, no extra memory; not in the reference). Defaults to ``False``.
        stochastic_moment_decay (bool, optional): decay hAdam's second moment with
            stochastic rounding (``HAdam(stochastic_moment_decay=True)``): in bf16 it cannot
            decay otherwise (not in the reference; on in the bf16 presets). Defaults to
            ``False``.
        init_scale (float, optional): initial loss scale :math:`S` of the scalers.
            Defaults to ``1e4``.
        adam_eps (float, optional): optimizer :math:`\epsilon`; defaults to ``1e-8``, times
            ``init_scale`` when ``use_grad_scaler`` (the reference's ``1e-4``).
        **sac_kwargs: every other :class:`~torchrl.objectives.SACLoss` keyword argument
            (``num_qvalue_nets``, ``alpha_init``, ``fixed_alpha``, ``target_entropy``...).

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from tensordict.nn import NormalParamExtractor, TensorDictModule
        >>> from torchrl.data import Bounded
        >>> from torchrl.modules import MLP, ProbabilisticActor, TanhNormal, ValueOperator
        >>> from torchrl_seer.objectives import LowPrecisionSACLoss
        >>> spec = Bounded(-1.0, 1.0, (2,))
        >>> actor = ProbabilisticActor(
        ...     TensorDictModule(
        ...         torch.nn.Sequential(MLP(in_features=3, out_features=4, num_cells=[16]),
        ...                             NormalParamExtractor()),
        ...         in_keys=["observation"], out_keys=["loc", "scale"]),
        ...     in_keys=["loc", "scale"], spec=spec, distribution_class=TanhNormal)
        >>> qvalue = ValueOperator(MLP(in_features=5, out_features=1, num_cells=[16]),
        ...                        in_keys=["observation", "action"])
        >>> loss = LowPrecisionSACLoss(actor, qvalue, dtype=torch.bfloat16, alpha_init=0.1)
        >>> data = TensorDict({
        ...     "observation": torch.randn(8, 3), "action": spec.rand((8,)),
        ...     ("next", "observation"): torch.randn(8, 3),
        ...     ("next", "reward"): torch.randn(8, 1),
        ...     ("next", "done"): torch.zeros(8, 1, dtype=torch.bool),
        ...     ("next", "terminated"): torch.zeros(8, 1, dtype=torch.bool)}, [8])
        >>> losses = loss(data)
        >>> losses["loss_qvalue"].dtype, losses["loss_actor"].dtype, data["value_target"].dtype
        (torch.bfloat16, torch.bfloat16, torch.bfloat16)
        >>> stepper = loss.make_optimization_stepper(lr=1e-4)
        >>> metrics = stepper.optimize(losses)
        >>> updater = loss.make_target_updater(tau=0.005)
        >>> updater.step()
    """

    @dataclass
    class _AcceptedKeys(SACLoss._AcceptedKeys):
        r"""Maintains default values for all configurable tensordict keys.

        Extends :class:`~torchrl.objectives.SACLoss`'s keys (``action``, ``value``,
        ``state_action_value``, ``log_prob``, ``priority``, ``reward``, ``done``,
        ``terminated``, ``priority_weight``) with:

        Attributes:
            value_target (NestedKey): where the low-precision TD target
                :math:`r + \gamma (1-d) V'` is written into the input tensordict (detached,
                for diagnostics). Defaults to ``"value_target"``.
        """

        value_target: NestedKey = "value_target"

    default_keys = _AcceptedKeys
    tensor_keys: _AcceptedKeys

    def __init__(
        self,
        actor_network: ProbabilisticTensorDictSequential,
        qvalue_network: TensorDictModule | list[TensorDictModule],
        value_network: TensorDictModule | None = None,
        *,
        dtype: torch.dtype = torch.float16,
        use_num_adam: bool = True,
        use_grad_scaler: bool = True,
        use_grad_scaler_naive: bool = False,
        stable_normal: bool = True,
        tanh_threshold: float | None = 10.0,
        soft_update_scale: float | None = 1e4,
        crit_kahan: bool = True,
        alpha_kahan: bool = True,
        actor_kahan: bool = False,
        compensation_dtype: torch.dtype | None = None,
        stochastic_rounding: bool = False,
        stochastic_moment_decay: bool = False,
        init_scale: float = 1e4,
        adam_eps: float | None = None,
        **sac_kwargs: Any,
    ) -> None:
        if dtype not in _LOW_PRECISION_DTYPES:
            raise ValueError(
                f"dtype must be one of {_LOW_PRECISION_DTYPES} (float32 is the reference), "
                f"got {dtype}."
            )
        if use_grad_scaler and use_grad_scaler_naive:
            raise ValueError("use_grad_scaler and use_grad_scaler_naive are exclusive.")
        if use_grad_scaler and not use_num_adam:
            raise ValueError(
                "use_grad_scaler (compound loss scaling) needs use_num_adam=True: Adam's "
                "second moment grows with the square of the loss scale."
            )
        if (crit_kahan or alpha_kahan or actor_kahan) and not use_num_adam:
            raise ValueError("Kahan-compensated updates are an HAdam option: set use_num_adam.")
        check_compensation_dtype(compensation_dtype, dtype)
        for name, enabled in (
            ("stochastic_rounding", stochastic_rounding),
            ("stochastic_moment_decay", stochastic_moment_decay),
        ):
            if enabled and (not use_num_adam or dtype == torch.float32):
                raise ValueError(
                    f"{name} is an HAdam option for fp16/bf16 networks: set use_num_adam=True "
                    f"and a 16-bit dtype (got use_num_adam={use_num_adam}, dtype={dtype})."
                )
        if compensation_dtype is not None and soft_update_scale not in (None, 1.0):
            raise ValueError(
                "an int8 compensation sums in fp32 and needs no target scale: set "
                f"soft_update_scale=1.0 (or None), got {soft_update_scale}."
            )
        self.dtype = dtype
        self.use_num_adam = use_num_adam
        self.use_grad_scaler = use_grad_scaler
        self.use_grad_scaler_naive = use_grad_scaler_naive
        self.stable_normal = stable_normal
        self.tanh_threshold = tanh_threshold
        self.soft_update_scale = soft_update_scale
        self.crit_kahan = crit_kahan
        self.alpha_kahan = alpha_kahan
        self.actor_kahan = actor_kahan
        self.compensation_dtype = compensation_dtype
        self.stochastic_rounding = stochastic_rounding
        self.stochastic_moment_decay = stochastic_moment_decay
        self.init_scale = init_scale
        if adam_eps is None:
            adam_eps = 1e-8 * init_scale if use_grad_scaler else 1e-8
        self.adam_eps = adam_eps

        if stable_normal or tanh_threshold is not None:
            _use_stable_tanh_normal(
                actor_network, stable_normal=stable_normal, tanh_threshold=tanh_threshold
            )
        networks = qvalue_network if isinstance(qvalue_network, list) else [qvalue_network]
        for network in [actor_network, *networks, value_network]:
            if network is not None:
                network.to(dtype)
        super().__init__(actor_network, qvalue_network, value_network, **sac_kwargs)
        _warn_if_cpu_lacks_kernels(dtype, self.parameters())

        with torch.no_grad():
            log_alpha = self.log_alpha.detach().to(dtype)
            for name in ("alpha_init", "min_log_alpha", "max_log_alpha"):
                buffer = getattr(self, name, None)
                if isinstance(buffer, torch.Tensor):
                    setattr(self, name, buffer.to(dtype))
        del self.log_alpha
        if self.fixed_alpha:
            self.register_buffer("log_alpha", log_alpha)
        else:
            self.register_parameter("log_alpha", nn.Parameter(log_alpha))

    @dispatch
    def forward(self, tensordict: TensorDictBase) -> TensorDictBase:
        """Cast the batch to ``dtype``, compute the SAC losses, write back priority and target.

        Args:
            tensordict (TensorDictBase): a batch with the keys listed in ``in_keys``, in any
                floating dtype (fp32 replay buffers are fine).

        Returns:
            A tensordict with ``loss_actor``, ``loss_qvalue``, ``loss_alpha``, ``alpha`` and
            ``entropy`` (and ``loss_value`` for SAC v1), in ``dtype``, and
            ``num_nonfinite_inputs``: how many floating batch values are NaN, infinite or
            beyond ``dtype``'s range once cast (a reward of 1e6 in fp16). The
            :class:`~torchrl_seer.optim.LossScalingStepper` skips an update whose count is
            positive. The input ``tensordict`` receives the priority (``td_error``, as
            float32) and the TD target (``value_target``, in ``dtype``; SAC v2).
        """
        low_precision = tensordict.copy()
        num_nonfinite = torch.zeros((), dtype=torch.int64)
        for key in self.in_keys:
            value = low_precision.get(key, None)
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                value = value.to(self.dtype)
                # NaN and infinities, and finite values beyond the dtype (which became inf)
                num_nonfinite = num_nonfinite + (~torch.isfinite(value)).sum().cpu()
                low_precision.set(key, value)
        out = super().forward(low_precision)
        out.set(NONFINITE_INPUTS_KEY, num_nonfinite)
        # the priority goes back in fp32 (what prioritized samplers store), the target as is
        tensordict.set(
            self.tensor_keys.priority, low_precision.get(self.tensor_keys.priority).float()
        )
        target = low_precision.get(self.tensor_keys.value_target, None)
        if target is not None:
            tensordict.set(self.tensor_keys.value_target, target)
        return out

    def make_value_estimator(
        self, value_type: ValueEstimators | None = None, **hyperparams: Any
    ) -> LowPrecisionSACLoss:
        r"""Build the value estimator (TD0 by default) with its discount held in ``dtype``.

        A discount buffer in fp32 would promote :math:`\gamma (1-d) V'` to fp32; the
        estimator is cast so that the TD target stays in ``dtype``.

        Args:
            value_type (ValueEstimators, optional): the estimator type. Defaults to TD0.
            **hyperparams: forwarded to :meth:`SACLoss.make_value_estimator
                <torchrl.objectives.SACLoss.make_value_estimator>` (e.g. ``gamma``).

        Returns:
            This loss module.
        """
        super().make_value_estimator(value_type, **hyperparams)
        if self._value_estimator is not None:
            self._value_estimator.to(self.dtype)
        return self

    def _compute_target_v2(self, tensordict: TensorDictBase) -> torch.Tensor:
        target_value = super()._compute_target_v2(tensordict)
        tensordict.set(self.tensor_keys.value_target, target_value.detach())
        return target_value

    def make_optimization_stepper(
        self,
        lr: float = 1e-4,
        *,
        actor_lr: float | None = None,
        critic_lr: float | None = None,
        alpha_lr: float | None = None,
        betas: tuple[float, float] = (0.9, 0.999),
        growth_interval: int = 10_000,
        fused_adam: bool = True,
    ) -> LossScalingStepper:
        """Build the optimizers and loss scalers that the switches select.

        One optimizer per loss: the critic's on the stacked ``qvalue_network_params``, the
        actor's on ``actor_network_params``, the temperature's on ``log_alpha`` (and the
        value network's for SAC v1). Each is :class:`~torchrl_seer.optim.HAdam` (with
        ``kahan`` from the matching switch) or ``torch.optim.Adam``, paired with a
        :class:`~torchrl_seer.optim.CompoundLossScaler`, an
        :class:`~torchrl_seer.optim.AmpStyleLossScaler` or no scaler.

        Args:
            lr (float, optional): learning rate of every optimizer. Defaults to ``1e-4``.

        Keyword Args:
            actor_lr (float, optional): actor learning rate. Defaults to ``lr``.
            critic_lr (float, optional): critic (and value) learning rate. Defaults to ``lr``.
            alpha_lr (float, optional): temperature learning rate. Defaults to ``lr``.
            betas (tuple of float, optional): Adam betas. Defaults to ``(0.9, 0.999)``.
            growth_interval (int, optional): finite steps before a scaler tries to double
                its scale. Defaults to ``10_000``.
            fused_adam (bool, optional): step ``torch.optim.Adam`` (the precisions without
                hAdam) with PyTorch's fused kernel when its parameters are fp32: the same
                update, about 2.8x faster than the single-tensor loop for 2x256 MLPs on a
                CPU. 16-bit parameters always take the single-tensor Adam, whose 16-bit
                rounding the ``naive-fp16`` baseline is about. Defaults to ``True``.

        Returns:
            A :class:`~torchrl_seer.optim.LossScalingStepper`, usable as a ``Trainer``'s
            ``optimization_stepper`` or through its ``optimize`` method.
        """
        groups: dict[str, tuple[list[torch.Tensor], float, bool]] = {
            "loss_qvalue": (
                list(self.qvalue_network_params.values(True, True)),
                critic_lr if critic_lr is not None else lr,
                self.crit_kahan,
            ),
            "loss_actor": (
                list(self.actor_network_params.values(True, True)),
                actor_lr if actor_lr is not None else lr,
                self.actor_kahan,
            ),
        }
        if not self.fixed_alpha:
            groups["loss_alpha"] = (
                [self.log_alpha],
                alpha_lr if alpha_lr is not None else lr,
                self.alpha_kahan,
            )
        if self.value_network_params is not None:
            groups["loss_value"] = (
                list(self.value_network_params.values(True, True)),
                critic_lr if critic_lr is not None else lr,
                self.crit_kahan,
            )
        entries: dict[str, tuple[Optimizer, LossScaler | None]] = {}
        for key, (params, group_lr, kahan) in groups.items():
            trainable = [p for p in params if p.requires_grad]
            optimizer: Optimizer
            if self.use_num_adam:
                optimizer = HAdam(
                    trainable,
                    lr=group_lr,
                    betas=betas,
                    eps=self.adam_eps,
                    kahan=kahan,
                    compensation_dtype=self.compensation_dtype,
                    stochastic_rounding=self.stochastic_rounding and not kahan,
                    stochastic_moment_decay=self.stochastic_moment_decay,
                )
            else:
                fused = fused_adam and all(p.dtype == torch.float32 for p in trainable)
                optimizer = Adam(
                    trainable, lr=group_lr, betas=betas, eps=self.adam_eps, fused=fused or None
                )
            scaler: LossScaler | None = None
            if self.use_grad_scaler:
                scaler = CompoundLossScaler(
                    optimizer, init_scale=self.init_scale, growth_interval=growth_interval
                )
            elif self.use_grad_scaler_naive:
                scaler = AmpStyleLossScaler(
                    optimizer, init_scale=self.init_scale, growth_interval=growth_interval
                )
            entries[key] = (optimizer, scaler)
        return LossScalingStepper(entries)

    def make_target_updater(
        self, *, tau: float | None = None, eps: float | None = None
    ) -> SoftUpdate:
        r"""Build the target updater that ``soft_update_scale`` selects.

        Keyword Args:
            tau (float, optional): Polyak :math:`\tau`; exclusive with ``eps``.
            eps (float, optional): decay :math:`1-\tau`; exclusive with ``tau``.

        Returns:
            :class:`~torchrl_seer.objectives.KahanSoftUpdate` with ``scale=soft_update_scale``,
            or TorchRL's ``SoftUpdate`` when ``soft_update_scale`` is ``None``. Call its
            ``step()`` after the optimizer steps (every 2 updates in the reference).
        """
        if self.soft_update_scale is None:
            return SoftUpdate(self, tau=tau, eps=eps)
        return KahanSoftUpdate(
            self,
            tau=tau,
            eps=eps,
            scale=self.soft_update_scale,
            compensation_dtype=self.compensation_dtype,
        )


def _warn_if_cpu_lacks_kernels(dtype: torch.dtype, parameters: Iterable[torch.Tensor]) -> None:
    """Warns that a 16-bit loss on a CPU without native 16-bit kernels saves memory, not time."""
    on_cpu = any(p.device.type == "cpu" for p in parameters)
    if on_cpu and not has_native_kernels(dtype, "cpu"):
        warnings.warn(
            f"this CPU has no native {dtype} matrix kernels (AVX-512 BF16/FP16 or AMX; PyTorch "
            f"reports {torch.backends.cpu.get_cpu_capability()}): a {dtype} learner here holds "
            "less memory than float32 but runs several times slower (6x for the 256-wide SAC "
            "of examples/lowprec_sac_dmc.py on an AVX2 CPU). Train on a GPU, or on a CPU with "
            "those instructions, for speed.",
            UserWarning,
            stacklevel=3,
        )


def _use_stable_tanh_normal(
    actor_network: ProbabilisticTensorDictSequential,
    *,
    stable_normal: bool,
    tanh_threshold: float | None,
) -> None:
    """Swap the actor's ``TanhNormal`` for :class:`StableTanhNormal` with the given fixes."""
    heads = [m for m in actor_network.modules() if isinstance(m, ProbabilisticTensorDictModule)]
    if len(heads) != 1 or not issubclass(heads[0].distribution_class, TanhNormal):
        found = [getattr(head, "distribution_class", None) for head in heads]
        raise ValueError(
            "stable_normal / tanh_threshold need an actor with exactly one probabilistic head "
            f"whose distribution_class is a TanhNormal; found {found}."
        )
    head = heads[0]
    head.distribution_class = StableTanhNormal
    head.distribution_kwargs = {
        **head.distribution_kwargs,
        "stable_normal": stable_normal,
        "tanh_threshold": tanh_threshold,
    }
