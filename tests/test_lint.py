"""Static checks that run with the suite: ruff (including the exec/eval and pickle bans) on the whole
repository, and a check that no source file deserialises with pickle or runs code from strings."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

# Calls that can run code from data: unpickling (torch.load and friends unpickle), marshal, and the
# exec/eval builtins. numpy.load is only forbidden with allow_pickle (its default is False).
FORBIDDEN_CALLS = {
    "eval", "exec", "builtins.eval", "builtins.exec",
    "torch.load", "torch.serialization.load", "torch.jit.load",
    "pickle.load", "pickle.loads", "pickle.Unpickler", "_pickle.load", "_pickle.loads", "_pickle.Unpickler",
    "cPickle.load", "cPickle.loads", "dill.load", "dill.loads", "joblib.load", "cloudpickle.load", "cloudpickle.loads",
    "marshal.load", "marshal.loads", "shelve.open", "pandas.read_pickle",
}
PICKLE_FLAG_CALLS = {"numpy.load", "numpy.lib.format.read_array"}


def forbidden_calls(source: str, filename: str = "<source>") -> list[str]:
    """'file:line: name' for every forbidden call in ``source``; import aliases are followed
    (``import torch as t; t.load``, ``from pickle import loads as l``)."""
    tree = ast.parse(source, filename)
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else alias.name.split(".")[0]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"

    def dotted(expr: ast.expr) -> str | None:
        if isinstance(expr, ast.Name):
            return aliases.get(expr.id, expr.id)
        if isinstance(expr, ast.Attribute):
            base = dotted(expr.value)
            return f"{base}.{expr.attr}" if base else None
        return None

    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        name = dotted(node.func)
        if name is None:
            continue
        name = name.replace("np.", "numpy.", 1) if name.startswith("np.") else name
        bad = name in FORBIDDEN_CALLS
        if name in PICKLE_FLAG_CALLS:
            flag = next((k.value for k in node.keywords if k.arg == "allow_pickle"), None)
            splat = any(k.arg is None for k in node.keywords)
            bad = splat or (flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False))
        if bad:
            found.append(f"{filename}:{node.lineno}: {name}")
    return found


def source_files() -> list[Path]:
    return sorted(p for p in REPO.rglob("*.py") if not any(part.startswith(".") for part in p.relative_to(REPO).parts))


def test_ruff_is_clean():
    ruff = shutil.which("ruff") or str(Path(sys.executable).with_name("ruff"))
    result = subprocess.run([ruff, "check", "--no-cache", str(REPO)], capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stdout + result.stderr


def test_nothing_unpickles_or_evaluates_code():
    files = source_files()
    assert {"nodes", "reenact_core", "testkit", "tools", "motion_world", "bench", "tests"} <= {p.relative_to(REPO).parts[0] for p in files}
    found = [hit for path in files for hit in forbidden_calls(path.read_text(), str(path.relative_to(REPO)))]
    assert found == [], "calls that can run code from data (use safetensors / json instead):\n" + "\n".join(found)


PLANTED = {
    "import torch\ntorch.load('model.pt')": "torch.load",
    "import torch as t\nt.load(f, weights_only=True)": "torch.load",
    "from torch import load\nload('x')": "torch.load",
    "import torch.serialization\ntorch.serialization.load('x')": "torch.serialization.load",
    "import pickle\npickle.loads(data)": "pickle.loads",
    "from pickle import load as restore\nrestore(f)": "pickle.load",
    "import pickle\npickle.Unpickler(f).load()": "pickle.Unpickler",
    "import numpy as np\nnp.load('a.npy', allow_pickle=True)": "numpy.load",
    "import numpy\nnumpy.load('a.npz', allow_pickle=flag)": "numpy.load",
    "import numpy as np\nnp.load('a.npy', **options)": "numpy.load",
    "eval('1 + 1')": "eval",
    "exec(compile(source, 'x', 'exec'))": "exec",
    "import builtins\nbuiltins.exec('x = 1')": "builtins.exec",
    "import marshal\nmarshal.loads(blob)": "marshal.loads",
}
ALLOWED = [
    "import numpy as np\nnp.load('a.npy')\nnp.load('a.npy', allow_pickle=False)",
    "import pickle\nblob = pickle.dumps({'a': 1})",
    "import safetensors.torch\nsafetensors.torch.load(data)\nsafetensors.torch.load_file('x.safetensors')",
    "import json, ast\njson.loads('{}')\nast.literal_eval('1')",
    "model.eval()\nnet.load_state_dict(sd)\nbackground.eval(u, v)",
    "s = 'torch.load(path) and eval(x) in a string'",
]


@pytest.mark.parametrize("source", list(PLANTED), ids=list(PLANTED.values()))
def test_the_check_finds_planted_calls(source):
    assert [hit.split(": ")[-1] for hit in forbidden_calls(source)] == [PLANTED[source]]


@pytest.mark.parametrize("source", ALLOWED)
def test_the_check_allows_safe_calls(source):
    assert forbidden_calls(source) == []


# -- the import direction: development code uses the product, never the reverse -----------------------------------------

PRODUCT = ("__init__.py", "nodes", "reenact_core")
DEVELOPMENT = {"testkit", "tools", "motion_world", "bench", "tests"}


def imported_top_levels(source: str, package: tuple[str, ...]) -> set[str]:
    """The top-level names ``source`` imports, relative imports resolved against ``package`` (its folder's parts)."""
    names = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level == 0:
                names.add((node.module or "").split(".")[0])
            else:
                base = package[: len(package) - (node.level - 1)]
                parts = [*base, *(node.module.split(".") if node.module else [])] or [a.name for a in node.names]
                names.add(parts[0])
    return names


def product_files() -> list[Path]:
    return [p for p in source_files() if p.relative_to(REPO).parts[0] in PRODUCT]


def test_the_product_never_imports_development_code():
    files = product_files()
    assert {"__init__.py", "nodes", "reenact_core"} == {p.relative_to(REPO).parts[0] for p in files}
    for path in files:
        wrong = imported_top_levels(path.read_text(), path.relative_to(REPO).parent.parts) & DEVELOPMENT
        assert not wrong, f"{path.relative_to(REPO)} imports {sorted(wrong)}: tooling and tests use the product, never the reverse"


def test_the_import_check_sees_relative_imports():
    assert imported_top_levels("from ..testkit import media\n", ("nodes",)) == {"testkit"}
    assert imported_top_levels("from .. import tools\n", ("nodes",)) == {"tools"}
    assert imported_top_levels("from ..reenact_core.embedding import mix\nfrom . import paths\n", ("nodes",)) == {"reenact_core", "nodes"}
