"""Every ```python block of README.md and docs/ runs as written.

A block runs on its own, in a fresh namespace: snippets must be self-contained. An HTML comment
on the line just above a block's fence (invisible in the rendered page) changes how it runs:
``<!-- snippet: slow -->`` marks it slow (long runs), ``<!-- snippet: skip REASON -->`` skips it
(e.g. it needs a Ray cluster).
"""

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.MULTILINE | re.DOTALL)
MARKER = re.compile(r"<!-- snippet: (slow|skip)\s*(.*?)\s*-->\s*$")


def _snippets():
    for page in PAGES:
        text = page.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
            marks = []
            marker = MARKER.search(before)
            if marker and marker.group(1) == "slow":
                marks.append(pytest.mark.slow)
            elif marker:
                marks.append(pytest.mark.skip(reason=marker.group(2) or "marked skip"))
            name = f"{page.relative_to(ROOT)}:{line}"
            yield pytest.param(match.group(1), id=name, marks=marks)


SNIPPETS = list(_snippets())


def test_readme_has_a_snippet_per_part():
    readme = [p for p in SNIPPETS if p.id.startswith("README.md")]
    code = "\n".join(p.values[0] for p in readme)
    for part in (
        "FreezeEncoderHook",
        "DeltaFrameStorage",
        "QuantizedStorage",
        "CompressedPolicy",
        "LowPrecisionSACLoss",
    ):
        assert part in code, part


@pytest.mark.parametrize("code", SNIPPETS)
def test_snippet_runs(code, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # files a snippet writes land in a temporary folder
    exec(compile(code, "<snippet>", "exec"), {"__name__": "__main__"})
