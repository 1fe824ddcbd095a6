"""No second default: a config key (siren/config_keys.py) gets its default from
configs/defaults.yaml only. Every module of `siren/` is parsed; a function parameter named like
a config key with a non-None default, a `<mapping>.get("<key>", <literal>)`, or a class field
named like a config key with a literal value (outside the config modules) is a second default."""

from __future__ import annotations

import ast
import sys
from pathlib import Path

from siren.config_keys import BY_NAME

REPO = Path(__file__).resolve().parent.parent
CONFIG_MODULES = {"config.py", "config_keys.py"}
# Parameter names that stand for a config key in the functions that take it.
ALIASES = {"tol": "probe_tol", "c_rule": "probe_c_rule", "refit": "probe_refit", "floor": "layer_weight_floor",
           "width_cap": "head_width_cap", "threshold": "decision_threshold"}


def _literal(node) -> bool:
    try:
        ast.literal_eval(node)
    except (ValueError, TypeError, SyntaxError, MemoryError, RecursionError):
        return False
    return True


def _is_none(node) -> bool:
    return isinstance(node, ast.Constant) and node.value is None


def _parameters(node):
    a = node.args
    positional = a.posonlyargs + a.args
    yield from zip(positional[len(positional) - len(a.defaults):], a.defaults)
    yield from ((arg, d) for arg, d in zip(a.kwonlyargs, a.kw_defaults) if d is not None)


def second_defaults(root: Path, keys=frozenset(BY_NAME)) -> list[str]:
    """'path:line: what' for every second default of a config key in the modules under `root`."""
    out = []
    for path in sorted(root.rglob("*.py")):
        if path.parent == root and path.name in CONFIG_MODULES:
            continue
        where = path.relative_to(root.parent)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                out += [f"{where}:{d.lineno}: parameter {arg.arg}={ast.unparse(d)}"
                        for arg, d in _parameters(node)
                        if (arg.arg in keys or ALIASES.get(arg.arg) in keys) and not _is_none(d)]
            elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get"
                  and len(node.args) == 2 and isinstance(node.args[0], ast.Constant) and node.args[0].value in keys
                  and _literal(node.args[1]) and not _is_none(node.args[1])):
                out.append(f"{where}:{node.lineno}: .get({node.args[0].value!r}, {ast.unparse(node.args[1])})")
            elif isinstance(node, ast.ClassDef):
                out += [f"{where}:{st.lineno}: field {node.name}.{(getattr(st, 'target', None) or st.targets[0]).id} = {ast.unparse(st.value)}"
                        for st in node.body
                        if isinstance(st, (ast.AnnAssign, ast.Assign)) and st.value is not None
                        and isinstance(getattr(st, "target", None) or st.targets[0], ast.Name)
                        and (getattr(st, "target", None) or st.targets[0]).id in keys
                        and _literal(st.value) and not _is_none(st.value)]
    return out


def test_no_config_key_has_a_second_default():
    found = second_defaults(REPO / "siren")
    assert not found, "defaults of config keys outside configs/defaults.yaml:\n" + "\n".join(found)


def test_the_scan_sees_each_kind(tmp_path):
    """The scan can fail: each kind of second default is found."""
    pkg = tmp_path / "siren"
    pkg.mkdir()
    (pkg / "m.py").write_text("def f(x, *, patience=20, seed=None, tol=1e-4):\n    return cfg.get('pruner', 'median')\n"
                              "class C:\n    n_trials: int = 32\n    other = 1\n")
    assert [h.split(": ", 1)[1] for h in second_defaults(pkg)] == [
        "parameter patience=20", "parameter tol=0.0001", "field C.n_trials = 32", ".get('pruner', 'median')"]


if __name__ == "__main__":   # python tests/test_config_defaults.py [siren folder]: list them
    hits = second_defaults(Path(sys.argv[1]) if len(sys.argv) > 1 else REPO / "siren")
    print("\n".join(hits))
    print(len(hits), "second defaults")
