"""The committed stubs must be exactly what scripts/generate_proto.py makes of proto/."""

import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parent.parent
STUBS = ROOT / "proto" / "fedstream" / "v1"


def test_generated_stubs_are_fresh(tmp_path):
    subprocess.run([sys.executable, str(ROOT / "scripts" / "generate_proto.py"), "--out",
                    str(tmp_path)], check=True)
    fresh = {p.name: p.read_bytes() for p in (tmp_path / "fedstream" / "v1").iterdir()}
    committed = {p.name: p.read_bytes() for p in STUBS.iterdir()
                 if p.suffix in (".py", ".pyi") and p.name != "__init__.py"}
    assert fresh.keys() == committed.keys()
    stale = [name for name in fresh if fresh[name] != committed[name]]
    assert not stale, f"stale stubs {stale}: run `python scripts/generate_proto.py` and commit"
