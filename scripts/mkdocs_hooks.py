"""MkDocs hook: the benchmark and experiment results live beside their code (bench/RESULTS.md,
experiments/README.md and its plots); the site takes them from there under the same paths,
so nothing is copied into docs/ and nothing can go stale."""

from __future__ import annotations

import pathlib

from mkdocs.structure.files import File, Files

ROOT = pathlib.Path(__file__).resolve().parent.parent
FROM_THE_TREE = ["bench/RESULTS.md", "experiments/README.md", "experiments/results/*.png"]


def on_files(files: Files, config) -> Files:
    for pattern in FROM_THE_TREE:
        for path in sorted(ROOT.glob(pattern)):
            src = path.relative_to(ROOT).as_posix()
            files.append(File.generated(config, src, abs_src_path=str(path)))
    return files
