"""Imports of packages that an extra of ``torchrl_seer`` provides, naming the extra on failure."""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["import_optional"]


def import_optional(module: str, *, extra: str) -> ModuleType:
    """Imports ``module``, or raises an :class:`ImportError` that names the extra providing it.

    ``torchrl_seer`` and its subpackages import without the environment libraries, Ray or the
    loggers; the functions that need one of them import it through this helper when called.

    Args:
        module: the dotted name of the module to import, e.g. ``"dm_control.suite"``.

    Keyword Args:
        extra: the ``torchrl_seer`` extra that installs it, e.g. ``"dmc"``.

    Returns:
        The imported module.

    Raises:
        ImportError: when ``module`` (or one of its own dependencies) is not installed; the
            message says which extra to install and how.

    Examples:
        >>> from torchrl_seer.optional_dependencies import import_optional
        >>> import_optional("math", extra="examples").sqrt(4.0)
        2.0
        >>> import_optional("a_package_that_is_not_installed", extra="atari")
        Traceback (most recent call last):
            ...
        ImportError: a_package_that_is_not_installed is needed here and is not installed; ...
    """
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise ImportError(
            f"{module} is needed here and is not installed; install the {extra!r} extra of "
            f'torchrl_seer: pip install "torchrl_seer[{extra}]" (from a source checkout: '
            f'pip install -e ".[{extra}]"). Cause: {error}'
        ) from error
