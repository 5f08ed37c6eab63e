"""The repository's layout, read statically (ast and YAML only, nothing imported but charlie.cli).

* Every DVC stage lists as deps every ``charlie`` module its command can import, so editing
  any code a stage runs makes ``dvc status`` report that stage as changed.
* No stage module imports another stage module (stages share code through library modules).
* DVC stages, KFP components and stage modules line up, and the CLI registers every stage.

Nothing here hard-codes a module list: modules are discovered from src/charlie on every run.
"""

from __future__ import annotations

import ast
import copy
import posixpath
import re
import shlex
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml

from charlie.cli import CLUSTER_STEPS, UTILITIES

REPO = Path(__file__).resolve().parents[1]
PACKAGE = "charlie"
SRC = "src"  # the package lives at src/charlie

# `charlie <name>` commands that are not pipeline stages (no DVC stage), and those of them the
# Kubeflow pipeline runs as components of their own: read from charlie.cli, checked below.
UTILITY_COMMANDS = set(UTILITIES)
CLUSTER_COMMANDS = set(CLUSTER_STEPS)

# What `charlie <stage>` runs besides its stage module. The `charlie` console script is
# charlie.cli:main (pyproject.toml), so cli.py and what it imports are part of every stage:
# main() loads .env (CHARLIE_* variables override params), sets the --params default and turns
# errors into exit codes, all of which can change a stage's result. cli.py imports the stage
# module by a computed name (its dispatch); that module is the other root, and any other stage
# module cli.py may name is not followed: only the chosen stage runs. charlie/__main__.py
# (`python -m charlie`) is not what the DVC commands run, so it is not a root.
ENTRY_POINTS = ("charlie.cli",)


# --- modules and their imports -----------------------------------------------------------


def discover_modules(repo: Path) -> dict[str, str]:
    """Every module of the package: dotted name -> repo-relative file path."""
    modules = {}
    root = repo / SRC / PACKAGE
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(repo / SRC).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path.relative_to(repo).as_posix()
    return modules


def _is_ours(name: str | None) -> bool:
    return name is not None and (name == PACKAGE or name.startswith(PACKAGE + "."))


@dataclass
class Imports:
    """The package's modules one file can import, read from its source."""

    modules: set[str] = field(default_factory=set)
    """Every target of an ``import`` or ``from`` statement, or of an ``import_module`` call
    whose name is a literal or a module-level string constant."""
    names: dict[str, set[str]] = field(default_factory=dict)
    """``from m import a, b`` where ``a`` and ``b`` are names defined in ``m``: m -> {a, b}."""
    whole: set[str] = field(default_factory=set)
    """The targets imported as module objects (``import m``, ``from p import m``, calls)."""
    by_name: set[str] = field(default_factory=set)
    """Modules named by string literals in a file that imports by a computed name: a name table
    such as ``{"file": "charlie.prices.files"}`` feeding ``importlib.import_module``."""
    by_name_at_import: bool = False
    """A computed import runs at module level, so importing the file runs it."""
    unresolved: bool = False
    """A computed import whose name is no literal of the file and no module-level constant."""
    data: set[str] = field(default_factory=set)
    """Module-level names bound to plain literals (``PROVIDERS = {...}``): importing only these
    runs none of the file's functions, so none of its imports by computed name."""


_IMPORT_FUNCTIONS = {"import_module", "__import__"}


def _constants(tree: ast.Module) -> dict[str, object]:
    values = {}
    for node in tree.body:
        if isinstance(node, ast.Assign | ast.AnnAssign) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            try:
                value = ast.literal_eval(node.value)
            except ValueError:
                continue
            values.update((t.id, value) for t in targets if isinstance(t, ast.Name))
    return values


def _in_functions(tree: ast.Module) -> set[int]:
    return {
        id(inner)
        for node in ast.walk(tree)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        for inner in ast.walk(node)
    }


def imported_modules(module: str, file: Path, modules: dict[str, str]) -> Imports:
    """The package's modules a file imports, anywhere in it (top level, functions, branches).

    ``from a.b import c`` is the submodule ``a.b.c`` where that module exists, else ``a.b``;
    relative imports are resolved against the file's package. Statement targets that are no
    module of the package are kept as they are, so the caller can report them.
    """
    tree = ast.parse(file.read_text(encoding="utf-8"), filename=str(file))
    is_package = file.name == "__init__.py"
    package = module if is_package else module.rpartition(".")[0]
    constants = _constants(tree)
    in_functions = _in_functions(tree)
    found = Imports(data=set(constants))
    literals: set[str] = set()
    computed = False
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.whole.update(alias.name for alias in node.names if _is_ours(alias.name))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base_parts = package.split(".")
                if node.level > 1:
                    base_parts = base_parts[: -(node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module
            if not _is_ours(base):
                continue
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                if submodule in modules or alias.name == "*":
                    found.whole.add(submodule if submodule in modules else base)
                else:
                    found.modules.add(base)
                    found.names.setdefault(base, set()).add(alias.name)
        elif isinstance(node, ast.Call):
            func = node.func
            name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            if name not in _IMPORT_FUNCTIONS or not node.args:
                continue
            arg = node.args[0]
            if isinstance(arg, ast.Name) and isinstance(constants.get(arg.id), str):
                target = constants[arg.id]  # NAME = "charlie.x" at module level
            elif isinstance(arg, ast.Constant) and isinstance(arg.value, str):
                target = arg.value
            else:
                computed = True
                found.by_name_at_import |= id(node) not in in_functions
                continue
            if _is_ours(target):
                found.whole.add(target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            literals.add(node.value)
    found.modules |= found.whole
    if computed:
        found.by_name = {text for text in literals if text in modules}
        found.unresolved = not found.by_name
    return found


def _parents(module: str) -> Iterable[str]:
    parts = module.split(".")
    for end in range(1, len(parts)):
        yield ".".join(parts[:end])


def import_closure(roots: Iterable[str], repo: Path) -> set[str]:
    """Every module of the package that running ``roots`` can import, transitively.

    Followed: import statements anywhere in a file; a package's ``__init__`` whenever any module
    below it is in (Python runs it first); and, for a file importing by a computed name, the
    modules its string literals name, unless every importer takes only plain-literal constants
    from it (``from charlie.prices.registry import PROVIDERS`` reads the table and calls nothing
    that imports). Fails naming the importer when an import names no module of the package,
    and when a computed import names no literal: which modules it runs cannot be read.
    """
    roots = list(roots)
    modules = discover_modules(repo)
    scans: dict[str, Imports] = {}

    def scan(module: str) -> Imports:
        if module not in scans:
            scans[module] = imported_modules(module, repo / modules[module], modules)
        return scans[module]

    closure: set[str] = set()
    by_name_followed: set[str] = set()
    todo = [(root, "the stage's command", True) for root in roots]
    broken, unreadable = [], []
    while todo:
        module, importer, calls = todo.pop()
        if module in closure and (module in by_name_followed or not calls):
            continue
        if module not in modules:
            broken.append(f"{module} (imported by {importer})")
            closure.add(module)
            continue
        imports = scan(module)
        if module not in closure:
            closure.add(module)
            todo.extend((parent, module, True) for parent in _parents(module))
            for target in imports.modules:
                data_only = (
                    target in imports.names
                    and target not in imports.whole
                    and target in modules
                    and imports.names[target] <= scan(target).data
                )
                todo.append((target, module, not data_only))
        if calls or imports.by_name_at_import:
            by_name_followed.add(module)
            by_name = imports.by_name
            if module in ENTRY_POINTS:  # its dispatch: the chosen stage is a root already
                by_name = {name for name in by_name if not name.startswith(f"{PACKAGE}.stages.")}
            elif imports.unresolved:
                unreadable.append(modules[module])
            todo.extend((target, module, True) for target in by_name)
    assert not broken, (
        f"running {roots}: imports of modules that do not exist under {SRC}/{PACKAGE}: {broken}"
    )
    assert not unreadable, (
        f"running {roots}: {unreadable} import a module by a computed name that names no module of the package "
        "in a string literal, so which modules a stage runs cannot be read from the source; "
        f"import {PACKAGE} modules with import statements or a table of literal module names"
    )
    return closure


# --- dvc.yaml ------------------------------------------------------------------------------

_REFERENCE = re.compile(r"\$\{\s*([^}]+?)\s*\}")


def interpolation_context(dvc: dict, repo: Path) -> dict:
    """What ``${...}`` can name: params.yaml, then the ``vars:`` of dvc.yaml, as DVC reads them."""
    context: dict = {}
    default = repo / "params.yaml"
    if default.is_file():
        context.update(yaml.safe_load(default.read_text()) or {})
    return load_vars(dvc.get("vars") or [], repo, context)


def load_vars(items: list, repo: Path, context: dict) -> dict:
    """``context`` updated with DVC ``vars:`` items: inline dicts, ``file`` or ``file:k1,k2``."""
    context = dict(context)
    for item in items:
        if isinstance(item, dict):  # inline values
            context.update(item)
            continue
        path, _, keys = str(item).partition(":")
        loaded = yaml.safe_load((repo / path).read_text()) or {}
        if keys:
            loaded = {key.strip(): loaded[key.strip()] for key in keys.split(",")}
        context.update(loaded)
    return context


def interpolate(text: str, context: dict) -> str:
    def lookup(match: re.Match) -> str:
        value = context
        for key in match.group(1).split("."):
            assert isinstance(value, dict) and key in value, (
                f"{match.group(0)} names nothing in params.yaml or the vars files"
            )
            value = value[key]
        return str(value)

    return _REFERENCE.sub(lookup, text)


def stage_command(stage: dict) -> str:
    """The ``charlie`` subcommand a stage runs: ``charlie init-model ...`` -> ``init-model``."""
    cmd = stage["cmd"]
    words = shlex.split(cmd if isinstance(cmd, str) else cmd[0])
    assert words[:1] == [PACKAGE] and len(words) > 1, f"not a `charlie <stage>` command: {cmd!r}"
    return words[1]


def stage_module(command: str) -> str:
    return f"{PACKAGE}.stages.{command.replace('-', '_')}"


def covered(file: str, deps: Iterable[str]) -> bool:
    return any(file == dep or file.startswith(dep + "/") for dep in deps)


def missing_deps(dvc_text: str, repo: Path = REPO) -> dict[str, list[str]]:
    """Per DVC stage, the module files its command can import that none of its deps covers.

    A dep covers a file when it is that file or a folder holding it. Stages missing nothing
    are left out, so an empty dict means every stage's deps are complete.
    """
    dvc = yaml.safe_load(dvc_text)
    context = interpolation_context(dvc, repo)
    modules = discover_modules(repo)
    missing = {}
    for name, stage, stage_context in expanded_stages(dvc, repo, context):
        deps = [
            posixpath.normpath(interpolate(dep, stage_context)) for dep in stage.get("deps") or []
        ]
        roots = [stage_module(stage_command(stage)), *ENTRY_POINTS]
        files = sorted(modules[module] for module in import_closure(roots, repo))
        if absent := [file for file in files if not covered(file, deps)]:
            missing[name] = absent
    return missing


def expanded_stages(dvc: dict, repo: Path, context: dict) -> Iterator[tuple[str, dict, dict]]:
    """(name, stage, interpolation context) per DVC stage, a ``foreach`` stage once per item
    (``evaluate@sft``), its ``${item...}`` resolved as DVC resolves them."""
    for name, stage in dvc["stages"].items():
        stage_context = load_vars(stage.get("vars") or [], repo, context)
        if "foreach" not in stage:
            yield name, stage, stage_context
            continue
        items = stage["foreach"]
        pairs = items.items() if isinstance(items, dict) else ((str(i), i) for i in items)
        for key, item in pairs:
            if isinstance(item, dict):
                item = {k: interpolate(str(v), stage_context) for k, v in item.items()}
            yield f"{name}@{key}", stage["do"], {**stage_context, "item": item, "key": key}


def _paste_ready(missing: dict[str, list[str]]) -> str:
    return "\n".join(
        f"  {stage}:\n    deps:\n" + "\n".join(f"      - {file}" for file in files)
        for stage, files in missing.items()
    )


# --- 1. DVC deps are complete ----------------------------------------------------------------


def test_every_stage_lists_every_module_its_command_can_import_as_a_dep():
    missing = missing_deps((REPO / "dvc.yaml").read_text())
    assert not missing, (
        "dvc.yaml: these stages run code their deps do not cover (a change to it would not "
        "re-run them); add the files, or a folder holding them, to each stage's deps:\n"
        + _paste_ready(missing)
    )


def test_dvc_lock_records_exactly_the_stages_dvc_yaml_defines():
    """DVC adds a stage's lock entry but never drops one: a renamed or foreach-expanded stage
    leaves its old entry behind, which ``dvc status`` ignores and readers of the lock do not."""
    dvc = yaml.safe_load((REPO / "dvc.yaml").read_text())
    defined = {name for name, _, _ in expanded_stages(dvc, REPO, interpolation_context(dvc, REPO))}
    locked = set(yaml.safe_load((REPO / "dvc.lock").read_text())["stages"])
    assert locked == defined, (
        f"dvc.lock: entries for no stage: {sorted(locked - defined)}; stages never run: "
        f"{sorted(defined - locked)} (delete the former; `dvc repro` the latter)"
    )


def test_a_removed_dep_is_reported_with_the_module_file():
    text = (REPO / "dvc.yaml").read_text()
    dvc = yaml.safe_load(text)
    name, stage = next(iter(dvc["stages"].items()))
    own_file = discover_modules(REPO)[stage_module(stage_command(stage))]
    covering = [dep for dep in stage["deps"] if covered(own_file, [dep.rstrip("/")])]
    assert covering, f"{name}: no dep covers {own_file}"
    stage["deps"] = [dep for dep in stage["deps"] if dep not in covering]

    missing = missing_deps(yaml.safe_dump(dvc, sort_keys=False))
    assert own_file in missing.get(name, []), missing
    assert own_file in _paste_ready(missing)


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)


FAKE_REPO = {
    "params.yaml": "alpha:\n  input: data/in\n",
    "conf.yaml": "out_dir: out\nlib: other\nunused: x\n",
    "src/charlie/__init__.py": "",
    "src/charlie/cli.py": (
        "import importlib\n"
        "from charlie.errors import CharlieError\n"
        "def main(name):\n"
        "    importlib.import_module(f'charlie.stages.{name}').run()\n"  # the dispatch
    ),
    "src/charlie/errors.py": "",
    "src/charlie/unused.py": "",
    "src/charlie/stages/__init__.py": "",
    "src/charlie/stages/alpha.py": (
        "from charlie import util\n"  # a submodule: charlie.util
        "from charlie.table import NAMES\n"  # data only: table.py, not what create() imports
        "def run():\n"
        "    from charlie.pkg import Thing\n"  # a name: charlie.pkg (its __init__)
        "    import charlie.deep.leaf\n"  # charlie.deep's __init__ comes along
        "    from charlie.pkg.sub import f\n"
    ),
    "src/charlie/stages/beta.py": "def run():\n    from charlie.table import create\n",
    "src/charlie/util.py": "",
    "src/charlie/table.py": (
        "import importlib\n"
        "NAMES: dict[str, str] = {'one': 'charlie.plugin'}\n"
        "def create(name):\n"
        "    return importlib.import_module(NAMES[name])\n"
    ),
    "src/charlie/plugin.py": "",
    "src/charlie/pkg/__init__.py": "from .base import Thing\n",
    "src/charlie/pkg/base.py": "",
    "src/charlie/pkg/sub.py": "from . import helper\nfrom ..other import y\n",
    "src/charlie/pkg/helper.py": "",
    "src/charlie/other.py": "",
    "src/charlie/deep/__init__.py": "",
    "src/charlie/deep/leaf.py": "",
}

FAKE_DVC = {
    "vars": ["conf.yaml:out_dir,lib"],
    "stages": {
        "alpha": {
            "cmd": "charlie alpha --input ${alpha.input} --out ${out_dir}",
            "deps": ["${alpha.input}", "src/charlie/pkg/", "src/charlie/${lib}.py"],
            "outs": ["${out_dir}"],
        },
        "beta": {
            "cmd": ["charlie beta"],
            "deps": ["src/charlie/__init__.py", "src/charlie/cli.py", "src/charlie/errors.py"],
        },
    },
}


def test_the_closure_follows_nested_relative_submodule_and_by_name_imports(tmp_path):
    _write(tmp_path, FAKE_REPO)
    missing = missing_deps(yaml.safe_dump(FAKE_DVC), tmp_path)
    # alpha: src/charlie/pkg/* via the folder, other.py via ${lib}; unused.py and plugin.py are
    # never imported (alpha only reads table.NAMES); beta calls table.create, so plugin.py is in.
    assert missing == {
        "alpha": [
            "src/charlie/__init__.py",
            "src/charlie/cli.py",
            "src/charlie/deep/__init__.py",
            "src/charlie/deep/leaf.py",
            "src/charlie/errors.py",
            "src/charlie/stages/__init__.py",
            "src/charlie/stages/alpha.py",
            "src/charlie/table.py",
            "src/charlie/util.py",
        ],
        "beta": [
            "src/charlie/plugin.py",
            "src/charlie/stages/__init__.py",
            "src/charlie/stages/beta.py",
            "src/charlie/table.py",
        ],
    }

    dvc = copy.deepcopy(FAKE_DVC)
    for name, files in missing.items():
        dvc["stages"][name]["deps"] += files
    assert missing_deps(yaml.safe_dump(dvc), tmp_path) == {}


def test_an_import_by_a_computed_name_with_no_literal_fails(tmp_path):
    _write(tmp_path, FAKE_REPO)
    table = tmp_path / "src/charlie/table.py"
    table.write_text(
        "import importlib\ndef create(name):\n    return importlib.import_module(name)\n"
    )
    with pytest.raises(AssertionError, match=r"src/charlie/table\.py.*computed name"):
        missing_deps(yaml.safe_dump(FAKE_DVC), tmp_path)


def test_an_import_of_a_missing_module_fails(tmp_path):
    _write(tmp_path, {**FAKE_REPO, "src/charlie/util.py": "from charlie.gone import x\n"})
    with pytest.raises(AssertionError, match=r"charlie\.gone \(imported by charlie\.util\)"):
        missing_deps(yaml.safe_dump(FAKE_DVC), tmp_path)


# --- 2. No stage imports a stage ---------------------------------------------------------------


def stage_cross_imports(repo: Path = REPO) -> list[str]:
    """``file imports module`` for each stage module importing another stage module.

    Anywhere in the file, by statement or by name. The package itself (its docstring-only
    ``__init__``) is not "another stage", so only its submodules count.
    """
    modules = discover_modules(repo)
    prefix = f"{PACKAGE}.stages."
    offences = []
    for module, file in modules.items():
        if module.startswith(prefix):
            imports = imported_modules(module, repo / file, modules)
            offences += [
                f"{file} imports {target}"
                for target in sorted(imports.modules | imports.by_name)
                if target.startswith(prefix) and target != module
            ]
    return offences


def test_no_stage_module_imports_another_stage_module():
    offences = stage_cross_imports()
    assert not offences, (
        "stage modules share code through library modules, not through each other:\n"
        + "\n".join(offences)
    )


def test_a_stage_importing_a_stage_is_reported(tmp_path):
    beta = "def run():\n    from charlie.stages import alpha\n    from . import beta\n"
    _write(tmp_path, {**FAKE_REPO, "src/charlie/stages/beta.py": beta})
    assert stage_cross_imports(tmp_path) == [
        "src/charlie/stages/beta.py imports charlie.stages.alpha"
    ]


# --- 3. Stages, DVC stages and components line up ----------------------------------------------


def stage_module_commands(repo: Path = REPO) -> set[str]:
    """The command name of every module in src/charlie/stages (``init_model`` -> ``init-model``)."""
    prefix = f"{PACKAGE}.stages."
    names = (
        module.removeprefix(prefix)
        for module in discover_modules(repo)
        if module.startswith(prefix)
    )
    return {name.replace("_", "-") for name in names if "." not in name}


def test_dvc_stages_components_and_stage_modules_are_the_same_set():
    dvc_stages = set(yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"])
    components = {
        path.parent.name.replace("_", "-") for path in (REPO / "components").glob("*/component.py")
    }
    pipeline_modules = stage_module_commands() - UTILITY_COMMANDS
    assert UTILITY_COMMANDS & stage_module_commands() >= CLUSTER_COMMANDS
    everything = dvc_stages | components | pipeline_modules | CLUSTER_COMMANDS
    gaps = {
        name: [
            where
            for where, names in (
                ("dvc.yaml", dvc_stages | CLUSTER_COMMANDS),
                ("components/", components),
                ("src/charlie/stages/", pipeline_modules | CLUSTER_COMMANDS),
            )
            if name not in names
        ]
        for name in sorted(everything)
    }
    gaps = {name: where for name, where in gaps.items() if where}
    assert not gaps, "stages missing somewhere (name: missing from):\n" + "\n".join(
        f"  {name}: {', '.join(where)}" for name, where in gaps.items()
    )


def test_the_cli_registers_every_stage_module():
    from charlie.cli import STAGES

    unregistered = sorted(stage_module_commands() - set(STAGES))
    assert not unregistered, f"stage modules charlie.cli.STAGES has no key for: {unregistered}"
