"""No method moves tensors to the host inside a loop (issue: the GPU path).

A `.cpu()` or `.numpy()` call inside a loop or comprehension synchronizes the device once per
iteration; on a GPU that serializes a loop over samples or batches. The test reads every vizlib
module's source and fails on any such call outside the places listed here, each with its reason.
"""
import ast
from pathlib import Path

import vizlib

PACKAGE = Path(vizlib.__file__).parent
# Modules that draw or build data: they work on the host by nature.
HOST_MODULES = {"viz.py", "widgets.py", "explorer.py", "data.py"}
# (module, function): why a host transfer per iteration is right there.
ALLOWED = {
    ("perturbation.py", "inpaint"): "scikit-image's biharmonic inpainting is a CPU algorithm, per image",
    ("models.py", "cache_key"): "hashes the bytes of data and weights, once per tensor, on the host",
    ("robustness.py", "map_similarity"): "the two maps ranked by scipy, a loop over the pair",
}


def host_transfers_in_loops(path: Path):
    tree = ast.parse(path.read_text())
    functions = [node for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]
    owner = {}
    for function in functions:
        for node in ast.walk(function):
            owner.setdefault(id(node), function.name)    # walk order: outer functions first
    for loop in ast.walk(tree):
        if isinstance(loop, (ast.For, ast.While)):
            bodies = loop.body
        elif isinstance(loop, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            bodies = [loop.elt]
        elif isinstance(loop, ast.DictComp):
            bodies = [loop.key, loop.value]
        else:
            continue
        for body in bodies:
            for node in ast.walk(body):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) \
                        and node.func.attr in ("cpu", "numpy"):
                    yield owner.get(id(node), "<module>"), node.lineno, ast.unparse(node)


def test_no_host_transfer_inside_a_loop():
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name in HOST_MODULES:
            continue
        for function, line, call in host_transfers_in_loops(path):
            if (path.name, function) not in ALLOWED:
                found.append(f"{path.name}:{line} in {function}: {call}")
    assert not found, "host transfers inside loops:\n" + "\n".join(found)


def test_the_inspection_finds_a_transfer_in_a_loop(tmp_path):
    source = tmp_path / "example.py"
    source.write_text("def f(xs):\n    return [x.cpu() for x in xs]\n\ndef g(x):\n    return x.cpu()\n")
    assert [(f, call) for f, _, call in host_transfers_in_loops(source)] == [("f", "x.cpu()")]


def test_every_allowed_place_exists():
    names = {(path.name, node.name) for path in PACKAGE.glob("*.py")
             for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)}
    assert set(ALLOWED) <= names
