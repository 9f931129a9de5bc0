"""The import direction of the package: model <- trainer, model <- import/export.

Import/export (export, weights_import, keras_applications, and the checkpoint reader they share with
the trainer) never imports the trainer, directly or through another module of the project. Read
statically from the sources with ``ast`` (function-level imports included), so the check imports
nothing and takes milliseconds. The other half of the direction (the model library imports no
TensorFlow under ``KERAS_BACKEND=jax``) is asserted inside the JAX subprocess that
tests/test_jax_backend.py already starts.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
IMPORT_EXPORT = ("efficientnetv2.export", "efficientnetv2.weights_import", "efficientnetv2.keras_applications")
TRAINER = ("efficientnetv2.training", "efficientnetv2.progressive")


def source_file(module, root=ROOT):
    """The source file of ``module`` under ``root`` (``a/b.py`` or ``a/b/__init__.py``), or None."""
    base = os.path.join(root, *module.split("."))
    for path in (base + ".py", os.path.join(base, "__init__.py")):
        if os.path.isfile(path):
            return path
    return None


def imports_of(module, root=ROOT):
    """Every name ``module`` imports anywhere in its source: ``import a.b`` gives a.b, ``from a import
    b`` gives a and a.b (b may be a module or a name in a; the caller keeps those with a file)."""
    path = source_file(module, root)
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    package = module if path.endswith("__init__.py") else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # Relative: against the module's package, one level up per extra dot.
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def project_closure(start, root=ROOT):
    """{module: the module that imported it} for ``start`` and every module with a source under
    ``root`` that it imports, transitively (third-party packages are not followed)."""
    seen, queue = {m: None for m in start}, list(start)
    while queue:
        module = queue.pop()
        for imported in imports_of(module, root):
            if imported not in seen and source_file(imported, root):
                seen[imported] = module
                queue.append(imported)
    return seen


def _chain(seen, module):
    chain = [module]
    while seen[chain[-1]] is not None:
        chain.append(seen[chain[-1]])
    return " <- ".join(chain)


def _trainer_in(seen, trainer=TRAINER):
    return sorted(m for m in seen if m in trainer or m.startswith(tuple(t + "." for t in trainer)))


@pytest.mark.parametrize("module", IMPORT_EXPORT)
def test_import_export_never_imports_the_trainer(module):
    seen = project_closure([module])
    assert "efficientnetv2.model" in seen or module.endswith("keras_applications")  # The walk follows.
    found = _trainer_in(seen)
    assert not found, f"{module} imports the trainer: {'; '.join(_chain(seen, m) for m in found)}"


def test_the_check_finds_an_import_inside_a_function_through_another_module(tmp_path):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "io.py").write_text("from . import reader\n")
    (package / "reader.py").write_text("def read():\n    from pkg.training import fit\n")
    (package / "training.py").write_text("def fit():\n    pass\n")
    seen = project_closure(["pkg.io"], root=str(tmp_path))
    assert _trainer_in(seen, ("pkg.training",)) == ["pkg.training"]
    assert _chain(seen, "pkg.training") == "pkg.training <- pkg.reader <- pkg.io"
