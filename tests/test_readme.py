"""The README stays true to the code: its initializer table and its config groups."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from initbench.cli import group_choices

README = Path(__file__).resolve().parent.parent / "README.md"
SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "initializer_table.py"


def test_initializer_table_matches_the_registry():
    spec = importlib.util.spec_from_file_location("initializer_table", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = README.read_text()
    assert module.replace_in(text) == text, "run: python scripts/initializer_table.py --write"


def test_every_model_optimizer_and_data_choice_is_in_the_readme():
    text = README.read_text()
    for group in ("model", "optimizer", "data", "experiment"):
        for choice in group_choices()[group]:
            assert f"`{choice}`" in text, f"{group}={choice} missing from the README"
