"""The package imports with its core dependencies only; extras are needed only where used."""

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import torchrl_seer

ROOT = Path(__file__).resolve().parents[1]

# Top-level modules that only the extras install, by extra.
EXTRA_MODULES = {
    "atari": ["gymnasium", "ale_py", "cv2"],
    "dmc": ["dm_control", "mujoco"],
    "examples": ["matplotlib", "hydra", "omegaconf"],
    "loggers": ["tensorboard", "wandb"],
    "ray": ["ray"],
}


def _run_without_extras(body: str) -> subprocess.CompletedProcess:
    """Runs ``body`` in a fresh interpreter in which no module of any extra can be imported."""
    blocked = sorted(m for modules in EXTRA_MODULES.values() for m in modules)
    script = textwrap.dedent(
        f"""
        import sys
        for name in {blocked!r}:
            sys.modules[name] = None  # "import name" raises ImportError
        """
    ) + textwrap.dedent(body)
    return subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_every_module_imports_without_the_extras():
    result = _run_without_extras(
        """
        import importlib, pkgutil
        import torchrl_seer
        names = [m.name for m in pkgutil.walk_packages(torchrl_seer.__path__, "torchrl_seer.")]
        recipe_toolkit = "torchrl_seer.trainers.helpers"  # needs the examples extra
        for name in names:
            if name != recipe_toolkit and not name.startswith(recipe_toolkit + "."):
                importlib.import_module(name)
        try:
            importlib.import_module(recipe_toolkit)
        except ImportError as error:
            assert "'examples' extra" in str(error), error
        else:
            raise AssertionError(f"{recipe_toolkit} imported without the examples extra")
        print(len(names))
        """
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stdout.split()[-1]) > 40  # every module of the package was imported


def test_env_factories_name_their_extra_when_it_is_missing():
    result = _run_without_extras(
        """
        from torchrl_seer.envs import make_atari_env, make_dmc_env
        for factory, args, extra in (
            (make_atari_env, ("Pong",), "atari"),
            (make_dmc_env, ("cartpole", "swingup"), "dmc"),
        ):
            try:
                factory(*args)
            except ImportError as error:
                assert f'pip install "torchrl_seer[{extra}]"' in str(error), str(error)
                assert f'pip install -e ".[{extra}]"' in str(error), str(error)
            else:
                raise AssertionError(f"{factory.__name__} built an env without its extra")
        print("ok")
        """
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"


def test_extras_cover_the_optional_modules_and_core_stays_small():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    core = {dep.split(">")[0].split("=")[0].split("<")[0] for dep in project["dependencies"]}
    assert core == {"torch", "torchrl", "tensordict", "numpy", "zstandard", "tqdm"}
    extras = project["optional-dependencies"]
    assert set(EXTRA_MODULES) | {"docs", "dev", "all"} == set(extras)
    assert "torchrl_seer[examples]" in extras["dev"]  # the tests run the recipes
    assert any(dep.startswith("hydra-core") for dep in extras["examples"])


def test_package_ships_its_type_marker():
    assert (Path(torchrl_seer.__file__).parent / "py.typed").is_file()
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["torchrl_seer"]
