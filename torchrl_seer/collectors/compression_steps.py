"""Compression steps chained by :class:`~torchrl_seer.collectors.PolicyCompressor`.

Every step maps a full-precision policy module to a compressed one and returns a *plan*: the
structural choices it made (for instance which neurons structured pruning kept). Given the same
plan, a step rebuilds the identical structure from any module of the original architecture; this
is how a worker process turns a shipped weight packet back into a runnable compressed actor
without recomputing the choices from (stale) weights.

Steps never modify their input: they work on a deep copy.
"""

from __future__ import annotations

import abc
import contextlib
import copy
import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from tensordict.nn import TensorDictModuleBase
from torch import nn
from torchrl.modules.models.utils import SquashDims

__all__ = [
    "Cast",
    "CompressionStep",
    "Distill",
    "Prune",
    "Quantize",
    "UnsupportedLayerError",
    "quiet_torch_ao",
]

#: Modules that act element-wise on features, so structured pruning can pass through them.
_ELEMENTWISE = (
    nn.ReLU,
    nn.ReLU6,
    nn.Tanh,
    nn.ELU,
    nn.SELU,
    nn.CELU,
    nn.GELU,
    nn.SiLU,
    nn.Mish,
    nn.LeakyReLU,
    nn.Sigmoid,
    nn.Softplus,
    nn.Hardtanh,
    nn.Hardswish,
    nn.Identity,
    nn.Dropout,
)
_FLATTEN = (nn.Flatten, SquashDims)
_PRUNABLE = (nn.Linear, nn.Conv2d)
_BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d)


class UnsupportedLayerError(TypeError):
    """Raised when a policy holds a layer type that the chosen compression cannot handle."""


class CompressionStep(abc.ABC):
    """Base class of a compression step.

    A step is a picklable description (it travels to worker processes inside weight packets).
    Subclasses implement :meth:`apply` and a short :meth:`spec` string used by
    :func:`~torchrl_seer.collectors.PolicyCompressor.from_spec` and in run metadata.
    """

    @abc.abstractmethod
    def apply(
        self, module: nn.Module, *, plan: TensorDictBase | None = None
    ) -> tuple[nn.Module, TensorDictBase]:
        """Compresses ``module`` (in place: callers pass a copy).

        Args:
            module: the module to compress; it is modified and returned.

        Keyword Args:
            plan: structural choices returned by an earlier call; when given they are reused
                instead of being recomputed from the weights.

        Returns:
            The compressed module and the plan that rebuilds its structure.
        """

    def __call__(self, module: nn.Module) -> tuple[nn.Module, TensorDictBase]:
        """Compresses a deep copy of ``module``; see :meth:`apply`."""
        return self.apply(copy.deepcopy(module))

    @abc.abstractmethod
    def spec(self) -> str:
        """Returns the pipeline-string form of the step (e.g. ``"prune0.5s"``)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.spec()!r})"


def _sequentials(module: nn.Module) -> Iterator[tuple[str, nn.Sequential]]:
    for name, sub in module.named_modules():
        if isinstance(sub, nn.Sequential):
            yield name, sub


def _prunable_pairs(seq: nn.Sequential, seq_name: str) -> list[tuple[int, int, list[int]]]:
    """Finds (producer, consumer, in-between) index triples that structured pruning can cut."""
    children = list(seq)
    pairs = []
    for i, producer in enumerate(children):
        if not isinstance(producer, _PRUNABLE):
            continue
        between: list[int] = []
        for j in range(i + 1, len(children)):
            child = children[j]
            if isinstance(child, _PRUNABLE):
                pairs.append((i, j, between))
                break
            if isinstance(child, _ELEMENTWISE + _FLATTEN + _BATCHNORM):
                between.append(j)
                continue
            raise UnsupportedLayerError(
                f"structured pruning cannot pass through {type(child).__name__} at "
                f"'{seq_name}.{j}' (between {type(producer).__name__} '{seq_name}.{i}' and the "
                f"next layer); supported in-between layers are element-wise activations, "
                f"Dropout, Flatten/SquashDims and BatchNorm1d/2d"
            )
    return pairs


def _select_linear_or_conv(layer: Any, keep: torch.Tensor, *, dim: int) -> nn.Module:
    """Returns a smaller copy of ``layer`` keeping ``keep`` along out (dim=0) or in (dim=1)."""
    weight = layer.weight.detach().index_select(dim, keep)
    bias = layer.bias.detach() if layer.bias is not None else None
    if dim == 0 and bias is not None:
        bias = bias.index_select(0, keep)
    if isinstance(layer, nn.Linear):
        new: Any = nn.Linear(
            weight.shape[1], weight.shape[0], bias=bias is not None, dtype=weight.dtype
        )
    else:
        if layer.groups != 1:
            raise UnsupportedLayerError("structured pruning supports Conv2d with groups=1 only")
        new = nn.Conv2d(
            weight.shape[1],
            weight.shape[0],
            layer.kernel_size,
            stride=layer.stride,
            padding=layer.padding,
            dilation=layer.dilation,
            bias=bias is not None,
            padding_mode=layer.padding_mode,
            dtype=weight.dtype,
        )
    with torch.no_grad():
        new.weight.copy_(weight)
        if bias is not None:
            new.bias.copy_(bias)
    return new


def _select_batchnorm(bn: Any, keep: torch.Tensor) -> nn.Module:
    new = type(bn)(len(keep), eps=bn.eps, momentum=bn.momentum, affine=bn.affine)
    state = {k: (v.index_select(0, keep) if v.ndim == 1 else v) for k, v in bn.state_dict().items()}
    new.load_state_dict(state)
    return new


class Prune(CompressionStep):
    """Magnitude pruning, structured (removes neurons and channels) or unstructured (zeros).

    **Structured** pruning (the default) cuts hidden units out of every pair of consecutive
    ``Linear``/``Conv2d`` layers inside each ``nn.Sequential`` of the policy (TorchRL's ``MLP`` and
    ``ConvNet`` are ``nn.Sequential``): the producer keeps the ``(1 - amount)`` fraction of its
    output units with the largest L1 weight norm, and the consumer drops the matching input
    columns (through a ``Flatten``/``SquashDims`` the matching ``H*W`` column blocks). The result
    is a network of smaller *dense* layers, so it is faster with ordinary kernels. The last layer
    of each ``nn.Sequential`` (its output) is never cut, so the policy's interface is unchanged.

    **Unstructured** pruning zeros the ``amount`` fraction of smallest-magnitude weights in each
    layer with :func:`torch.nn.utils.prune.l1_unstructured` and makes it permanent, so parameter
    names stay ``weight`` (not ``weight_orig``/``weight_mask``). Dense kernels do not run faster
    on zeros; use it to study sparsity or before a sparse runtime.

    Pruning changes the function. Pair structured pruning with :class:`Distill` (train the pruned
    network as the student) to recover agreement with the learner's policy.

    Args:
        amount: fraction of units (structured) or weights (unstructured) to remove, in ``[0, 1)``.

    Keyword Args:
        structured: remove whole neurons/channels (``True``) or zero single weights.

    Examples:
        >>> import torch
        >>> from torchrl.modules import MLP
        >>> net = MLP(in_features=4, out_features=2, num_cells=[64, 64])
        >>> small, plan = Prune(0.5)(net)
        >>> small[0].out_features, small[2].in_features, small[4].out_features
        (32, 32, 2)
    """

    def __init__(self, amount: float, *, structured: bool = True) -> None:
        if not 0.0 <= amount < 1.0:
            raise ValueError(f"Prune amount must be in [0, 1), got {amount}")
        self.amount = float(amount)
        self.structured = structured

    def spec(self) -> str:
        """Returns the pipeline-string form of the step."""
        return f"prune{self.amount:g}{'s' if self.structured else 'u'}"

    def apply(
        self, module: nn.Module, *, plan: TensorDictBase | None = None
    ) -> tuple[nn.Module, TensorDictBase]:
        """Prunes ``module`` in place and returns it with the kept-unit indices as plan.

        Args:
            module: the module to prune.

        Keyword Args:
            plan: kept indices from an earlier call (structured pruning only).

        Returns:
            The pruned module and its plan.
        """
        if not self.structured:
            return self._unstructured(module), TensorDict()
        new_plan = TensorDict()
        found = False
        for seq_name, seq in list(_sequentials(module)):
            for i, j, between in _prunable_pairs(seq, seq_name):
                found = True
                key = f"{seq_name}:{i}".replace(".", "/")
                producer: Any = seq[i]
                if getattr(producer, "weight", None) is None or isinstance(
                    producer.weight, nn.parameter.UninitializedParameter
                ):
                    raise UnsupportedLayerError(
                        f"layer '{seq_name}.{i}' is lazy; run one forward pass before pruning"
                    )
                if plan is not None:
                    keep = plan[key]
                else:
                    n_out = producer.weight.shape[0]
                    n_keep = max(1, round((1.0 - self.amount) * n_out))
                    importance = producer.weight.detach().abs().flatten(1).sum(1)
                    keep = importance.topk(n_keep).indices.sort().values
                new_plan[key] = keep
                n_out = producer.weight.shape[0]
                seq[i] = _select_linear_or_conv(producer, keep, dim=0)
                for b in between:
                    if isinstance(seq[b], _BATCHNORM):
                        seq[b] = _select_batchnorm(seq[b], keep)
                consumer: Any = seq[j]
                consumer_keep = keep
                if isinstance(consumer, nn.Linear) and consumer.in_features != n_out:
                    # conv -> flatten -> linear: each channel owns a block of H*W columns.
                    block = consumer.in_features // n_out
                    offsets = torch.arange(block)
                    consumer_keep = (keep[:, None] * block + offsets[None, :]).flatten()
                seq[j] = _select_linear_or_conv(consumer, consumer_keep, dim=1)
        if not found:
            raise UnsupportedLayerError(
                "structured pruning found no pair of consecutive Linear/Conv2d layers inside an "
                f"nn.Sequential in {type(module).__name__}; nothing to prune"
            )
        return module, new_plan

    def _unstructured(self, module: nn.Module) -> nn.Module:
        from torch.nn.utils import prune as torch_prune

        layers = [m for m in module.modules() if isinstance(m, _PRUNABLE)]
        if not layers:
            raise UnsupportedLayerError(
                f"unstructured pruning found no Linear/Conv2d layer in {type(module).__name__}"
            )
        for layer in layers:
            torch_prune.l1_unstructured(layer, "weight", amount=self.amount)
            torch_prune.remove(layer, "weight")
        return module


class _DtypeBoundary(nn.Module):
    """Runs ``inner`` in ``dtype``: casts floating inputs in and floating outputs back out."""

    def __init__(self, inner: nn.Module, dtype: torch.dtype, out_dtype: torch.dtype) -> None:
        super().__init__()
        self.inner = inner
        self.dtype = dtype
        self.out_dtype = out_dtype

    def _cast(self, value, dtype):
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            return value.to(dtype)
        if isinstance(value, tuple):
            return tuple(self._cast(v, dtype) for v in value)
        return value

    def forward(self, *args):
        return self._cast(self.inner(*self._cast(args, self.dtype)), self.out_dtype)


def _cast_input_to_weight_dtype(layer: nn.Module, args: tuple) -> tuple:
    weight = getattr(layer, "weight", None)
    x = args[0]
    if isinstance(weight, torch.Tensor) and x.is_floating_point() and x.dtype != weight.dtype:
        return (x.to(weight.dtype), *args[1:])
    return args


def _wrap_compute_modules(module: nn.Module, wrap: Callable[[nn.Module], nn.Module]) -> nn.Module:
    """Wraps the network held by every ``TensorDictModule`` (or ``module`` itself if none)."""
    from tensordict.nn import TensorDictModule, TensorDictSequential

    holders = [
        m
        for m in module.modules()
        if isinstance(m, TensorDictModule) and not isinstance(m, TensorDictSequential)
    ]
    if not holders:
        return wrap(module)
    for holder in holders:
        holder.module = wrap(holder.module)
    return module


_CAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


class Cast(CompressionStep):
    """Casts the policy's floating parameters and buffers to a lower precision.

    The network inside every ``TensorDictModule`` of the policy is wrapped so that its floating
    inputs are cast to ``dtype`` and its floating outputs back to ``float32``: distributions,
    log-probabilities and the environment keep seeing ``float32``. A 16-bit dtype is fast only
    where the hardware runs its matrix products natively (on CPUs: AVX-512 BF16 or AMX for
    ``bf16``, AVX-512 FP16 for ``fp16``; see :func:`~torchrl_seer.optim.has_native_kernels`);
    elsewhere PyTorch emulates it, several times slower than ``float32``.

    Args:
        dtype: ``"bf16"``, ``"fp16"`` or ``"fp32"`` (no-op control).

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> net, _ = Cast("bf16").apply(nn.Linear(3, 2))
        >>> net(torch.zeros(1, 3)).dtype
        torch.float32
    """

    def __init__(self, dtype: str = "bf16") -> None:
        if dtype not in _CAST_DTYPES:
            raise ValueError(f"Cast dtype must be one of {sorted(_CAST_DTYPES)}, got {dtype!r}")
        self.dtype_name = dtype

    def spec(self) -> str:
        """Returns the pipeline-string form of the step."""
        return self.dtype_name

    def apply(
        self, module: nn.Module, *, plan: TensorDictBase | None = None
    ) -> tuple[nn.Module, TensorDictBase]:
        """Casts ``module`` in place.

        Args:
            module: the module to cast.

        Keyword Args:
            plan: unused (casting has no structural choice).

        Returns:
            The cast module and an empty plan.
        """
        dtype = _CAST_DTYPES[self.dtype_name]
        if dtype is torch.float32:
            return module, TensorDict()
        if not any(p.is_floating_point() for p in module.parameters()):
            raise UnsupportedLayerError(
                f"Cast({self.dtype_name!r}) found no floating-point parameter in "
                f"{type(module).__name__} (already quantized?)"
            )

        def cast(inner: nn.Module) -> nn.Module:
            inner = inner.to(dtype)
            for layer in inner.modules():
                if isinstance(layer, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                    # inputs computed inside the network (e.g. uint8 frames scaled to float)
                    layer.register_forward_pre_hook(_cast_input_to_weight_dtype)
            return _DtypeBoundary(inner, dtype, torch.float32)

        return _wrap_compute_modules(module, cast), TensorDict()


@contextlib.contextmanager
def quiet_torch_ao() -> Iterator[None]:
    """Silences ``torch.ao``'s deprecation warnings (see :class:`Quantize` for why we use it)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*quantiz.*deprecated.*")
        warnings.filterwarnings("ignore", message=".*TypedStorage is deprecated.*")
        # rebuilding a static-int8 structure converts uncalibrated observers; the packet's
        # calibrated scales overwrite the defaults right after
        warnings.filterwarnings("ignore", message=".*must run observer before calling.*")
        yield


_STATIC_OK = (nn.ReLU, nn.Identity, nn.Dropout, *_FLATTEN, nn.Linear, nn.Conv2d)


class _StaticQuantBlock(nn.Module):
    """QuantStub -> fused int8 network -> DeQuantStub (eager-mode static PTQ)."""

    def __init__(self, inner: nn.Sequential) -> None:
        super().__init__()
        from torch.ao.quantization import DeQuantStub, QuantStub

        self.quant = QuantStub()
        self.inner = inner
        self.dequant = DeQuantStub()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dequant(self.inner(self.quant(x)))


class Quantize(CompressionStep):
    """Post-training int8 quantization (PTQ).

    * ``mode="dynamic"`` (default): weights of every ``nn.Linear`` become int8 and activations are
      quantized on the fly per batch (``torch.ao.quantization.quantize_dynamic``, fbgemm/x86
      kernels). Convolutions, if any, stay in floating point.
    * ``mode="static"``: every top-level ``nn.Sequential`` made of ``Conv2d``/``Linear``/``ReLU``/
      ``Flatten`` layers is fused (conv+relu, linear+relu — the "graph fusion" of AcceRL) and
      quantized with activation scales calibrated on ``calibration`` data, so convolutions run in
      int8 too. Other layer types raise :class:`UnsupportedLayerError`.

    A policy held in bf16 or fp16 (e.g. the actor of a low-precision learner) is cast to fp32
    (exactly) before it is quantized.

    Why ``torch.ao`` and not torchao: torch 2.15 marks ``torch.ao.quantization`` deprecated in
    favour of torchao, but torchao 0.18's eager int8 tensor subclasses ran 1.5x-17x *slower*
    than fp32 on this CPU for MLP policies (they target ``torch.compile`` and GPUs), while
    ``quantize_dynamic`` is the only int8 path that is faster on CPU. The deprecation warnings
    are silenced inside this step only.

    Args:
        dtype: ``"int8"`` (the only supported bit width).

    Keyword Args:
        mode: ``"dynamic"`` or ``"static"``.
        calibration: for ``mode="static"``, a callable running the (prepared) policy on
            representative inputs, e.g. ``lambda policy: policy(batch)``. Required for static.

    Examples:
        >>> import torch
        >>> from torchrl.modules import MLP
        >>> net = MLP(in_features=4, out_features=2, num_cells=[32])
        >>> qnet, _ = Quantize("int8").apply(net)
        >>> type(qnet[0]).__name__
        'Linear'
        >>> qnet(torch.zeros(1, 4)).shape
        torch.Size([1, 2])
    """

    def __init__(
        self,
        dtype: str = "int8",
        *,
        mode: str = "dynamic",
        calibration: Callable[[nn.Module], object] | None = None,
    ) -> None:
        if dtype != "int8":
            raise ValueError(f"Quantize supports dtype='int8' only, got {dtype!r}")
        if mode not in ("dynamic", "static"):
            raise ValueError(f"Quantize mode must be 'dynamic' or 'static', got {mode!r}")
        self.dtype_name = dtype
        self.mode = mode
        self.calibration = calibration

    def spec(self) -> str:
        """Returns the pipeline-string form of the step."""
        return "int8" if self.mode == "dynamic" else "int8static"

    def __getstate__(self):
        state = dict(self.__dict__)
        state["calibration"] = None  # receivers load calibrated scales from the packet
        return state

    def apply(
        self, module: nn.Module, *, plan: TensorDictBase | None = None
    ) -> tuple[nn.Module, TensorDictBase]:
        """Quantizes ``module`` in place.

        Args:
            module: the module to quantize.

        Keyword Args:
            plan: when given (rebuild on a worker), static quantization skips calibration: the
                calibrated scales arrive with the weights.

        Returns:
            The quantized module and an empty plan.
        """
        if not any(isinstance(m, nn.Linear) for m in module.modules()) and self.mode == "dynamic":
            raise UnsupportedLayerError(
                f"Quantize('int8', mode='dynamic') quantizes nn.Linear layers only and found none "
                f"in {type(module).__name__}; use mode='static' with calibration data for "
                "convolutional policies"
            )
        # int8 kernels take fp32 weights and activations: a bf16/fp16 policy (e.g. the actor
        # of a low-precision learner) is cast up first, which is exact
        module = module.float()
        with quiet_torch_ao():
            if self.mode == "dynamic":
                from torch.ao.quantization import quantize_dynamic

                module = quantize_dynamic(module, {nn.Linear}, dtype=torch.qint8)
            else:
                module = self._static(module, calibrate=plan is None)
        return module, TensorDict()

    def _static(self, module: nn.Module, *, calibrate: bool) -> nn.Module:
        from torch.ao.quantization import convert, fuse_modules, get_default_qconfig, prepare

        if calibrate and self.calibration is None:
            raise ValueError("Quantize(mode='static') needs calibration=callable(policy)")
        blocks: list[str] = []
        for name, seq in list(_sequentials(module)):
            if any(name.startswith(b + ".") for b in blocks) or not name:
                continue
            for j, child in enumerate(seq):
                if not isinstance(child, _STATIC_OK):
                    raise UnsupportedLayerError(
                        f"static int8 quantization does not support {type(child).__name__} at "
                        f"'{name}.{j}'; supported: Conv2d, Linear, ReLU, Flatten/SquashDims"
                    )
            fuse = [
                [str(j), str(j + 1)]
                for j in range(len(seq) - 1)
                if isinstance(seq[j], (nn.Conv2d, nn.Linear)) and isinstance(seq[j + 1], nn.ReLU)
            ]
            fused = fuse_modules(seq.eval(), fuse) if fuse else seq.eval()
            block = _StaticQuantBlock(fused)
            block.qconfig = get_default_qconfig("x86")
            parent_name, _, attr = name.rpartition(".")
            parent = module.get_submodule(parent_name) if parent_name else module
            setattr(parent, attr, block)
            blocks.append(name)
        if not blocks:
            if isinstance(module, nn.Sequential):
                raise UnsupportedLayerError(
                    "static int8 quantization expects the Sequential networks inside a policy "
                    "(e.g. the module of a TensorDictModule), not a bare Sequential"
                )
            raise UnsupportedLayerError(
                "static int8 quantization found no nn.Sequential network in "
                f"{type(module).__name__}"
            )
        prepare(module, inplace=True)
        if calibrate:
            assert self.calibration is not None
            with torch.no_grad():
                self.calibration(module)
        return convert(module, inplace=True)


class Distill(CompressionStep):
    """Replaces the learner's policy by a smaller *student* trained beside the learner.

    The student is trained by :class:`~torchrl_seer.objectives.DistillationLoss` (KL for
    discrete policies, KL + MSE on the action means for continuous ones) on the learner's recent
    observations, asynchronously with the RL updates: the actor keeps the last shipped student
    until a new one is shipped. Later steps (e.g. :class:`Quantize`) compress the student.

    Args:
        student: the student policy (same ``in_keys``/``out_keys`` as the learner's policy).
            This object is trained in place by the distillation loss.

    Examples:
        >>> import torch
        >>> from torch import nn
        >>> student = nn.Linear(3, 2)
        >>> copy_of_student, _ = Distill(student).apply(nn.Linear(3, 2))
        >>> copy_of_student is student
        False
    """

    def __init__(self, student: nn.Module) -> None:
        self.student = student

    def spec(self) -> str:
        """Returns the pipeline-string form of the step."""
        return "distill"

    def apply(
        self, module: nn.Module, *, plan: TensorDictBase | None = None
    ) -> tuple[nn.Module, TensorDictBase]:
        """Returns a copy of the current student; ``module`` is only checked for compatibility.

        Args:
            module: the learner's policy (interface reference).

        Keyword Args:
            plan: unused.

        Returns:
            A deep copy of the student and an empty plan.
        """
        if isinstance(module, TensorDictModuleBase):
            if not isinstance(self.student, TensorDictModuleBase):
                raise TypeError("Distill: the policy is a TensorDictModule, the student is not")
            if set(module.in_keys) != set(self.student.in_keys) or set(module.out_keys) != set(
                self.student.out_keys
            ):
                raise ValueError(
                    "Distill: student keys differ from the policy's: "
                    f"in {self.student.in_keys} vs {module.in_keys}, "
                    f"out {self.student.out_keys} vs {module.out_keys}"
                )
        return copy.deepcopy(self.student), TensorDict()
