"""The tree's shape held to its bars (`python scripts/architecture_bars.py` prints them): no
class over 250 lines, the coordinator's facade at 15 methods or fewer, no dispatch on a
feature's type in the coordinator, no backend-name branch outside the backend registry, no
import cycle."""

import importlib.util
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "architecture_bars.py"


def bars() -> dict:
    spec = importlib.util.spec_from_file_location("architecture_bars", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.bars()


def test_the_tree_holds_its_bars():
    b = bars()
    lines, largest = b["largest_classes"][0]
    assert lines <= 250, f"{largest} is {lines} lines"
    assert len(b["federation_methods"]) <= 15, b["federation_methods"]
    assert b["isinstance_dispatch"] == []
    assert b["backend_branches"] == []
    assert b["import_cycles"] == []
