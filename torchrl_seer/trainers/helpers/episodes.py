"""Returns of the episodes that end in collected batches, logged at environment frames."""

from __future__ import annotations

from typing import Any

from tensordict import TensorDictBase

__all__ = ["EpisodeReturns"]


class EpisodeReturns:
    """Collects the returns of finished episodes and logs each as ``<prefix>episode_return``.

    Reads ``("next", "done")`` and ``("next", "episode_reward")`` (TorchRL's
    :class:`~torchrl.envs.RewardSum`) of every collected batch.

    Args:
        log_scalar (callable, optional): ``(name, value, step)`` logging function, e.g.
            :meth:`RecipeRun.log_scalar`; ``None`` logs nothing.

    Keyword Args:
        prefix (str, optional): prefix of the logged name. Defaults to ``""``.

    Attributes:
        history (list of (int, float)): ``(environment frames, return)`` of every episode.

    Examples:
        >>> import torch
        >>> from tensordict import TensorDict
        >>> from torchrl_seer.trainers.helpers import EpisodeReturns
        >>> batch = TensorDict({("next", "done"): torch.tensor([[False], [True]]),
        ...                     ("next", "episode_reward"): torch.tensor([[1.0], [3.0]])}, [2])
        >>> returns = EpisodeReturns()
        >>> returns.record(batch, frames=8)
        [3.0]
        >>> returns.history
        [(8, 3.0)]
    """

    def __init__(self, log_scalar: Any = None, *, prefix: str = "") -> None:
        self.log_scalar = log_scalar
        self.prefix = prefix
        self.history: list[tuple[int, float]] = []

    def record(self, batch: TensorDictBase, *, frames: int) -> list[float]:
        """Records the episodes that ended in ``batch``; returns their returns.

        Args:
            batch (TensorDictBase): a collected batch, any batch shape.

        Keyword Args:
            frames (int): environment frames at the end of the batch (the logging step).
        """
        done = batch["next", "done"].reshape(-1)
        returns = batch["next", "episode_reward"].reshape(-1)[done].tolist()
        for value in returns:
            self.history.append((frames, value))
            if self.log_scalar is not None:
                self.log_scalar(f"{self.prefix}episode_return", value, frames)
        return returns

    def state_dict(self) -> dict[str, Any]:
        """The history (checkpointed with the run)."""
        return {"history": list(self.history)}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restores the history."""
        self.history = [tuple(item) for item in state_dict["history"]]
