"""The committed stubs must be exactly what scripts/generate_proto.py makes of proto/."""

import pathlib
import re
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


def test_every_proto_file_names_its_package_for_other_languages():
    """One Go package, one Java package, one C# namespace for the three files, so generated
    code imports itself without mappings invented by the user."""
    options = {}
    for path in sorted((ROOT / "proto" / "fedstream" / "v1").glob("*.proto")):
        text = path.read_text()
        found = {k: v.strip('"') for k, v in re.findall(r'^option (\w+) = ("[^"]*"|\w+);', text,
                                                         re.M)}
        assert "package fedstream.v1;" in text
        options[path.name] = {k: v for k, v in found.items() if k != "java_outer_classname"}
        assert found["java_outer_classname"].endswith("Proto")
    first, *rest = options.values()
    assert all(o == first for o in rest), options
    assert first["go_package"].endswith("/fedstream/v1;fedstreamv1")
    assert first["java_package"] == "dev.fedstream.v1" and first["java_multiple_files"] == "true"
