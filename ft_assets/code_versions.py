"""Code versions of assets: a short hash of the source of every project module an asset uses.

Nothing is imported: modules are found by parsing source with ``ast``. An asset's code version
hashes the name and the bytes of each of these files, in name order:

- its shell module (the ``assets.py`` that defines it), whole: its config classes, constants and
  helpers all shape the asset;
- every ``ft_assets`` module the asset's function uses, directly or not. In the shell module only
  the asset function is followed, with what it reaches there: the module-level names it uses
  (imports; functions, classes and assignments of the module, followed in turn; a parameter or
  local variable named like one of them is not), imports written inside those bodies, and string
  literals that name a project module (a process started with ``python -m``, a fork-server
  preload). From each module found, every import anywhere in its file counts (inside functions
  too), and so do the named modules and the package ``__init__`` files on the way.

So a shell module defining several assets gives each only the modules its own function reaches:
editing ``splitting.py`` changes the splits' code version, never ``raw_examples``'. Other modules
count whole: a module imported for one function brings all of its imports. This module is left
out, since it computes versions and shapes no output.

Speed: every process that loads the definitions (the UI, each step) needs the versions, and
parsing the whole package costs about a third of ``import dagster``. So only shell modules are
parsed whole; in the others a regular expression finds each statement that begins with ``import``
or ``from ... import`` (at the start of a logical line, or after ``:`` or ``;``) and ``ast`` parses
that statement alone; a test checks that this finds every import a full parse finds. The cyclic
garbage collector is paused meanwhile: each of its passes would scan all of dagster's objects.
What remains costs some 40 ms of CPU per process.
"""

from __future__ import annotations

import ast
import contextlib
import functools
import gc
import hashlib
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent
ROOT = PACKAGE.parent  # the folder holding the ft_assets package
_IMPORT = re.compile(rb"\bimport\b")
_SPACE = rb"(?:[ \t]|\\\r?\n)"  # a blank, or a backslash that continues the line
# What may come before ``import`` on its logical line: nothing, or something ending in ``;`` or ``:``, then ``from x``.
_STATEMENT_HEAD = re.compile(rb"(?s:.*[;:])?%s*((?:from%s+[\w.]+%s+)?)" % (_SPACE, _SPACE, _SPACE))
_DEFINITIONS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)
_ASSIGNMENTS = (ast.Assign, ast.AnnAssign, ast.AugAssign)


@functools.cache
def _path(root: Path, module: str) -> Path | None:
    """Return the source file of ``module`` under ``root`` (a module file or a package ``__init__``)."""
    parts = module.split(".")
    if not all(part.isidentifier() for part in parts):
        return None
    base = root.joinpath(*parts)
    for path in (base.with_name(f"{parts[-1]}.py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _file(root: Path, module: str) -> Path:
    path = _path(root, module)
    if path is None:
        raise ModuleNotFoundError(f"no source for module {module} under {root}")
    return path


@functools.cache
def _source(path: Path) -> bytes:
    return path.read_bytes()


def _package(module: str) -> str:
    return module.split(".", maxsplit=1)[0]


def _is_module(root: Path, package: str, name: str) -> bool:
    return (name == package or name.startswith(f"{package}.")) and _path(root, name) is not None


def _import_targets(root: Path, module: str, node: ast.Import | ast.ImportFrom) -> set[str]:
    """Return the project modules that the import statement ``node`` (written in ``module``) loads."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: from the module's package, one level up per extra dot
            parts = module.split(".")
            if _file(root, module).name != "__init__.py":
                parts.pop()
            base = ".".join([*parts[: len(parts) - node.level + 1], *([base] if base else [])])
        names = [base, *(f"{base}.{alias.name}" for alias in node.names)]  # ``from a import b``: b may be a module
    return {name for name in names if _is_module(root, _package(module), name)}


def _parents(module: str) -> set[str]:
    parts = module.split(".")
    return {".".join(parts[:end]) for end in range(1, len(parts))}


def _import_statements(source: bytes, package: str) -> list[ast.stmt]:
    """Return the import statements of ``source`` that can load a module of ``package``.

    Each is found from its ``import`` word and cut to its logical line; only relative ones and those
    that name the package are parsed (together, or one by one when some text was in a string or comment).
    """
    texts = []
    for word in _IMPORT.finditer(source):
        line = source.rfind(b"\n", 0, word.start()) + 1
        while source[max(line - 3, 0) : line].rstrip(b"\r\n").endswith(b"\\"):  # back to the logical line start
            line = source.rfind(b"\n", 0, line - 1) + 1
        head = _STATEMENT_HEAD.fullmatch(source, line, word.start())
        if head is None:
            continue
        start = end = head.start(1)
        while True:  # the logical line: on through backslash continuations and open parentheses
            newline = source.find(b"\n", end + 1)
            end = len(source) if newline < 0 else newline
            text = source[start:end]
            if newline < 0 or not (text.rstrip().endswith(b"\\") or text.count(b"(") > text.count(b")")):
                break
        if package.encode() in text or text.startswith(b"from ."):
            texts.append(text)
    try:
        return ast.parse(b"\n".join(texts)).body
    except SyntaxError:
        return [node for text in texts for node in _parsed(text)]


def _parsed(text: bytes) -> list[ast.stmt]:
    try:
        return ast.parse(text).body
    except SyntaxError:  # the words were in a string or a comment
        return []


@functools.cache
def _imports(root: Path, module: str) -> frozenset[str]:
    """Return the project modules ``module`` loads: its imports anywhere, the modules it names, its parents."""
    source = _source(_file(root, module))
    package = _package(module)
    found = _parents(module)
    for node in _import_statements(source, package):
        if isinstance(node, ast.Import | ast.ImportFrom):
            found |= _import_targets(root, module, node)
    for match in re.finditer(rb"[\"'](" + re.escape(package.encode()) + rb"(?:\.\w+)*)[\"']", source):
        if _is_module(root, package, name := match.group(1).decode()):
            found.add(name)
    return frozenset(found - {module})


def imported_modules(modules: Iterable[str], root: Path = ROOT) -> frozenset[str]:
    """Return ``modules`` and every project module they import, directly or not (cycles allowed)."""
    seen: set[str] = set()
    pending = [name for name in modules if name != __name__]
    while pending:
        name = pending.pop()
        if name not in seen:
            seen.add(name)
            pending.extend(found for found in _imports(root, name) if found != __name__)
    return frozenset(seen)


def _walk(node: ast.AST) -> Iterator[ast.AST]:
    """Yield ``node`` and every node under it, like ``ast.walk`` but about twice as fast."""
    pending = [node]
    while pending:
        node = pending.pop()
        yield node
        for field in node._fields:
            value = getattr(node, field, None)
            if isinstance(value, list):
                pending.extend(item for item in value if isinstance(item, ast.AST))
            elif isinstance(value, ast.AST):
                pending.append(value)


@functools.cache
def _uses(root: Path, module: str, statement: ast.stmt) -> tuple[frozenset[str], frozenset[str]]:
    """Return the module-level names a top-level statement uses and the project modules it imports or names.

    A name the statement binds itself (a parameter, a local variable, a local import) is not a
    module-level one, unless declared ``global``; nested scopes are not told apart from it.
    """
    loaded: set[str] = set()
    local: set[str] = set()
    declared: set[str] = set()
    modules: set[str] = set()
    package = _package(module)
    for node in _walk(statement):
        kind = type(node)  # exact types, not isinstance: this loop sees every node of the shell modules
        if kind is ast.Name:
            (loaded if type(node.ctx) is ast.Load else local).add(node.id)
        elif kind is ast.arg:
            local.add(node.arg)
        elif kind is ast.Constant:  # a string naming a project module, e.g. a ``python -m`` target
            if type(node.value) is str and _is_module(root, package, node.value):
                modules.add(node.value)
        elif kind is ast.Import or kind is ast.ImportFrom:
            modules |= _import_targets(root, module, node)
            local |= {alias.asname or alias.name.split(".")[0] for alias in node.names}
        elif kind is ast.Global:
            declared.update(node.names)
    if not isinstance(statement, _DEFINITIONS):  # an assignment: its targets are the module-level names
        local.clear()
    return frozenset(loaded - (local - declared)), frozenset(modules)


@functools.cache
def _shell(root: Path, module: str) -> tuple[list[ast.stmt], dict[str, list[int]]]:
    """Return a shell module's top-level statements and, for each name, the statements that bind it."""
    statements = ast.parse(_source(_file(root, module))).body
    bindings: dict[str, list[int]] = {}
    for index, statement in enumerate(statements):
        if isinstance(statement, _DEFINITIONS):
            bound = {statement.name}
        elif isinstance(statement, _ASSIGNMENTS):
            targets = statement.targets if isinstance(statement, ast.Assign) else [statement.target]
            bound = {node.id for target in targets for node in ast.walk(target) if isinstance(node, ast.Name)}
        elif isinstance(statement, ast.Import | ast.ImportFrom):
            bound = {alias.asname or alias.name.split(".")[0] for alias in statement.names}
        else:
            bound = set()
        for name in bound:
            bindings.setdefault(name, []).append(index)
    return statements, bindings


def _function_modules(root: Path, module: str, functions: tuple[str, ...]) -> set[str]:
    """Return the project modules that ``functions`` of the shell ``module`` use (see the module docstring)."""
    statements, bindings = _shell(root, module)
    missing = [name for name in functions if name not in bindings]
    if missing:
        raise ValueError(f"{module} defines no {', '.join(missing)}")
    found: set[str] = set()
    pending = [index for name in functions for index in bindings[name]]
    visited: set[int] = set()
    while pending:
        index = pending.pop()
        if index in visited:
            continue
        visited.add(index)
        statement = statements[index]
        if isinstance(statement, ast.Import | ast.ImportFrom):  # reached through one of its names
            found |= _import_targets(root, module, statement)
            continue
        names, modules = _uses(root, module, statement)
        found |= modules
        pending.extend(other for name in names for other in bindings.get(name, ()))
    return found


def version_sources(module: str, *functions: str, root: Path = ROOT) -> frozenset[str]:
    """Return the modules whose source makes up the code version of ``functions`` (assets) of ``module``."""
    return imported_modules(_function_modules(root, module, functions) | _parents(module), root) | {module}


@functools.cache
def _file_digest(module: str) -> bytes:
    return hashlib.sha256(_source(_file(ROOT, module))).digest()


@contextlib.contextmanager
def _collector_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsing makes many objects, each pass would scan dagster's heap."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


@functools.cache
def source_version(module: str, *functions: str) -> str:
    """Return a 12-character hash of the sources behind the assets ``functions`` of ``module``."""
    with _collector_paused():
        modules = version_sources(module, *functions)
    digest = hashlib.sha256()
    for name in sorted(modules):
        digest.update(f"{name}\0".encode() + _file_digest(name))
    return digest.hexdigest()[:12]
