"""The code in the docs runs as written."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def python_blocks(md: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", md.read_text(), flags=re.S)


def test_iterator_doc_example_runs_in_a_foreign_loop():
    (code,) = python_blocks(ROOT / "docs" / "iterator.md")
    scope: dict = {}
    exec(compile(code, "docs/iterator.md", "exec"), scope)  # noqa: S102 - our own documentation
    assert scope["loader"].epoch == 1 and scope["state"]["batch"] == 2
    assert scope["loss"].item() > 0
