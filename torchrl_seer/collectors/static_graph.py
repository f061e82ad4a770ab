"""StaticGraph: the last compression step, running the compressed actor as a static graph.

Once a policy is compressed, what is left of an actor's inference time at small batches is
largely Python: module calls and, for int8 dynamic quantization, the per-layer dispatch of the
quantized kernels. A static graph removes it. Two backends are offered, and they behave very
differently on compressed policies (see ``docs/accerl.md`` for the measurements):

* ``"trace"``: ``torch.jit.trace`` then ``torch.jit.freeze`` (weights folded in as
  constants). It captures int8 dynamic-quantized layers, and is the backend that runs them
  faster. TorchScript is deprecated upstream in favour of ``torch.compile``/``torch.export``;
  its deprecation warnings are silenced inside this step only.
* ``"compile"``: ``torch.compile`` (TorchInductor). TorchDynamo skips ``torch.ao`` quantized
  modules, so an int8 policy gains nothing from it, and ``torch.export`` refuses their packed
  weights outright; it compiles fp32/bf16 policies, at a cost of seconds per compilation.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from tensordict import TensorDict, TensorDictBase
from torch import nn

from torchrl_seer.collectors.compression_steps import CompressionStep, _wrap_compute_modules

__all__ = ["StaticGraph"]

_BACKENDS = ("trace", "compile")


def _forget_graphs(module: Any, incompatible_keys: Any) -> None:
    """Load-state-dict hook: graphs built before the load hold the old weights."""
    module._graphs.clear()


class _StaticGraphModule(nn.Module):
    """Runs ``inner`` through a graph built at its first call for each input signature.

    ``inner`` stays a submodule, so ``state_dict`` (and the weight packets built from it) is
    unchanged by the wrapper; the graphs are not submodules and are rebuilt after a
    ``load_state_dict``. A backend that fails on ``inner`` warns once and leaves it eager.
    """

    _graphs: dict[Any, Any]
    _failed: bool

    def __init__(self, inner: nn.Module, backend: str) -> None:
        super().__init__()
        self.inner = inner
        self.backend = backend
        object.__setattr__(self, "_graphs", {})
        object.__setattr__(self, "_failed", False)
        self.register_load_state_dict_post_hook(_forget_graphs)

    def _fall_back(self, error: Exception) -> None:
        object.__setattr__(self, "_failed", True)
        warnings.warn(
            f"StaticGraph({self.backend!r}) could not build a graph of "
            f"{type(self.inner).__name__} ({type(error).__name__}: {error}); this actor runs "
            "it eagerly (same outputs, no speed-up).",
            RuntimeWarning,
            stacklevel=3,
        )

    def _build(self, args: tuple[torch.Tensor, ...]):
        if self.backend == "compile":
            return torch.compile(self.inner, dynamic=False)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
            traced = torch.jit.trace(self.inner.eval(), args, check_trace=False)
            return torch.jit.freeze(traced.eval())

    def forward(self, *args):
        if self._failed or not args or not all(isinstance(a, torch.Tensor) for a in args):
            return self.inner(*args)
        signature = (
            tuple((a.shape, a.dtype) for a in args) if self.backend == "trace" else "compiled"
        )
        graph = self._graphs.get(signature)
        try:
            if graph is None:
                with torch.no_grad():
                    graph = self._build(args)
                self._graphs[signature] = graph
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning, message=".*torch.jit")
                return graph(*args)
        except Exception as error:  # a backend missing or unable to capture these layers
            self._graphs.pop(signature, None)
            self._fall_back(error)
            return self.inner(*args)


class StaticGraph(CompressionStep):
    """Runs the compressed policy's networks as static graphs (the pipeline's last step).

    The network inside every ``TensorDictModule`` of the compressed policy is wrapped so that
    its first call for a given input shape builds a graph with ``backend``, which later calls
    of that shape reuse. The graph computes what the eager network computes: int8 graphs run
    the same kernels (identical outputs); fp32 graphs may fuse operations (outputs within
    ``1e-5``). Parameter names, weight packets and the policy's interface are unchanged, so a
    worker rebuilds the graph from each shipped packet at its first step with it.

    Which backend is faster depends on the network, the batch and the CPU: measure it (the
    ``auto`` compression of :func:`~torchrl_seer.collectors.select_compression` tries
    ``int8+trace`` beside plain ``int8`` and keeps it only where it is faster).

    Limits: building a graph costs time at the first step after every weight shipment (a
    fraction of a second to trace a 1024-wide MLP; seconds to compile). ``trace`` records the
    path one call takes through the network's Python code: a network whose ``forward``
    branches on tensor *values* is not supported (branches on shapes and dtypes are, since a
    graph is built per input shape and dtype). A backend that
    cannot capture the network (``torch.compile`` without a working C++ toolchain, an
    operation ``torch.jit.trace`` does not support) raises a ``RuntimeWarning`` naming the
    error, and that network runs eagerly.

    Args:
        backend: ``"trace"`` (``torch.jit.trace`` + ``freeze``) or ``"compile"``
            (``torch.compile``).

    Examples:
        >>> import torch
        >>> from torchrl.modules import MLP
        >>> from torchrl_seer.collectors import PolicyCompressor
        >>> net = MLP(in_features=4, out_features=2, num_cells=[64, 64])
        >>> compressor = PolicyCompressor.from_spec("int8+trace")
        >>> compressor.steps[-1]
        StaticGraph('trace')
        >>> graph_net, _ = compressor.compress(net)
        >>> eager_net, _ = PolicyCompressor.from_spec("int8").compress(net)
        >>> x = torch.randn(16, 4)
        >>> torch.equal(graph_net(x), eager_net(x))
        True
    """

    def __init__(self, backend: str = "trace") -> None:
        if backend not in _BACKENDS:
            raise ValueError(f"StaticGraph backend must be one of {_BACKENDS}, got {backend!r}")
        self.backend = backend

    def spec(self) -> str:
        """Returns the pipeline-string form of the step (the backend's name)."""
        return self.backend

    def apply(
        self, module: nn.Module, *, plan: TensorDictBase | None = None
    ) -> tuple[nn.Module, TensorDictBase]:
        """Wraps the networks of ``module`` in place; graphs are built at their first call.

        Args:
            module: the compressed policy.

        Keyword Args:
            plan: unused (the step makes no structural choice).

        Returns:
            The wrapped module and an empty plan.
        """
        return _wrap_compute_modules(
            module, lambda inner: _StaticGraphModule(inner, self.backend)
        ), TensorDict()
