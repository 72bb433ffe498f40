"""Code versions follow the source: editing a module changes exactly the assets that use it."""

import ast
import dis
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import CodeType, FunctionType, ModuleType

import dagster as dg
import pytest

from ft_assets.code_versions import _import_targets, _imports, imported_modules, source_version, version_sources

ROOT = Path(__file__).resolve().parent.parent
DATA = {"raw_examples", "source_documents"}
SPLITS = {"train_split", "validation_split", "test_split"}
AZURE = {"azure_training_files", "azure_finetune_job", "azure_fine_tuned_model", "azure_model_evaluation"}
# Module edited -> the assets whose code version must change; every other asset must keep its version.
EDITS = {
    "dataset/splitting.py": {"cleaned_examples", *SPLITS, "synthetic_examples"},  # prep and rows reach it
    "dataset/assets.py": {*DATA, "cleaned_examples", *SPLITS},  # the shell module counts whole
    "dataset/warm.py": {"cleaned_examples", *SPLITS},  # prep names it by string: the fork server preloads it
    "training/merge.py": {"merged_model"},
    "training/lora_pipes.py": {"lora_adapter"},  # named by string: python -m ft_assets.training.lora_pipes
    # the paired test; lora_adapter and azure_finetune_job find the champion to continue from (champion.store)
    "evaluation/metrics.py": {
        "evaluation_table",
        "azure_model_evaluation",
        "champion_model",
        "lora_adapter",
        "azure_finetune_job",
    },
}
VERSIONS = """
import json, sys
import dagster as dg
versions = {}
for root in sys.argv[1:]:  # one process loads each copy in turn: dagster is imported once
    for name in [name for name in sys.modules if name.split(".")[0] == "ft_assets"]:
        del sys.modules[name]
    sys.path.insert(0, root)
    from ft_assets.definitions import defs
    assert sys.modules["ft_assets"].__file__.startswith(root)
    sys.path.remove(root)
    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    versions[root] = {k.to_user_string(): v for a in assets for k, v in a.code_versions_by_key.items()}
print(json.dumps(versions))
"""


def _write(root: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)


@pytest.fixture
def fake_package(tmp_path: Path) -> Path:
    _write(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def f():\n    from pkg import b  # a submodule, imported inside a function\n    return b\n",
            "pkg/b.py": "from pkg.c import h\n",
            "pkg/c.py": "import pkg.b  # a cycle b -> c -> b\n\n\ndef h():\n    return pkg.b\n",
            "pkg/d.py": "x = 1\n",
            "pkg/f.py": "",
            "pkg/sub/__init__.py": "from . import e\n",
            "pkg/sub/e.py": "from ..d import x\n",
            "pkg/tricky.py": (
                '"""Usage: import pkg.sub.e into a shell (a docstring, not an import)."""\n'
                "import os; import pkg.d\n"
                "if os:  from pkg \\\n    import a\n"
                "PRELOAD = ['pkg.f']\n"
            ),
            "pkg/shell.py": (
                "from pkg import a\nfrom pkg.d import x\n\n\n"
                "def first():\n    return helper()\n\n\n"
                "def helper():\n    from pkg import c\n    return c\n\n\n"
                "def second(first):  # a parameter named like a function of the module\n    return first + x\n\n\n"
                "def launch():\n    return ['python', '-m', 'pkg.sub.e']\n"
            ),
        },
    )
    return tmp_path


def test_closure_follows_function_imports_submodules_relative_imports_and_cycles(fake_package: Path) -> None:
    assert imported_modules(["pkg.a"], fake_package) == {"pkg", "pkg.a", "pkg.b", "pkg.c"}
    assert imported_modules(["pkg.sub.e"], fake_package) == {"pkg", "pkg.sub", "pkg.sub.e", "pkg.d"}
    assert imported_modules(["pkg.d"], fake_package) == {"pkg", "pkg.d"}
    tricky = {"pkg", "pkg.tricky", "pkg.d", "pkg.a", "pkg.b", "pkg.c", "pkg.f"}  # one-line, continued, by name
    assert imported_modules(["pkg.tricky"], fake_package) == tricky


def test_the_import_scan_finds_what_a_full_parse_finds() -> None:
    for path in sorted((ROOT / "ft_assets").rglob("*.py")):
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        nodes = [
            node for node in ast.walk(ast.parse(path.read_bytes())) if isinstance(node, ast.Import | ast.ImportFrom)
        ]
        parsed = {target for node in nodes for target in _import_targets(ROOT, module, node)}
        assert parsed - {module} <= _imports(ROOT, module), module


def test_an_asset_function_brings_only_what_it_reaches(fake_package: Path) -> None:
    assert version_sources("pkg.shell", "first", root=fake_package) == {"pkg", "pkg.shell", "pkg.b", "pkg.c"}
    assert version_sources("pkg.shell", "second", root=fake_package) == {"pkg", "pkg.shell", "pkg.d"}
    launch = {"pkg", "pkg.shell", "pkg.sub", "pkg.sub.e", "pkg.d"}
    assert version_sources("pkg.shell", "launch", root=fake_package) == launch
    with pytest.raises(ValueError, match="defines no missing"):
        version_sources("pkg.shell", "missing", root=fake_package)


def _code_versions(copies: dict[str, Path]) -> dict[str, dict[str, str]]:
    """Return every asset's code version as loaded from each copy of the package (in one fresh process)."""
    roots = {str(root): name for name, root in copies.items()}
    command = [sys.executable, "-c", VERSIONS, *roots]
    cwd = next(iter(copies.values())).parent  # not the project: only the copies hold ft_assets
    out = subprocess.run(command, check=False, cwd=cwd, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return {roots[root]: versions for root, versions in json.loads(out.stdout).items()}


def _edit(root: Path, module: str) -> None:
    with open(root / "ft_assets" / module, "a") as handle:
        handle.write("\n# an edit\n")


def test_editing_a_module_changes_exactly_the_assets_that_use_it(tmp_path: Path) -> None:
    copies = {}
    for name in ["unchanged", *EDITS]:
        root = copies[name] = tmp_path / str(len(copies))
        shutil.copytree(ROOT / "ft_assets", root / "ft_assets", ignore=shutil.ignore_patterns("__pycache__"))
        if name in EDITS:
            _edit(root, name)
    versions = _code_versions(copies)
    before = versions["unchanged"]
    for name, expected in EDITS.items():
        changed = {asset for asset in before if versions[name][asset] != before[asset]}
        assert changed == expected, name


def _is_module(name: str) -> bool:
    if not name.startswith("ft_assets") or not all(part.isidentifier() for part in name.split(".")):
        return False
    base = ROOT.joinpath(*name.split("."))
    return base.with_name(f"{base.name}.py").is_file() or (base / "__init__.py").is_file()


def _direct_modules(function: FunctionType) -> set[str]:
    """Return the project modules an asset function uses, read from its byte code (an independent check).

    Imports inside it and the same-module functions and classes it calls, objects from other project
    modules it refers to, and string constants that name a project module.
    """
    found: set[str] = set()
    codes: list[CodeType] = [function.__code__]
    seen: set[CodeType] = set()
    while codes:
        code = codes.pop()
        if code in seen:
            continue
        seen.add(code)
        codes.extend(const for const in code.co_consts if isinstance(const, CodeType))
        module = None
        for instruction in dis.get_instructions(code):
            value = instruction.argval
            if instruction.opname == "IMPORT_NAME" and value.startswith("ft_assets"):
                module = value
                found.add(value)
            elif instruction.opname == "IMPORT_FROM" and module and _is_module(f"{module}.{value}"):
                found.add(f"{module}.{value}")
            elif instruction.opname == "LOAD_CONST" and isinstance(value, str) and _is_module(value):
                found.add(value)
            elif instruction.opname == "LOAD_GLOBAL" and value in function.__globals__:
                target = function.__globals__[value]
                owner = getattr(target, "__module__", None) or ""
                if owner == function.__module__ and isinstance(target, FunctionType):
                    codes.append(target.__code__)
                elif owner == function.__module__ and isinstance(target, type):
                    codes.extend(v.__code__ for v in vars(target).values() if isinstance(v, FunctionType))
                elif owner.startswith("ft_assets"):
                    found.add(owner)
                elif isinstance(target, ModuleType) and target.__name__.startswith("ft_assets"):
                    found.add(target.__name__)
    return found - {"ft_assets.code_versions"}


def test_every_asset_version_covers_the_modules_its_function_uses() -> None:
    from ft_assets.definitions import defs

    assets = [a for a in defs.assets if isinstance(a, dg.AssetsDefinition)]
    assert {k.to_user_string() for a in assets for k in a.keys} >= {*DATA, *SPLITS, *AZURE, "merged_model"}
    for asset in assets:
        function = asset.op.compute_fn.decorated_fn
        sources = version_sources(function.__module__, function.__name__)
        missing = _direct_modules(function) - sources
        assert not missing, f"{function.__name__} misses {missing}"
        version = source_version(function.__module__, function.__name__)
        assert set(asset.code_versions_by_key.values()) == {version}, f"{function.__name__} has another's version"
