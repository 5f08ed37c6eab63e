"""charlie.basemodel and `charlie fetch-model`: a real base model on the volume, a reference
folder in the pipeline, and train resolving one to the other.

S3 is moto's server on 127.0.0.1; the hub is a Hugging Face cache laid out under a temporary
HF_HOME and read with HF_HUB_OFFLINE=1, or snapshot_download replaced by one raising the real
huggingface_hub errors. Nothing is downloaded.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from charlie import ACTIONS, fetch
from charlie.basemodel import REFERENCE, resolve
from charlie.errors import CharlieError
from charlie.stages import fetch_model

from .s3_server import s3_client

pytest.importorskip("transformers")

REPO = Path(__file__).resolve().parents[1]
SHA = "0123456789abcdef0123456789abcdef01234567"
BUCKET = "models-bucket"


def _rows(n: int, seed: int) -> list[dict[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        ticker, action = rng.choice(["AAPL", "MSFT", "XOM", "KO"]), rng.choice(ACTIONS)
        prompt = f"{ticker} close {rng.uniform(10, 500):.2f} rsi {rng.uniform(5, 95):.0f}"
        completion = (f"<reasoning>{ticker} looks {action.lower()}</reasoning>"
                      f"<support>momentum</support><action><{action}></action>")  # fmt: skip
        rows.append({"prompt": prompt, "completion": completion, "action": action})
    return rows


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    """A real save_pretrained folder: the tiny tokenizer and Llama the demo builds."""
    from charlie.training.tokens import build_tiny_model, train_tokenizer

    folder = tmp_path_factory.mktemp("tiny") / "model"
    corpus = _rows(120, seed=1)
    tok = train_tokenizer((f"{r['prompt']}\n{r['completion']}" for r in corpus), vocab_size=400)
    model = build_tiny_model(tok, hidden_size=32, num_layers=1, num_heads=2, num_kv_heads=1,
                             intermediate_size=64, max_positions=256, seed=0)  # fmt: skip
    tok.save_pretrained(folder)
    model.save_pretrained(folder)
    model.generation_config.save_pretrained(folder)
    assert (folder / "model.safetensors").is_file() and (folder / "config.json").is_file()
    return folder


def _fetch(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    fetch_model.add_arguments(parser)
    return fetch_model.run(parser.parse_args(list(argv)))


def _upload(client, folder: Path, prefix: str) -> None:
    for file in sorted(folder.iterdir()):
        client.put_object(Bucket=BUCKET, Key=f"{prefix}/{file.name}", Body=file.read_bytes())


def _stamp(folder: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in folder.iterdir()}


# --------------------------------------------------------------------------------------- S3


def test_s3_fetch_puts_the_weights_on_the_volume_and_only_a_reference_in_the_output(
    tiny_model, s3_endpoint, tmp_path, monkeypatch, capsys
):
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    _upload(client, tiny_model, "models/my-llama")
    client.put_object(
        Bucket=BUCKET, Key="models/my-llama-v2/config.json", Body=b"{}"
    )  # a neighbour
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    cache, ref = tmp_path / "volume", tmp_path / "ref"
    uri = f"s3://{BUCKET}/models/my-llama/"

    assert _fetch("--base-model", uri, "--cache-dir", str(cache), "--out", str(ref)) == 0
    record = json.loads((ref / REFERENCE).read_text())
    volume = Path(record["path"])  # one folder per version of the objects
    assert volume.parent == (cache / "models" / "s3").resolve()
    assert record == {"ref": uri, "path": str(volume), "source": "s3",
                      "revision": f"sha256:{volume.name}"}  # fmt: skip
    assert len(record["revision"]) == 71
    # The reference folder: config, generation config, tokenizer; never the weights.
    names = {p.name for p in ref.iterdir()}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
            REFERENCE} <= names  # fmt: skip
    assert not any(n.endswith((".safetensors", ".bin")) for n in names)
    # The volume: the whole model, byte for byte, and not the neighbouring prefix.
    assert {p.name for p in volume.iterdir()} == {p.name for p in tiny_model.iterdir()}
    for file in tiny_model.iterdir():
        assert (volume / file.name).read_bytes() == file.read_bytes()
    assert resolve(ref).weights_path == str(volume)
    assert resolve(ref).revision == record["revision"]

    # Once there, a second fetch downloads nothing and gives the same revision.
    before = _stamp(volume)
    capsys.readouterr()
    assert _fetch("--base-model", uri, "--cache-dir", str(cache), "--out", str(ref)) == 0
    assert _stamp(volume) == before
    assert "is already in" in capsys.readouterr().err
    assert json.loads((ref / REFERENCE).read_text()) == record

    # A changed object is a new version: downloaded beside the old one, the revision changes.
    config = json.loads((tiny_model / "config.json").read_text())
    client.put_object(Bucket=BUCKET, Key="models/my-llama/config.json",
                      Body=json.dumps({**config, "note": "v2"}).encode())  # fmt: skip
    assert _fetch("--base-model", uri, "--cache-dir", str(cache), "--out", str(ref)) == 0
    changed = json.loads((ref / REFERENCE).read_text())
    assert changed["revision"] != record["revision"] and _stamp(volume) == before
    assert json.loads((Path(changed["path"]) / "config.json").read_text())["note"] == "v2"


def test_s3_errors_are_one_sentence(tiny_model, s3_endpoint, tmp_path, monkeypatch):
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    client.put_object(Bucket=BUCKET, Key="weights-only/model.safetensors", Body=b"x")
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    cases = {
        "s3://no-such-bucket/m/": "no-such-bucket",
        f"s3://{BUCKET}/nothing-here/": "no objects under",
        f"s3://{BUCKET}/weights-only": "has no config.json: it is not a save_pretrained folder.",
    }
    for uri, sentence in cases.items():
        with pytest.raises(CharlieError) as err:
            fetch.fetch_base_model(uri, tmp_path / "volume", tmp_path / "ref")
        assert sentence in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "ref").exists()


# -------------------------------------------------------------------------------------- hub


def _hub_cache(home: Path, model: Path, repo: str = "Org/Name") -> Path:
    """A Hugging Face cache as snapshot_download leaves it: blobs, a snapshot of links, a ref."""
    storage = home / "hub" / f"models--{repo.replace('/', '--')}"
    snapshot = storage / "snapshots" / SHA
    (storage / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for i, file in enumerate(sorted(model.iterdir())):
        blob = storage / "blobs" / f"blob{i}"
        shutil.copyfile(file, blob)
        (snapshot / file.name).symlink_to(os.path.relpath(blob, snapshot))
    (storage / "refs").mkdir()
    (storage / "refs" / "main").write_text(SHA)
    return snapshot


def test_hub_model_offline_from_the_cache_records_the_commit(tiny_model, tmp_path):
    home = tmp_path / "hf_home"
    snapshot = _hub_cache(home, tiny_model)
    ref = tmp_path / "ref"
    code = (
        "import argparse, sys\n"
        "from charlie.stages import fetch_model\n"
        "p = argparse.ArgumentParser(); fetch_model.add_arguments(p)\n"
        "sys.exit(fetch_model.run(p.parse_args(sys.argv[1:])))\n"
    )
    env = {**os.environ, "HF_HOME": str(home), "HF_HUB_OFFLINE": "1"}
    env.pop("HF_HUB_CACHE", None)
    result = subprocess.run(
        [sys.executable, "-c", code, "--base-model", "Org/Name", "--cache-dir",
         str(tmp_path / "volume"), "--out", str(ref)],
        env=env, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    record = json.loads((ref / REFERENCE).read_text())
    assert record == {"ref": "Org/Name", "path": str(snapshot), "revision": SHA, "source": "hub"}
    assert not (ref / "config.json").is_symlink()  # a copy, not a link into the cache
    assert (ref / "config.json").read_bytes() == (tiny_model / "config.json").read_bytes()
    assert not list(ref.glob("*.safetensors"))
    assert SHA in result.stdout
    assert resolve(ref).weights_path == str(snapshot)


def test_hub_offline_and_not_cached_says_so(tmp_path, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setenv("HF_HOME", str(tmp_path / "empty"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(CharlieError) as err:
        fetch.fetch_base_model("Org/Missing", tmp_path / "volume", tmp_path / "ref")
    message = str(err.value)
    assert message.startswith("HF_HUB_OFFLINE is set and Org/Missing is not (completely) in")
    assert str(tmp_path / "empty" / "hub") in message and "\n" not in message


def _http_error(cls, status: int, message: str):
    import httpx2

    request = httpx2.Request("GET", "https://huggingface.co/api/models/org/name/revision/main")
    return cls(message, response=httpx2.Response(status, request=request))


@pytest.mark.parametrize(
    ("make", "sentence"),
    [
        (lambda e: _http_error(e.GatedRepoError, 403, "403 Client Error. Cannot access gated repo"),
         "meta-llama/Llama-3.1-8B-Instruct is a gated model: accept its licence at "
         "https://huggingface.co/meta-llama/Llama-3.1-8B-Instruct with the account whose token "
         "the charlie-hf Secret holds"),
        (lambda e: _http_error(e.RepositoryNotFoundError, 404, "404 Client Error. Repository Not Found"),
         "meta-llama/Llama-3.1-8B-Instruct is not a model on the Hugging Face Hub"),
        (lambda e: _http_error(e.RevisionNotFoundError, 404, "404 Client Error. Revision Not Found"),
         "meta-llama/Llama-3.1-8B-Instruct has no revision 'v9' on the Hugging Face Hub."),
        (lambda e: e.LocalEntryNotFoundError("An error happened while trying to locate the files"),
         "the Hugging Face Hub cannot be reached and meta-llama/Llama-3.1-8B-Instruct at v9 is not"),
    ],
)  # fmt: skip
def test_hub_errors_are_one_sentence(make, sentence, tmp_path, monkeypatch):
    import huggingface_hub
    import huggingface_hub.errors as errors
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token")
    seen = {}

    def refuse(repo_id, **kwargs):
        seen.update(kwargs, repo_id=repo_id)
        raise make(errors)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", refuse)
    with pytest.raises(CharlieError) as err:
        fetch.fetch_base_model("meta-llama/Llama-3.1-8B-Instruct", tmp_path / "v", tmp_path / "ref",
                        revision="v9")  # fmt: skip
    assert str(err.value).startswith(sentence)
    assert str(err.value).endswith(".") and "\n" not in str(err.value)
    assert "hf_secret_token" not in str(err.value)
    assert seen["token"] == "hf_secret_token" and seen["revision"] == "v9"
    assert not (tmp_path / "ref").exists()


def test_hub_downloads_safetensors_and_falls_back_to_bin_only_without_them(
    tiny_model, tmp_path, monkeypatch
):
    import huggingface_hub

    calls: list[dict] = []
    folders = {"Org/St": tmp_path / "st" / SHA, "Org/Bin": tmp_path / "bin" / SHA}
    shutil.copytree(tiny_model, folders["Org/St"])
    shutil.copytree(tiny_model, folders["Org/Bin"], ignore=shutil.ignore_patterns("*.safetensors"))
    (folders["Org/Bin"] / "pytorch_model.bin").write_bytes(b"weights")

    def fake(repo_id, **kwargs):
        calls.append(kwargs)
        return str(folders[repo_id])

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake)
    fetch.fetch_base_model("Org/St", tmp_path / "v", tmp_path / "ref1")
    (only,) = calls
    assert "*.safetensors" in only["allow_patterns"] and "config.json" in only["allow_patterns"]
    assert not any(".bin" in p for p in only["allow_patterns"])
    assert only["ignore_patterns"] == ["*/*"]  # no original/*.pth, onnx/, ...

    calls.clear()
    record = fetch.fetch_base_model("Org/Bin", tmp_path / "v", tmp_path / "ref2")
    assert len(calls) == 2 and "pytorch_model*.bin" in calls[1]["allow_patterns"]
    assert record["revision"] == SHA and record["path"] == str(folders["Org/Bin"])


def test_a_local_folder_is_used_as_it_is_and_tiny_is_refused(tiny_model, tmp_path):
    record = fetch.fetch_base_model(str(tiny_model), tmp_path / "v", tmp_path / "ref")
    assert record == {"ref": str(tiny_model), "path": str(tiny_model.resolve()),
                      "revision": None, "source": "local"}  # fmt: skip
    assert not (tmp_path / "v").exists()
    with pytest.raises(CharlieError, match="'tiny' is the demo's, built by `charlie init-model`"):
        fetch.fetch_base_model("tiny", tmp_path / "v", tmp_path / "ref")
    with pytest.raises(CharlieError, match="only s3:// object-store URIs"):
        fetch.fetch_base_model("gs://bucket/model", tmp_path / "v", tmp_path / "ref")


# ------------------------------------------------------------------------------- resolution


def _reference(tmp_path: Path, target: Path, source: str = "s3") -> Path:
    ref = tmp_path / "ref"
    ref.mkdir()
    shutil.copyfile(target / "config.json", ref / "config.json") if target.exists() else None
    record = {"ref": "s3://b/m/", "path": str(target), "revision": "sha256:abc", "source": source}
    (ref / REFERENCE).write_text(json.dumps(record))
    return ref


def test_resolve_reference_folder_model_folder_and_hub_id(tiny_model, tmp_path):
    ref = _reference(tmp_path, tiny_model)
    assert resolve(ref) == (str(tiny_model), "s3://b/m/", "sha256:abc", "s3")
    assert resolve(tiny_model).weights_path == str(tiny_model)  # weights: itself
    merged = tmp_path / "merged"  # a trained model records its base, and is still itself
    shutil.copytree(tiny_model, merged)
    shutil.copyfile(ref / REFERENCE, merged / REFERENCE)
    assert resolve(merged).weights_path == str(merged)
    hub = resolve("meta-llama/Llama-3.1-8B-Instruct")
    assert hub.weights_path == "meta-llama/Llama-3.1-8B-Instruct" and hub.source == "hub"


def test_a_reference_to_a_folder_this_pod_lacks_is_one_sentence(tmp_path):
    ref = _reference(tmp_path, tmp_path / "not-mounted")
    with pytest.raises(CharlieError) as err:
        resolve(ref)
    assert str(err.value).startswith(
        f"the base model reference {ref} points at {tmp_path / 'not-mounted'}, which this pod "
        "does not mount; mount the cache volume"
    )


def test_train_resolves_a_reference_and_records_it_beside_the_adapter(tiny_model, tmp_path):
    from charlie.stages import train as train_stage
    from charlie.training.config import TrainConfig

    ref = _reference(tmp_path, tiny_model)
    cfg = TrainConfig(base_model=str(ref), output_dir=tmp_path / "run", gpu_type="CPU")
    resolved_cfg, base = train_stage.resolve_base_model(cfg)
    assert resolved_cfg.base_model == str(tiny_model)
    assert resolved_cfg.output_dir == cfg.output_dir
    (tmp_path / "run" / "merged").mkdir(parents=True)
    train_stage.record_base_model(
        resolved_cfg, base, {"merged_model": str(tmp_path / "run" / "merged")}
    )
    for folder in (tmp_path / "run", tmp_path / "run" / "merged"):
        assert json.loads((folder / REFERENCE).read_text()) == {
            "ref": "s3://b/m/", "path": str(tiny_model.resolve()), "revision": "sha256:abc",
            "source": "s3",
        }  # fmt: skip
    # A model folder or a hub id is trained from as it is.
    plain = TrainConfig(base_model=str(tiny_model), output_dir=tmp_path / "o", gpu_type="CPU")
    assert train_stage.resolve_base_model(plain)[0] is plain


def test_an_adapter_trained_on_a_volume_snapshot_finds_its_base_elsewhere(tmp_path):
    from charlie.models import adapter_base

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    gone = "/mnt/charlie-cache/huggingface/hub/models--Org--Name/snapshots/" + SHA
    (adapter / "adapter_config.json").write_text(json.dumps({"base_model_name_or_path": gone}))
    record = {"ref": "Org/Name", "path": gone, "revision": SHA, "source": "hub"}
    (adapter / REFERENCE).write_text(json.dumps(record))
    assert adapter_base(adapter) == "Org/Name"
    (adapter / REFERENCE).unlink()
    assert adapter_base(adapter) == gone


def test_tokenize_reads_a_reference_folder_as_its_base_model(tiny_model, tmp_path):
    from datasets import Dataset, DatasetDict

    from charlie.cli import main

    ref = tmp_path / "ref"
    fetch.fetch_base_model(str(tiny_model), tmp_path / "volume", ref)  # what fetch-model writes
    assert not list(ref.glob("*.safetensors")) and (ref / "chat_template.jinja").is_file()
    rows = _rows(60, seed=2)
    sft = tmp_path / "sft"
    DatasetDict(train=Dataset.from_list(rows[:40]), validation=Dataset.from_list(rows[40:50]),
                test=Dataset.from_list(rows[50:])).save_to_disk(sft)  # fmt: skip
    config = tmp_path / "sft.yaml"
    config.write_text(f"base_model: org/not-reachable\noutput_dir: {tmp_path / 'run'}\n"
                      "max_length: auto\n")  # fmt: skip
    for flag, out in (("--base-model", "tok1"), ("--tokenizer", "tok2")):
        code = main(["tokenize", "--params", str(tmp_path / "none.yaml"), "--config", str(config),
                     "--dataset", str(sft), "--out", str(tmp_path / out), flag, str(ref)])  # fmt: skip
        assert code == 0
        report = json.loads((tmp_path / out / "tokenize_report.json").read_text())
        assert report["tokenizer"] == str(ref) and report["added_special_tokens"] == 11
        assert report["context_length"] == 256  # the reference's config.json
        assert (tmp_path / out / "tokenizer" / "tokenizer.json").is_file()
