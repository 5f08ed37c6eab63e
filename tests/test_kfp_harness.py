"""tests/kfp_harness.py on toy pipelines: conditions, OneOf, sub-DAG volumes, image layouts."""

import json
from pathlib import Path

import pytest
import yaml

pytest.importorskip("kfp")
kubernetes = pytest.importorskip("kfp.kubernetes")

from kfp import compiler, dsl  # noqa: E402

from tests.kfp_harness import (  # noqa: E402
    DockerIgnore,
    evaluate_condition,
    image_layout,
    image_name,
    run_pipeline,
)

ROOT = Path(__file__).resolve().parents[1]
CPU = "ghcr.io/toy/toy-cpu:1.0"  # images/toy-cpu/Dockerfile in the toy context: params + configs
GPU = "ghcr.io/toy/toy-gpu:1.0"  # images/toy-gpu/Dockerfile: params.yaml only

# Each toy writes what it read into its output, so the tests follow the data, not the names.
INIT = """
import pathlib, sys
size, out = sys.argv[1:]
pathlib.Path(out).mkdir(parents=True)
params = pathlib.Path("params.yaml").read_text().strip()  # relative: the image's workdir
pathlib.Path(out, "source.txt").write_text(f"init:{size}:{params}")
"""
FETCH = """
import os, pathlib, sys
name, out = sys.argv[1:]
cache = pathlib.Path("/cache/hub")  # the PVC, localised by the harness
cache.mkdir(parents=True, exist_ok=True)
(cache / name).write_text(os.environ["HF_TOKEN"])
pathlib.Path(out).mkdir(parents=True)
pathlib.Path(out, "source.txt").write_text(f"fetch:{name}")
"""
TRAIN = """
import json, pathlib, sys
kind, base, nodes, out, executor_input = sys.argv[1:]
pathlib.Path(out).mkdir(parents=True)
text = pathlib.Path(base, "source.txt").read_text()
pathlib.Path(out, "trained.txt").write_text(f"{text}|{kind}:{nodes}")
spec = json.loads(executor_input)
model = spec["outputs"]["artifacts"]["model"]["artifacts"][0]
model["metadata"] = {"trainer": kind, "base": spec["inputs"]["artifacts"]["base"]["artifacts"][0]["uri"]}
pathlib.Path(spec["outputs"]["outputFile"]).write_text(json.dumps({"artifacts": {"model": {"artifacts": [model]}}}))
"""
EVALUATE = """
import pathlib, sys
model, out = sys.argv[1:]
pathlib.Path(out).write_text(pathlib.Path(model, "trained.txt").read_text())
"""
TOUCH = """
import pathlib, sys
pathlib.Path(sys.argv[1]).write_text(sys.argv[2])
"""


@dsl.container_component
def init_model(size: str, model: dsl.Output[dsl.Model]):
    return dsl.ContainerSpec(image=CPU, command=["python", "-c", INIT], args=[size, model.path])


@dsl.container_component
def fetch_model(name: str, model: dsl.Output[dsl.Model]):
    return dsl.ContainerSpec(image=CPU, command=["python", "-c", FETCH], args=[name, model.path])


@dsl.container_component
def train(base: dsl.Input[dsl.Model], nodes: int, model: dsl.Output[dsl.Model]):
    args = ["train", base.path, nodes, model.path, "{{$}}"]
    return dsl.ContainerSpec(image=GPU, command=["python", "-c", TRAIN], args=args)


@dsl.container_component
def train_job(base: dsl.Input[dsl.Model], nodes: int, model: dsl.Output[dsl.Model]):
    args = ["train-job", base.path, nodes, model.path, "{{$}}"]
    return dsl.ContainerSpec(image=CPU, command=["python", "-c", TRAIN], args=args)


@dsl.container_component
def evaluate(model: dsl.Input[dsl.Model], report: dsl.Output[dsl.Artifact]):
    return dsl.ContainerSpec(image=CPU, command=["python", "-c", EVALUATE], args=[model.path, report.path])  # fmt: skip


@dsl.container_component
def touch(path: str, text: str):
    return dsl.ContainerSpec(image=CPU, command=["python", "-c", TOUCH], args=[path, text])


@dsl.pipeline(name="toy")
def toy(
    base: str = "tiny",
    num_nodes: int = 1,
    evaluate_model: bool = True,
    cache: str = "toy-cache",
    marks: str = "/marks",
):
    with dsl.If(base == "tiny", name="tiny-base"):
        init = init_model(size=base).set_caching_options(False)
    with dsl.Else():
        fetch = fetch_model(name=base)
        kubernetes.mount_pvc(fetch, pvc_name=cache, mount_path="/cache")
        kubernetes.use_secret_as_env(fetch, "hf-token", {"token": "HF_TOKEN"})
    base_model = dsl.OneOf(init.outputs["model"], fetch.outputs["model"])
    with dsl.If(num_nodes == 1):
        single = train(base=base_model, nodes=num_nodes)
    with dsl.Else():
        job = train_job(base=base_model, nodes=num_nodes)
        with dsl.If(num_nodes > 4):
            touch(path=f"{marks}/many-nodes", text="yes")
    model = dsl.OneOf(single.outputs["model"], job.outputs["model"])
    with dsl.If(evaluate_model == True):  # noqa: E712  (kfp compiles the comparison)
        report = evaluate(model=model)
        published = touch(path=f"{marks}/published", text="done").after(report)
        kubernetes.mount_pvc(published, pvc_name=cache, mount_path="/marks")


def _context(root: Path) -> Path:
    """A build context: two images, an allowlist .dockerignore, files they may or may not copy."""
    files = {
        ".dockerignore": "# allowlist\n*\n\n!params.yaml\n!configs/\n!src/\n**/__pycache__\n",
        "params.yaml": "seed: 7",
        "configs/train.yaml": "lr: 1",
        "configs/__pycache__/x.pyc": "",
        "src/toy.py": "",
        "notes.txt": "not sent",
        "images/toy-cpu/Dockerfile": (
            "FROM python:3.11-slim AS builder\nWORKDIR /src\nCOPY src/ src/\n\n"
            "FROM python:3.11-slim\nCOPY --from=builder /src /opt/src\nWORKDIR /app\n"
            "COPY --chown=1:1 params.yaml ./\nCOPY configs/ configs/\n"
        ),
        "images/toy-gpu/Dockerfile": "FROM python:3.11-slim\nWORKDIR /app\nCOPY params.yaml ./\n",
    }
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def _compile(pipeline, path: Path) -> Path:
    compiler.Compiler().compile(pipeline, str(path))
    return path


@pytest.fixture(scope="module")
def toy_yaml(tmp_path_factory) -> Path:
    return _compile(toy, tmp_path_factory.mktemp("toy") / "toy.yaml")


@pytest.fixture
def context(tmp_path) -> Path:
    return _context(tmp_path / "context")


def _run(toy_yaml: Path, context: Path, workdir: Path, **arguments):
    return run_pipeline(
        toy_yaml, workdir, arguments, cwd=context, env={"HF_TOKEN": "hf_test"}, job_id="job-1"
    )


def test_the_tiny_base_initialises_and_one_node_trains_in_place(toy_yaml, context, tmp_path):
    runs = _run(toy_yaml, context, tmp_path / "w")

    assert list(runs) == ["init-model", "train", "evaluate", "touch-2"]
    assert "fetch-model" not in runs and "train-job" not in runs and "touch" not in runs
    assert runs.skipped == {
        "fetch-model": "!(inputs.parameter_values['pipelinechannel--base'] == 'tiny')",
        "train-job": "!(int(inputs.parameter_values['pipelinechannel--num_nodes']) == 1)",
        "touch": "!(int(inputs.parameter_values['pipelinechannel--num_nodes']) == 1)",
    }
    # OneOf: train reads what init-model wrote, evaluate what train wrote.
    assert runs["train"].inputs["base"] == runs["init-model"].outputs["model"]
    assert runs["evaluate"].inputs["model"] == runs["train"].outputs["model"]
    assert runs["evaluate"].outputs["report"].read_text() == "init:tiny:seed: 7|train:1"
    assert runs["train"].metadata["model"] == {
        "trainer": "train",
        "base": str(runs["init-model"].outputs["model"]),
    }
    # Readable nesting, the image each ran, a PVC inside a condition localised to a folder.
    assert runs["init-model"].dag == "condition-branches-1/condition-2"
    assert runs["train"].image == GPU
    assert (tmp_path / "w/pvc/toy-cache/published").read_text() == "done"
    assert runs["touch-2"].volumes == {"/marks": tmp_path / "w/pvc/toy-cache"}


def test_another_base_is_fetched_and_several_nodes_train_as_a_job(toy_yaml, context, tmp_path):
    work, marks = tmp_path / "w", tmp_path / "m"
    marks.mkdir()
    runs = _run(toy_yaml, context, work, base="qwen", num_nodes=8, marks=str(marks))

    order = list(runs)  # in the order they ran: producers before consumers
    assert sorted(order) == ["evaluate", "fetch-model", "touch", "touch-2", "train-job"]
    assert order.index("fetch-model") < order.index("train-job") < order.index("evaluate")
    assert order.index("evaluate") < order.index("touch-2")
    assert set(runs.skipped) == {"init-model", "train"}
    assert runs["train-job"].inputs["base"] == runs["fetch-model"].outputs["model"]
    assert runs["evaluate"].inputs["model"] == runs["train-job"].outputs["model"]
    assert runs["evaluate"].outputs["report"].read_text() == "fetch:qwen|train-job:8"
    # fetch-model's PVC and secret come from its branch's platform config.
    assert (work / "pvc/toy-cache/hub/qwen").read_text() == "hf_test"
    assert runs["fetch-model"].volumes == {"/cache": work / "pvc/toy-cache"}
    assert runs["fetch-model"].secrets == {"hf-token": {"HF_TOKEN": "token"}}
    assert runs["train-job"].secrets == {}
    # The nested If (num_nodes > 4) ran inside the Else branch.
    assert runs["touch"].dag.startswith(runs["train-job"].dag + "/condition-")
    assert (marks / "many-nodes").read_text() == "yes"
    assert (marks / "published").read_text() == "done"  # not under a mount path: left as given


def test_a_false_condition_skips_its_whole_branch(toy_yaml, context, tmp_path):
    runs = _run(toy_yaml, context, tmp_path / "w", num_nodes=2, evaluate_model=False)

    assert list(runs) == ["init-model", "train-job"]
    assert runs.skipped["evaluate"] == runs.skipped["touch-2"]
    assert runs.skipped["evaluate"] == "inputs.parameter_values['pipelinechannel--evaluate_model'] == true"  # fmt: skip
    assert runs.skipped["touch"] == "int(inputs.parameter_values['pipelinechannel--num_nodes']) > 4"


def test_each_task_runs_in_a_fresh_copy_of_its_image_workdir(toy_yaml, context, tmp_path):
    work = tmp_path / "w"
    runs = _run(toy_yaml, context, work, num_nodes=2)

    layout = work / "images/toy-cpu/app"
    assert sorted(p.relative_to(layout).as_posix() for p in layout.rglob("*")) == [
        "configs",
        "configs/train.yaml",
        "params.yaml",
    ]
    assert runs["init-model"].cwd == work / "pods/init-model"
    assert (runs["init-model"].cwd / "configs/train.yaml").is_file()
    assert not (work / "images/toy-gpu").exists()  # no task ran on it


@dsl.container_component
def read_config(out: dsl.Output[dsl.Artifact]):
    code = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(open('configs/train.yaml').read())"  # fmt: skip
    return dsl.ContainerSpec(image=GPU, command=["python", "-c", code], args=[out.path])


@dsl.pipeline(name="reads-a-config")
def reads_a_config():
    read_config()


def test_a_file_the_image_lacks_fails_the_task(context, tmp_path):
    spec = _compile(reads_a_config, tmp_path / "p.yaml")

    with pytest.raises(RuntimeError, match="task read-config exited 1"):
        run_pipeline(spec, tmp_path / "w", cwd=context)  # toy-gpu copies no configs/
    runs = run_pipeline(spec, tmp_path / "w2", cwd=context, layout=False)  # the old harness
    assert runs["read-config"].outputs["out"].read_text() == "lr: 1"
    assert runs["read-config"].cwd == context


@dsl.container_component
def needs_fresh_cwd(n: int):
    code = (
        "import os, sys; assert not os.path.exists('scratch'), 'pod not fresh';"
        " open('scratch', 'w').write(sys.argv[1])"
    )
    return dsl.ContainerSpec(image=CPU, command=["python", "-c", code], args=[n])


@dsl.pipeline(name="fresh")
def fresh():
    first = needs_fresh_cwd(n=1)
    needs_fresh_cwd(n=2).after(first)


def test_retries_and_other_tasks_get_a_fresh_working_directory(context, tmp_path):
    spec = _compile(fresh, tmp_path / "p.yaml")
    runs = run_pipeline(spec, tmp_path / "w", cwd=context, retry={"needs-fresh-cwd"})
    assert runs["needs-fresh-cwd"].attempts == 2
    assert runs["needs-fresh-cwd-2"].attempts == 1
    assert (runs["needs-fresh-cwd-2"].cwd / "scratch").read_text() == "2"
    with pytest.raises(KeyError, match="retry names no task"):
        run_pipeline(spec, tmp_path / "w", cwd=context, retry={"train"})


def test_an_image_without_a_dockerfile_is_refused(context, tmp_path):
    spec = _compile(reads_a_config, tmp_path / "p.yaml")
    (context / "images/toy-gpu/Dockerfile").unlink()
    with pytest.raises(FileNotFoundError, match="toy-gpu"):
        run_pipeline(spec, tmp_path / "w", cwd=context)


def test_task_names_must_be_unique_across_the_pipeline(toy_yaml, context, tmp_path):
    pipeline, platform = yaml.safe_load_all(toy_yaml.read_text())
    branch = pipeline["components"]["comp-condition-3"]["dag"]["tasks"]
    branch["init-model"] = branch.pop("fetch-model")  # both branches now hold an init-model
    spec = tmp_path / "dup.yaml"
    spec.write_text(yaml.safe_dump_all([pipeline, platform]))
    with pytest.raises(ValueError, match=r"not unique across the pipeline: \['init-model'\]"):
        run_pipeline(spec, tmp_path / "w", cwd=context)


def test_a_oneof_no_branch_of_which_ran_fails_its_consumer(toy_yaml, context, tmp_path):
    pipeline, platform = yaml.safe_load_all(toy_yaml.read_text())
    branches = pipeline["components"]["comp-condition-branches-1"]["dag"]["tasks"]
    branches["condition-3"]["triggerPolicy"] = branches["condition-2"]["triggerPolicy"]
    spec = tmp_path / "neither.yaml"
    spec.write_text(yaml.safe_dump_all([pipeline, platform]))
    with pytest.raises(KeyError, match="no branch of its OneOf ran"):
        _run(spec, context, tmp_path / "w", base="qwen")


def test_unknown_arguments_are_refused(toy_yaml, context, tmp_path):
    with pytest.raises(KeyError, match="not pipeline parameters"):
        _run(toy_yaml, context, tmp_path / "w", nodes=2)


# ---- conditions -------------------------------------------------------------------------------

VALUES = {"s": "tiny", "n": 1.0, "x": 0.5, "b": True, "f": False, "k": "3"}


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ("inputs.parameter_values['s'] == 'tiny'", True),
        ("!(inputs.parameter_values['s'] == 'tiny')", False),
        ("inputs.parameter_values['s'] != \"big\"", True),
        ("int(inputs.parameter_values['n']) == 1", True),
        ("!(int(inputs.parameter_values['n']) == 1)", False),
        ("int(inputs.parameter_values['n']) >= 2", False),
        ("inputs.parameter_values['x'] > 0.25", True),
        ("inputs.parameter_values['x'] <= double(0)", False),
        ("inputs.parameter_values['x'] < -1", False),
        ("int(inputs.parameter_values['k']) > 2", True),
        ("inputs.parameter_values['b'] == true", True),
        ("inputs.parameter_values['f'] != false", False),
        ("!(inputs.parameter_values['x'] > 0.25) && inputs.parameter_values['s'] != 'x'", False),
        ("inputs.parameter_values['f'] == true || inputs.parameter_values['s'] == 'tiny'", True),
        ("!inputs.parameter_values['f'] && (1 < 2 || false)", True),
        ("string(inputs.parameter_values['b']) == 'true'", True),
    ],
)
def test_conditions_kfp_emits(condition, expected):
    assert evaluate_condition(condition, VALUES) is expected


@pytest.mark.parametrize(
    ("condition", "error"),
    [
        ("inputs.parameter_values['n'] == 'tiny'", TypeError),  # CEL: no string/number overload
        ("inputs.parameter_values['b'] > false", TypeError),
        ("inputs.parameter_values['s'] && true", TypeError),
        ("inputs.parameter_values['missing'] == 1", KeyError),
        ("__import__('os').system('true')", ValueError),  # not Python
        ("inputs.parameter_values['n'] == 1 1", ValueError),
        ("1 == ", ValueError),
        ("inputs.parameter_values['s']", TypeError),  # not a bool
    ],
)
def test_conditions_that_are_not_cel_are_refused(condition, error):
    with pytest.raises(error):
        evaluate_condition(condition, VALUES)


def test_every_condition_of_the_toy_evaluates_under_its_inputs(toy_yaml):
    """Each compiled trigger condition parses, under a task input of its parameter's type."""
    pipeline = yaml.safe_load_all(toy_yaml.read_text()).__next__()
    typed = {"STRING": "tiny", "NUMBER_INTEGER": 3.0, "BOOLEAN": False, "NUMBER_DOUBLE": 1.5}
    conditions = 0
    for component in [pipeline["root"], *pipeline["components"].values()]:
        for task in component.get("dag", {}).get("tasks", {}).values():
            if "triggerPolicy" in task:
                inputs = pipeline["components"][task["componentRef"]["name"]]["inputDefinitions"]
                values = {k: typed[v["parameterType"]] for k, v in inputs["parameters"].items()}
                assert isinstance(evaluate_condition(task["triggerPolicy"]["condition"], values), bool)  # fmt: skip
                conditions += 1
    assert conditions == 6  # If/Else twice, a nested If, an If


# ---- image layouts ----------------------------------------------------------------------------


def _tree(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() + "/" * p.is_dir() for p in root.rglob("*"))


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_image_names_map_to_their_dockerfile_folder():
    assert image_name("ghcr.io/charlie-mlops/charlie-cpu:0.1.0") == "charlie-cpu"
    assert image_name("localhost:5000/a/b/charlie-cuda@sha256:abc") == "charlie-cuda"
    assert image_name("toy") == "toy"


@pytest.mark.parametrize("image", ["charlie-cpu", "charlie-cuda"])
def test_the_repo_images_lay_out_what_their_dockerfile_and_dockerignore_send(image, tmp_path):
    dockerfile = ROOT / "images" / image / "Dockerfile"
    app = image_layout(dockerfile, ROOT, tmp_path / "app")
    assert app == tmp_path / "app"

    # The runtime stage's `COPY [--chown=..] <src> <dest>` lines, read plainly.
    final = dockerfile.read_text().split("\nFROM ")[-1]
    lines = [line for line in final.splitlines() if line.startswith("COPY ")]
    copies = [line.split()[-2:] for line in lines if "--from=" not in line]
    assert ["params.yaml", "./"] in [list(c) for c in copies]
    ignore = DockerIgnore(ROOT)
    expected = set()
    for src, dest in copies:
        if (ROOT / src).is_dir():  # its contents that the context lets through
            base = dest.rstrip("/") + "/" if dest not in (".", "./") else ""
            for path in (ROOT / src).rglob("*"):
                rel = path.relative_to(ROOT).as_posix()
                if path.is_file() and not ignore.ignored(rel):
                    expected.add(base + path.relative_to(ROOT / src).as_posix())
        else:
            expected.add((dest if dest.endswith("/") else "") + Path(src).name)
    expected = {e.removeprefix("./") for e in expected}
    assert {p.relative_to(app).as_posix() for p in app.rglob("*") if p.is_file()} == expected
    assert (app / "params.yaml").read_bytes() == (ROOT / "params.yaml").read_bytes()
    assert any(e.startswith("configs/") for e in expected)
    for absent in ("src", ".venv", ".git", "tests", "pyproject.toml", "constraints.txt"):
        assert not (app / absent).exists(), absent  # the builder stage's, or never sent
    assert not list(app.rglob("__pycache__")) and not list(app.rglob("*.pyc"))
    if not any(dest.startswith("data") for _, dest in copies):
        assert not (app / "data").exists()
    assert not any(p.is_symlink() for p in app.rglob("*"))


def test_copy_follows_docker_rules_for_files_directories_and_destinations(tmp_path):
    context = _write(tmp_path / "ctx", {
        "a.txt": "a", "b.txt": "b", "one.txt": "1",
        "conf/x.yaml": "x", "conf/sub/y.yaml": "y", "conf/empty/.keep": "",
        "src/m.py": "", "dot/z.txt": "z",
    })  # fmt: skip
    _write(
        context,
        {
            "Dockerfile": """# syntax=docker/dockerfile:1
ARG BASE=python:3.11-slim
FROM ${BASE} AS builder
WORKDIR /build
COPY src/ src/

FROM builder AS runtime-base
WORKDIR /app
COPY --chown=app:app conf/ conf/

FROM runtime-base
COPY --from=builder /build /opt/build
# relative WORKDIRs chain
WORKDIR /srv
WORKDIR app
COPY a.txt \\
     b.txt ./
COPY ["one.txt", "renamed.txt"]
COPY one.txt into/
COPY conf copied
COPY dot/ /srv/app/abs/
COPY a.txt /etc/outside.txt
COPY *.txt globbed/
"""
        },
    )
    app = image_layout(context / "Dockerfile", context, tmp_path / "app")

    copied = ["copied/", "copied/empty/", "copied/empty/.keep", "copied/sub/", "copied/sub/y.yaml"]
    assert _tree(app) == [
        "a.txt", "abs/", "abs/z.txt", "b.txt", *copied, "copied/x.yaml",
        "globbed/", "globbed/a.txt", "globbed/b.txt", "globbed/one.txt",
        "into/", "into/one.txt", "renamed.txt",
    ]  # fmt: skip
    assert (app / "renamed.txt").read_text() == "1"
    # /app/conf (the parent stage's workdir) is not under the final WORKDIR /srv/app
    assert not (app / "conf").exists()


def test_several_sources_need_a_directory_destination(tmp_path):
    context = _write(tmp_path / "ctx", {"a": "", "b": "", "Dockerfile": "FROM x\nCOPY a b dest\n"})
    with pytest.raises(ValueError, match="several sources"):
        image_layout(context / "Dockerfile", context, tmp_path / "app")


def test_dockerignore_last_match_wins_with_reincludes_and_double_stars(tmp_path):
    context = _write(tmp_path / "ctx", {
        ".dockerignore": (
            "# comment\n\n*\n!keep/\nkeep/**/*.tmp\n!keep/deep/important.tmp\n"
            "**/__pycache__\n!data/samples\ndata\n/logs/\n!logs/keep.log\n"
        ),
        "top.txt": "", "keep/a.txt": "", "keep/b.tmp": "", "keep/deep/c.tmp": "",
        "keep/deep/important.tmp": "", "keep/deep/__pycache__/m.pyc": "",
        "data/samples/s.json": "", "logs/run.log": "", "logs/keep.log": "",
    })  # fmt: skip
    ignore = DockerIgnore(context)
    sent = {
        p.relative_to(context).as_posix()
        for p in context.rglob("*")
        if p.is_file() and not ignore.ignored(p.relative_to(context).as_posix())
    }
    assert sent == {"keep/a.txt", "keep/deep/important.tmp", "logs/keep.log"}
    assert ignore.ignored("keep/deep/__pycache__")  # a directory pattern excludes what is under
    assert not ignore.ignored("keep/deep")

    _write(context, {"Dockerfile": "FROM x\nWORKDIR /app\nCOPY keep/ keep/\nCOPY logs logs\n"})
    app = image_layout(context / "Dockerfile", context, tmp_path / "app")
    assert _tree(app) == [
        "keep/", "keep/a.txt", "keep/deep/", "keep/deep/important.tmp", "logs/", "logs/keep.log",
    ]  # fmt: skip

    # data/samples is re-included, then `data` (later) excludes it again: docker build fails.
    _write(context, {"Dockerfile": "FROM x\nWORKDIR /app\nCOPY data/samples data/samples\n"})
    with pytest.raises(FileNotFoundError, match="not in the build context"):
        image_layout(context / "Dockerfile", context, tmp_path / "app")
    _write(context, {"Dockerfile": "FROM x\nWORKDIR /app\nCOPY top.txt ./\n"})
    with pytest.raises(FileNotFoundError, match=r"top\.txt is not in the build context"):
        image_layout(context / "Dockerfile", context, tmp_path / "app")


def test_a_reinclude_below_an_excluded_directory_sends_just_that(tmp_path):
    context = _write(tmp_path / "ctx", {
        ".dockerignore": "data\n!data/samples\n",
        "data/raw/big.csv": "", "data/samples/a.json": "{}", "data/samples/b/c.json": "{}",
        "Dockerfile": "FROM x\nWORKDIR /app\nCOPY data/ data/\n",
    })  # fmt: skip
    app = image_layout(context / "Dockerfile", context, tmp_path / "app")
    assert _tree(app) == [
        "data/", "data/samples/", "data/samples/a.json", "data/samples/b/", "data/samples/b/c.json",
    ]  # fmt: skip
    assert json.loads((app / "data/samples/a.json").read_text()) == {}
