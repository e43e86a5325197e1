"""The shape of usseg_sdk: no import circle (function-level imports included), a library that knows nothing of
argparse, runtime flags declared once (usseg_sdk.config) for every command, export's calibration a thin caller."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import usseg_sdk
from usseg_sdk.config import SegmenterConfig

PACKAGE = Path(usseg_sdk.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _imports(path: Path, name: str, known: set[str]) -> set[str]:
    """usseg_sdk modules that ``path`` imports anywhere in the file (module level or inside functions)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)  # `from pkg import submodule`
    return {m for m in found if m in known and m != name}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1 visiting, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle_in_usseg_sdk():
    modules = _modules()
    graph = {name: _imports(path, name, set(modules)) for name, path in modules.items()}
    graph = {name: {m for m in deps if m != "usseg_sdk"} for name, deps in graph.items()}  # the package root
    assert _find_cycle(graph) is None, f"import cycle: {' -> '.join(_find_cycle(graph) or [])}"


def test_the_cycle_finder_finds_one():
    assert _find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


@pytest.mark.parametrize("name", sorted(n for n in _modules() if not n.startswith("usseg_sdk.cli")
                                        and n != "usseg_sdk.config"))
def test_library_modules_do_not_parse_arguments(name):
    """Commands live in usseg_sdk.cli; runtime flags in usseg_sdk.config; nothing else touches argparse."""
    tree = ast.parse(_modules()[name].read_text())
    imported = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
    assert "argparse" not in imported
    defined = {n.name for n in tree.body if isinstance(n, ast.FunctionDef)}
    assert not {"add_arguments", "run"} & defined


def test_every_command_builds_its_config_from_the_same_runtime_flags():
    from usseg_sdk.cli import build_parser
    from usseg_sdk.config import config_from_args

    flags = ["--threads", "3", "--tile-size", "32x48", "--overlap", "4", "--no-tiling"]
    commands = {
        "predict": ["predict", "src", "-m", "model", "-o", "out"],
        "calibrate": ["calibrate", "-m", "model", "--images", "i", "--masks", "m", "--out", "o"],
        "bench": ["bench", "-m", "model"],
    }
    parser = build_parser()
    want = SegmenterConfig.from_env({}, intra_op_threads=3, tile_size=(32, 48), overlap=4, tiling=False)
    for argv in commands.values():
        args = parser.parse_args([*argv, *flags])
        assert config_from_args(args, environ={}) == want

