"""hAdam: Adam rewritten so that the squared gradient is never formed."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.optim import Optimizer

from torchrl_seer.optim.compensated_sum import check_compensation_dtype, compensated_add_
from torchrl_seer.optim.stochastic_rounding import stochastic_add_, stochastic_store_

__all__ = ["HAdam"]

# Elements per slice of the update: bounds the three work buffers; slices much smaller than
# this cost more in per-op overhead (measured) than they save in cache traffic.
_CHUNK = 1 << 22
# Larger tensors update on their own: a pass over them costs much more than the per-op
# overhead that gathering saves, and gathering would copy them twice.
_GATHER_LIMIT = 1 << 16


class HAdam(Optimizer):
    r"""Adam in "hypot form", safe to run entirely in fp16 (Björck et al., 2021).

    Adam keeps :math:`v_t = \beta_2 v_{t-1} + (1-\beta_2) g_t^2`. In fp16, :math:`g^2`
    overflows for :math:`|g| > 256` and rounds to zero below :math:`|g| \approx 1.7e{-4}`.
    hAdam keeps instead a moment that lives in gradient units,

    .. math::

        s_t = \operatorname{hypot}\big((1-\beta_1)|g_t|,\ \sqrt{\beta_2}\, s_{t-1}\big)
            = M \sqrt{1 + \big(\mu / (M + \epsilon)\big)^2},

    with :math:`M = \max(a, b)`, :math:`\mu = \min(a, b)`, :math:`a = (1-\beta_1)|g_t|` and
    :math:`b = \sqrt{\beta_2}\, s_{t-1}`; the ratio :math:`\mu / (M + \epsilon)` is at most
    one, so nothing overflows (the :math:`\epsilon` guards :math:`0/0` and perturbs
    :math:`s` by a relative :math:`O(\epsilon/M)` only). The parameter update is

    .. math::

        \theta_t = \theta_{t-1} - \frac{\alpha (1-\beta_1)}{\sqrt{1-\beta_2}\,(1-\beta_1^t)}
            \cdot \frac{m_t}{s_t / \sqrt{1-\beta_2^t} + \epsilon}.

    Since :math:`s_t = \frac{1-\beta_1}{\sqrt{1-\beta_2}} \sqrt{v_t}`, this is exactly Adam
    with :math:`\epsilon` replaced by :math:`\epsilon \sqrt{1-\beta_2} / (1-\beta_1)`
    (:math:`\approx 0.316\,\epsilon` for the default betas). Both moments are linear in the
    gradient, which is what lets :class:`~torchrl_seer.optim.CompoundLossScaler` rescale
    them together with the loss scale (Adam's :math:`v` would grow with the square of the
    scale and overflow fp16). No ``exp_avg_sq`` is allocated.

    With ``kahan=True`` the update :math:`\Delta` is added to each parameter with Kahan
    summation: a compensation buffer :math:`c` (same dtype as the parameter) carries the
    rounding error of the previous additions, so that updates smaller than half a unit in
    the last place of the weight are not lost::

        y = Δ - c;  t = p + y;  c = (t - p) - y;  p = t

    The reference applies it to the critic and the temperature (``crit_kahan``,
    ``alpha_kahan``); in bf16 (8-bit mantissa) it matters for every network. With
    ``compensation_dtype=torch.int8`` the compensation costs one byte per weight instead of
    two: the sum is formed in fp32 and its residual stored in units of
    :math:`\operatorname{ulp}(p)/2^7` (see :func:`~torchrl_seer.optim.compensated_add_`),
    so that the pair carries 15 (bf16) or 18 (fp16) significant bits. With
    ``stochastic_rounding=True`` instead, updates are rounded stochastically
    (:func:`~torchrl_seer.optim.stochastic_add_`): exact on average at no memory cost, but
    noisier than Kahan summation (our extension, not in the reference). Both draw their
    random numbers from the global generator (``torch.manual_seed`` makes them repeatable).

    Like ``torch.optim.Adam(foreach=True)``, the parameters of a group that share dtype,
    device and step count and hold at most 65,536 elements each are updated together
    (``foreach=True``, the default): their moments and compensations live in one flat buffer per
    state (each parameter's state is a view of it, so ``state_dict`` and loss scalers see
    per-parameter tensors as usual), and each step gathers their gradients and values into
    flat copies, runs the update once over all of them and copies the values back. Larger
    tensors update on their own, without copies: a pass over them costs far more than the
    per-operation overhead. This removes the per-tensor overhead of networks made of many
    small tensors (the three optimizers of the bf16 2x256 SAC of
    ``examples/lowprec_sac_dmc.py``, one CPU thread: 2.2 ms per update instead of 3.0 ms).
    The arithmetic is the per-parameter update's: fp32 results are the same bits; in
    fp16/bf16 an element may round differently in the last bit (PyTorch's vectorized and
    scalar loops differ in fused multiply-adds, and the flat layout moves elements between
    them), and random rounding draws its numbers in another order.

    Args:
        params (iterable): parameters or parameter groups to optimize.
        lr (float, optional): learning rate :math:`\alpha`. Defaults to ``1e-3``.
        betas (tuple of float, optional): :math:`(\beta_1, \beta_2)`. Defaults to
            ``(0.9, 0.999)``.
        eps (float, optional): :math:`\epsilon`, in the units of :math:`s` (see above).
            When paired with a :class:`~torchrl_seer.optim.CompoundLossScaler`, it must be
            scaled like the loss (the reference uses ``1e-4`` for a loss scale of ``1e4``),
            and the scaler then halves and doubles it with the scale. Defaults to ``1e-8``.
        weight_decay (float, optional): L2 penalty added to the gradient. Defaults to ``0``.
        amsgrad (bool, optional): keep the running maximum of :math:`s` (the hypot-form
            AMSGrad). Defaults to ``False``.

    Keyword Args:
        maximize (bool, optional): maximize the objective instead of minimizing it.
            Defaults to ``False``.
        kahan (bool, optional): apply the update with Kahan-compensated summation, keeping
            one compensation buffer per parameter. Defaults to ``False``.
        compensation_dtype (torch.dtype, optional): dtype of the Kahan compensation:
            ``None`` for the parameter's dtype (the reference), or ``torch.int8`` for the
            compact residual (fp16 and bf16 parameters only). Defaults to ``None``.
        stochastic_rounding (bool, optional): round each update of an fp16/bf16 parameter
            stochastically instead of to nearest; exclusive with ``kahan``. Defaults to
            ``False``.
        stochastic_moment_decay (bool, optional): decay :math:`s` by :math:`\sqrt{\beta_2}`
            with stochastic rounding (fp16/bf16 parameters). In bf16 the decay step
            :math:`(1-\sqrt{\beta_2})\,s` (5e-4 relative for :math:`\beta_2 = 0.999`) is below
            half an ulp (2e-3 relative), so rounded to nearest :math:`s` never decays and the
            step size stays set by the largest gradient ever seen; rounded stochastically it
            decays like fp32's on average. Our extension, not in the reference. Defaults to
            ``False``.
        foreach (bool, optional): update the small parameters of a group that share
            dtype, device and step count together, through flat buffers (see above);
            ``False`` updates them one by one. Defaults to ``True``.

    Examples:
        >>> import torch
        >>> from torchrl_seer.optim import HAdam
        >>> weight = torch.nn.Parameter(torch.ones(3, dtype=torch.float16))
        >>> optimizer = HAdam([weight], lr=1e-3, eps=1e-4, kahan=True)
        >>> weight.grad = torch.tensor([300.0, 1e-4, -2.0], dtype=torch.float16)
        >>> optimizer.step()
        >>> bool(torch.isfinite(weight).all())
        True
        >>> sorted(optimizer.state[weight])
        ['exp_avg', 'exp_avg_hypot', 'kahan_compensation', 'step']
        >>> compact = HAdam([weight], kahan=True, compensation_dtype=torch.int8, eps=1e-4)
        >>> compact.step()
        >>> compact.state[weight]["kahan_compensation"].dtype
        torch.int8
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor] | Iterable[dict[str, Any]],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        kahan: bool = False,
        compensation_dtype: torch.dtype | None = None,
        stochastic_rounding: bool = False,
        stochastic_moment_decay: bool = False,
        foreach: bool = True,
    ) -> None:
        if not lr >= 0.0:
            raise ValueError(f"Invalid learning rate: expected lr >= 0, got {lr}.")
        if not eps >= 0.0:
            raise ValueError(f"Invalid epsilon: expected eps >= 0, got {eps}.")
        if not 0.0 <= betas[0] < 1.0 or not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid betas: expected both in [0, 1), got {betas}.")
        if not weight_decay >= 0.0:
            raise ValueError(f"Invalid weight_decay: expected >= 0, got {weight_decay}.")
        check_compensation_dtype(compensation_dtype)
        if kahan and stochastic_rounding:
            raise ValueError("kahan and stochastic_rounding are exclusive: choose one.")
        defaults = {
            "lr": lr,
            "betas": betas,
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "kahan": kahan,
            "compensation_dtype": compensation_dtype,
            "stochastic_rounding": stochastic_rounding,
            "stochastic_moment_decay": stochastic_moment_decay,
            "foreach": foreach,
        }
        super().__init__(params, defaults)
        self._flat_states: dict[tuple[int, ...], _FlatState] = {}

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        self._flat_states = {}

    def linear_moments(self) -> list[torch.Tensor]:
        r"""Return the optimizer state tensors that scale linearly with the gradient.

        These are ``exp_avg`` (:math:`m`), ``exp_avg_hypot`` (:math:`s`) and, with
        ``amsgrad``, ``max_exp_avg_hypot``. A loss scaler multiplies them by the same factor
        as the loss scale so that the update :math:`m / (s + \epsilon)` is unchanged.

        Returns:
            The moment tensors of every parameter that has taken a step.

        Examples:
            >>> import torch
            >>> from torchrl_seer.optim import HAdam
            >>> weight = torch.nn.Parameter(torch.zeros(2))
            >>> optimizer = HAdam([weight])
            >>> weight.grad = torch.ones(2)
            >>> optimizer.step()
            >>> len(optimizer.linear_moments())
            2
        """
        moments = []
        for state in self.state.values():
            for name in ("exp_avg", "exp_avg_hypot", "max_exp_avg_hypot"):
                if name in state:
                    moments.append(state[name])
        return moments

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load an optimizer state, keeping int8 Kahan compensations in int8.

        ``torch.optim.Optimizer.load_state_dict`` casts every state tensor of a floating
        parameter to the parameter's dtype; an int8 compensation (integers in
        :math:`[-64, 64]`, exact in fp16/bf16) is cast back.

        Args:
            state_dict (dict): a state produced by :meth:`state_dict`.
        """
        super().load_state_dict(state_dict)
        for group in self.param_groups:
            dtype = group.get("compensation_dtype")
            if dtype is None:
                continue
            for param in group["params"]:
                state = self.state.get(param, {})
                if "kahan_compensation" in state:
                    state["kahan_compensation"] = state["kahan_compensation"].to(dtype)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform a single optimization step.

        Args:
            closure (callable, optional): re-evaluates the model and returns the loss.

        Returns:
            The loss returned by ``closure``, or ``None``.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [param for param in group["params"] if param.grad is not None]
            for param in params:
                self._check_and_init_state(param, group)
            if not group.get("foreach", True):
                batches = [[param] for param in params]
            else:
                batches = _batches_of_like_parameters(params, self.state)
            for batch in batches:
                self._update_batch(batch, group)
        return loss

    def _check_and_init_state(self, param: torch.Tensor, group: dict[str, Any]) -> None:
        if param.grad is not None and param.grad.is_sparse:
            raise RuntimeError("HAdam does not support sparse gradients.")
        eps = group["eps"]
        finfo = torch.finfo(param.dtype)
        if 0 < eps < finfo.smallest_normal * finfo.eps / 2:
            raise ValueError(
                f"HAdam eps={eps:g} rounds to zero in {param.dtype}, so a parameter whose "
                "gradients are all zero would get 0/0. Use a larger eps (with compound loss "
                "scaling the reference uses 1e-4 for a loss scale of 1e4)."
            )
        state = self.state[param]
        if state:
            return
        if group.get("stochastic_rounding") or group.get("stochastic_moment_decay"):
            check_compensation_dtype(torch.int8, param.dtype)  # 16-bit parameters only
        state["step"] = 0
        state["exp_avg"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        state["exp_avg_hypot"] = torch.zeros_like(param, memory_format=torch.preserve_format)
        if group["amsgrad"]:
            state["max_exp_avg_hypot"] = torch.zeros_like(
                param, memory_format=torch.preserve_format
            )
        if group["kahan"]:
            check_compensation_dtype(group.get("compensation_dtype"), param.dtype)
            state["kahan_compensation"] = torch.zeros_like(
                param,
                dtype=group.get("compensation_dtype") or param.dtype,
                memory_format=torch.preserve_format,
            )

    def _update_batch(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        """One step of parameters that share dtype, device and step count."""
        states = [self.state[param] for param in params]
        for state in states:
            state["step"] += 1
        beta1, beta2 = group["betas"]
        step = states[0]["step"]
        constants = _StepConstants(
            beta1=beta1,
            sqrt_beta2=math.sqrt(beta2),
            eps=group["eps"],
            bias_correction2_sqrt=math.sqrt(1 - beta2**step),
            step_size=group["lr"] * (1 - beta1) / (math.sqrt(1 - beta2) * (1 - beta1**step)),
            stochastic_rounding=group.get("stochastic_rounding", False),
            stochastic_moment_decay=group.get("stochastic_moment_decay", False),
        )
        adjusts_gradient = group["maximize"] or group["weight_decay"] != 0
        if len(params) == 1:
            (param,) = params
            value, grad = param, param.grad
            if adjusts_gradient:
                grad = grad.clone()  # type: ignore[union-attr]
            moments = [states[0].get(name) for name in _STATE_NAMES]
        else:
            value = torch.cat([param.detach().reshape(-1) for param in params])
            grad = torch.cat([param.grad.reshape(-1) for param in params])  # type: ignore[union-attr]
            moments = self._flat_state(params).flat
        if group["maximize"]:
            grad.neg_()  # type: ignore[union-attr]
        if group["weight_decay"] != 0:
            grad.add_(value, alpha=group["weight_decay"])  # type: ignore[union-attr]
        for chunk in _chunks(value, grad, *moments):  # type: ignore[arg-type]
            _hadam_update(chunk, constants)
        if len(params) > 1:
            sizes = [param.numel() for param in params]
            pieces = [
                piece.view_as(param)
                for piece, param in zip(value.split(sizes), params, strict=True)
            ]
            torch._foreach_copy_(params, pieces)

    def _flat_state(self, params: list[torch.Tensor]) -> _FlatState:
        """The flat buffers behind the state of ``params``, built (or rebuilt) on demand.

        The state of each parameter is a view of the flat buffers; if any of them was
        replaced (``load_state_dict``, a user's assignment), the buffers are rebuilt from the
        current per-parameter state.
        """
        key = tuple(map(id, params))  # the cache holds the parameters: ids are not reused
        cached = self._flat_states.get(key)
        states = [self.state[param] for param in params]
        if cached is not None and cached.serves(states):
            return cached
        flat_state = _FlatState.gather(params, states)
        self._flat_states[key] = flat_state
        return flat_state


_STATE_NAMES = ("exp_avg", "exp_avg_hypot", "max_exp_avg_hypot", "kahan_compensation")


def _batches_of_like_parameters(
    params: list[torch.Tensor], state: dict[torch.Tensor, dict[str, Any]]
) -> list[list[torch.Tensor]]:
    """Split ``params`` into lists that share dtype, device, step count and state layout."""
    batches: dict[tuple[Any, ...], list[torch.Tensor]] = {}
    alone = []
    for param in params:
        if param.numel() > _GATHER_LIMIT:
            alone.append([param])
            continue
        param_state = state[param]
        kind = (
            param.dtype,
            param.device,
            param_state["step"],
            *(
                None if name not in param_state else param_state[name].dtype
                for name in _STATE_NAMES
            ),
        )
        batches.setdefault(kind, []).append(param)
    return list(batches.values()) + alone


@dataclass
class _FlatState:
    """One flat buffer per state tensor of a batch of parameters; the state holds views."""

    params: list[torch.Tensor]
    flat: list[torch.Tensor | None]
    views: list[list[torch.Tensor] | None]

    @classmethod
    def gather(cls, params: list[torch.Tensor], states: list[dict[str, Any]]) -> _FlatState:
        """Copy the per-parameter state of ``params`` into flat buffers and point it at them."""
        sizes = [param.numel() for param in params]
        flat: list[torch.Tensor | None] = []
        views: list[list[torch.Tensor] | None] = []
        for name in _STATE_NAMES:
            if name not in states[0]:
                flat.append(None)
                views.append(None)
                continue
            buffer = torch.cat([state[name].reshape(-1) for state in states])
            pieces = [
                piece.view(param.shape)
                for piece, param in zip(buffer.split(sizes), params, strict=True)
            ]
            for state, piece in zip(states, pieces, strict=True):
                state[name] = piece
            flat.append(buffer)
            views.append(pieces)
        return cls(list(params), flat, views)

    def serves(self, states: list[dict[str, Any]]) -> bool:
        """Whether ``states`` (of this object's parameters) still hold this object's views."""
        for name, pieces in zip(_STATE_NAMES, self.views, strict=True):
            if pieces is None:
                if any(name in state for state in states):
                    return False
            elif any(
                state.get(name) is not piece for state, piece in zip(states, pieces, strict=True)
            ):
                return False
        return True


@dataclass(frozen=True)
class _StepConstants:
    beta1: float
    sqrt_beta2: float
    eps: float
    bias_correction2_sqrt: float
    step_size: float
    stochastic_rounding: bool
    stochastic_moment_decay: bool


@dataclass
class _Slices:
    """Aligned (slices of) the tensors of one parameter, plus three scratch buffers."""

    param: torch.Tensor
    grad: torch.Tensor
    exp_avg: torch.Tensor
    exp_avg_hypot: torch.Tensor
    max_exp_avg_hypot: torch.Tensor | None
    compensation: torch.Tensor | None
    work: torch.Tensor
    larger: torch.Tensor
    shifted: torch.Tensor


def _chunks(
    param: torch.Tensor,
    grad: torch.Tensor,
    exp_avg: torch.Tensor,
    exp_avg_hypot: torch.Tensor,
    max_exp_avg_hypot: torch.Tensor | None,
    compensation: torch.Tensor | None,
) -> Iterator[_Slices]:
    """Yield aligned slices of ``_CHUNK`` elements of every tensor, plus three work buffers.

    The update makes about twenty elementwise passes; three work buffers (at most
    ``_CHUNK`` elements each) hold every intermediate result instead of a fresh temporary
    per operation. Non-contiguous tensors are processed whole.
    """
    tensors = [param, grad, exp_avg, exp_avg_hypot, max_exp_avg_hypot, compensation]
    if not all(t.is_contiguous() for t in tensors if t is not None):
        yield _Slices(*tensors, *(torch.empty_like(param) for _ in range(3)))  # type: ignore[arg-type]
        return
    flat = [t.view(-1) if t is not None else None for t in tensors]
    numel = param.numel()
    work = torch.empty(3, min(_CHUNK, numel), dtype=param.dtype, device=param.device)
    for start in range(0, numel, _CHUNK):
        stop = min(start + _CHUNK, numel)
        views = [t[start:stop] if t is not None else None for t in flat]
        yield _Slices(*views, *(w[: stop - start] for w in work))  # type: ignore[arg-type]


def _hadam_update(t: _Slices, c: _StepConstants) -> None:
    """One hAdam step on aligned (slices of) tensors, writing intermediates into the scratch."""
    work, larger = t.work, t.larger
    t.exp_avg.mul_(c.beta1).add_(t.grad, alpha=1 - c.beta1)
    # s_t = hypot(a, b) = M sqrt(1 + (mu / (M + eps))^2), a = (1 - b1)|g|, b = sqrt(b2) s_{t-1}
    torch.abs(t.grad, out=work).mul_(1 - c.beta1)
    if c.stochastic_moment_decay:  # unbiased: bf16 rounds sqrt(b2) s back to s
        stochastic_store_(t.exp_avg_hypot, t.exp_avg_hypot.float().mul_(c.sqrt_beta2))
    else:
        t.exp_avg_hypot.mul_(c.sqrt_beta2)
    torch.maximum(work, t.exp_avg_hypot, out=larger)
    torch.minimum(work, t.exp_avg_hypot, out=work)
    torch.add(larger, c.eps, out=t.shifted)
    work.div_(t.shifted).square_().add_(1).sqrt_()
    torch.mul(work, larger, out=t.exp_avg_hypot)
    hypot = t.exp_avg_hypot
    if t.max_exp_avg_hypot is not None:
        torch.maximum(t.max_exp_avg_hypot, t.exp_avg_hypot, out=t.max_exp_avg_hypot)
        hypot = t.max_exp_avg_hypot
    # update = -step_size * m / (s / sqrt(1 - b2^t) + eps)
    torch.div(hypot, c.bias_correction2_sqrt, out=work).add_(c.eps)
    torch.div(t.exp_avg, work, out=work).mul_(-c.step_size)
    if t.compensation is not None:
        compensated_add_(t.param, t.compensation, work, scratch=larger)
    elif c.stochastic_rounding:
        stochastic_add_(t.param, work)
    else:
        t.param.add_(work)
