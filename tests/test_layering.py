"""The import direction of the package: model <- trainer, model <- import/export.

The layout shows it: ``efficientnetv2/*.py`` is the model library, ``efficientnetv2/train/`` the
trainer, ``efficientnetv2/io/`` import/export (checkpoints, export, weights import). Import/export
never imports the trainer, and the model library imports neither, directly or through another module
of the project. Read
statically from the sources with ``ast`` (function-level imports included), so the check imports
nothing and takes milliseconds. The other half of the direction (the model library imports no
TensorFlow under ``KERAS_BACKEND=jax``) is asserted inside the JAX subprocess that
tests/test_jax_backend.py already starts.
"""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _modules(folder, package):
    return sorted(f"{package}.{name[:-3]}" for name in os.listdir(os.path.join(ROOT, folder))
                  if name.endswith(".py") and name != "__init__.py")


MODEL_LIBRARY = _modules("efficientnetv2", "efficientnetv2") + ["efficientnetv2"]
IMPORT_EXPORT = _modules(os.path.join("efficientnetv2", "io"), "efficientnetv2.io")
TRAINER = ("efficientnetv2.train",)
# The one edge allowed the other way: ``build_model(weights=...)`` loads weights as keras.applications'
# constructors do, with an import inside the function that runs only when weights are asked for.
WEIGHTS_EDGE = ("efficientnetv2.model", "efficientnetv2.io.weights_import")


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


def project_closure(start, root=ROOT, cut=()):
    """{module: the module that imported it} for ``start`` and every module with a source under
    ``root`` that it imports, transitively (third-party packages are not followed; nor are the
    ``(importer, imported)`` edges in ``cut``)."""
    seen, queue = {m: None for m in start}, list(start)
    while queue:
        module = queue.pop()
        for imported in imports_of(module, root):
            if (module, imported) in cut:
                continue
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


def test_the_layout_holds_what_it_should():
    assert {"efficientnetv2.model", "efficientnetv2.blocks", "efficientnetv2.variants"} <= set(MODEL_LIBRARY)
    assert {"efficientnetv2.io.export", "efficientnetv2.io.checkpointing"} <= set(IMPORT_EXPORT)


@pytest.mark.parametrize("module", IMPORT_EXPORT)
def test_import_export_never_imports_the_trainer(module):
    seen = project_closure([module])
    found = _trainer_in(seen)
    assert not found, f"{module} imports the trainer: {'; '.join(_chain(seen, m) for m in found)}"


@pytest.mark.parametrize("module", MODEL_LIBRARY)
def test_the_model_library_imports_neither_the_trainer_nor_import_export(module):
    seen = project_closure([module], cut={WEIGHTS_EDGE})
    found = _trainer_in(seen, TRAINER + ("efficientnetv2.io",))
    assert not found, f"{module} imports {'; '.join(_chain(seen, m) for m in found)}"


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


def test_the_weights_edge_is_inside_build_model_only():
    """The allowed edge stays a function-level import of ``build_model``: at module level it would
    load import/export (and TensorFlow) with every model."""
    path = source_file(WEIGHTS_EDGE[0])
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    top_level = {alias.name if isinstance(node, ast.Import) else node.module
                 for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))
                 for alias in node.names}
    assert not any(name and name.startswith("efficientnetv2.io") for name in top_level)
    build = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "build_model")
    inner = {n.module for n in ast.walk(build) if isinstance(n, ast.ImportFrom)}
    assert WEIGHTS_EDGE[1] in inner
