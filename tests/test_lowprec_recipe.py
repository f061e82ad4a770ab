import importlib.util
import sys
from pathlib import Path

import pytest

RECIPE = Path(__file__).resolve().parents[1] / "examples" / "lowprec_sac_dmc.py"


def _load_recipe():
    spec = importlib.util.spec_from_file_location("lowprec_sac_dmc", RECIPE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["lowprec_sac_dmc"] = module
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow  # ~15 s on 2 cores, mostly DMC + collector start-up
def test_recipe_runs_and_reports_naive_divergence(tmp_path, capsys):
    # no evaluation episode (1000 DMC steps): only the training loop and the report
    recipe = _load_recipe()
    recipe.main(
        [
            "--precision", "bf16", "naive-fp16",
            "--total-steps", "60", "--init-random-steps", "30", "--eval-every", "100000",
            "--batch-size", "16", "--hidden", "16", "--out-dir", str(tmp_path),
        ]
    )  # fmt: skip
    (run_dir,) = tmp_path.iterdir()
    report = (run_dir / "report.md").read_text()
    assert (run_dir / "returns.png").stat().st_size > 0
    rows = {
        line.split("|")[1].strip(): line for line in report.splitlines() if line.startswith("| ")
    }
    assert "bf16" in rows and "naive-fp16" in rows
    assert rows["naive-fp16"].split("|")[4].strip() != "no"  # diverged at some step
    assert rows["bf16"].split("|")[4].strip() == "no"
    assert list(run_dir.rglob("*.csv"))  # TorchRL CSV logger output
    assert "Report:" in capsys.readouterr().out
