"""Theses and prices from an S3 prefix or a DVC-tracked path, and a price cache that sticks.

The object store is moto's S3 server on 127.0.0.1 (tests/s3_server.py); EODHD is the fake one
(tests/eodhd_server.py). Nothing leaves the machine.
"""

from __future__ import annotations

import json
import os
import subprocess
import tempfile
from pathlib import Path

import pytest
from botocore.exceptions import ClientError

from charlie import sources
from charlie.cli import main
from charlie.errors import CharlieError

from .conftest import REPO, SAMPLES, read_jsonl
from .eodhd_server import FakeEodhd, bars_from_csv
from .s3_server import BIN, s3_client

BUCKET = "charlie-data"
THESIS = """<?xml version="1.0" encoding="UTF-8"?>
<stock-theses ticker="{ticker}" generated-by="test" version="1.0">
  <thesis>
    <as-of-date>2024-01-08</as-of-date>
    <reasoning>{reasoning}</reasoning>
    <action>{action}</action>
    <support>- close above SMA20</support>
  </thesis>
</stock-theses>
"""


@pytest.fixture
def s3(s3_endpoint, monkeypatch):
    """A client of the local S3 server, which the stages reach through AWS_ENDPOINT_URL."""
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    client = s3_client(s3_endpoint)
    client.create_bucket(Bucket=BUCKET)
    return client


@pytest.fixture
def scratch(tmp_path, monkeypatch) -> Path:
    """tempfile's directory for the test, to see that downloads are cleaned up."""
    directory = tmp_path / "scratch"
    directory.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(directory))
    return directory


def upload(client, directory: Path, prefix: str) -> None:
    for path in sorted(p for p in directory.rglob("*") if p.is_file()):
        key = f"{prefix}{path.relative_to(directory).as_posix()}"
        client.put_object(Bucket=BUCKET, Key=key, Body=path.read_bytes())


def parse(tmp_path: Path, name: str, *source: str) -> tuple[int, Path]:
    out = tmp_path / name
    code = main(["parse", *source, "--out", str(out / "records.jsonl"),
                 "--rejects", str(out / "rejects.jsonl"),
                 "--report", str(out / "report.json")])  # fmt: skip
    return code, out


def report(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


# ------------------------------------------------------------------------------ S3


def test_s3_theses_parse_like_the_local_copy_and_name_their_version(s3, tmp_path, scratch, capsys):
    upload(s3, SAMPLES / "xml", "theses/v1/")
    code, local = parse(tmp_path, "local", "--input-dir", str(SAMPLES / "xml"))
    assert code == 0
    uri = f"s3://{BUCKET}/theses/v1/"
    code, remote = parse(tmp_path, "s3", "--input-dir", uri)
    assert code == 0
    assert read_jsonl(remote / "records.jsonl") == read_jsonl(local / "records.jsonl")
    assert read_jsonl(remote / "rejects.jsonl") == read_jsonl(local / "rejects.jsonl")

    local_source, source = report(local)["source"], report(remote)["source"]
    assert local_source["kind"] == "local" and local_source["uri"] == str(SAMPLES / "xml")
    assert source["kind"] == "s3" and source["uri"] == uri
    assert source["version"]["objects"] == len(list((SAMPLES / "xml").glob("*.xml")))
    assert source["version"]["versioned"] is False
    # The same bytes have the same tree digest whatever the kind of source.
    assert source["version"]["tree_sha256"] == local_source["version"]["tree_sha256"]
    assert report(remote)["input_dir"] == uri
    assert f"reading theses from s3 {uri} (sha256 {source['version']['sha256'][:12]}" in (
        capsys.readouterr().err
    )
    assert not list(scratch.iterdir())  # the download is gone

    # No trailing slash: the same prefix (never theses/v1x/), and the same version.
    s3.put_object(Bucket=BUCKET, Key="theses/v1x/ZZZZ.xml", Body=b"<x/>")
    assert parse(tmp_path, "again", "--input-dir", uri.rstrip("/"))[0] == 0
    assert report(tmp_path / "again")["source"]["version"] == source["version"]

    s3.put_object(Bucket=BUCKET, Key="theses/v1/ACME.xml",
                  Body=THESIS.format(ticker="ACME", action="BUY", reasoning="Changed."))  # fmt: skip
    assert parse(tmp_path, "changed", "--input-dir", uri)[0] == 0
    changed = report(tmp_path / "changed")["source"]["version"]
    assert changed["sha256"] != source["version"]["sha256"]
    assert changed["tree_sha256"] != source["version"]["tree_sha256"]


def test_a_versioned_bucket_records_version_ids(s3, tmp_path):
    s3.put_bucket_versioning(Bucket=BUCKET, VersioningConfiguration={"Status": "Enabled"})
    for ticker in ("ACME", "BOLT"):
        s3.put_object(Bucket=BUCKET, Key=f"x/{ticker}.xml",
                      Body=THESIS.format(ticker=ticker, action="BUY", reasoning="Up."))  # fmt: skip
    dest = tmp_path / "dest"
    first = sources.s3_download(f"s3://{BUCKET}/x/", dest)
    assert first.version["versioned"] is True and first.version["objects"] == 2
    s3.put_object(Bucket=BUCKET, Key="x/ACME.xml",
                  Body=THESIS.format(ticker="ACME", action="SELL", reasoning="Down."))  # fmt: skip
    second = sources.s3_list(f"s3://{BUCKET}/x/")
    assert second.sha256 != first.version["sha256"]
    assert all(obj["version_id"] for obj in second.objects)


def test_s3_problems_are_one_sentence(s3, tmp_path, capsys):
    code, _ = parse(tmp_path, "out", "--input-dir", "s3://no-such-bucket/theses/")
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("charlie parse: error: bucket no-such-bucket does not exist at http")

    assert parse(tmp_path, "out", "--input-dir", f"s3://{BUCKET}/nothing/")[0] == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert f"no objects under s3://{BUCKET}/nothing/; upload the files there" in err

    s3.put_object(Bucket=BUCKET, Key="only/README.txt", Body=b"no theses here")
    assert parse(tmp_path, "out", "--input-dir", f"s3://{BUCKET}/only/")[0] == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.endswith(f"input directory s3://{BUCKET}/only/ holds no *.xml file.")

    assert parse(tmp_path, "out", "--input-dir", "gs://bucket/x/")[0] == 2
    assert "a URI must be s3://bucket/prefix/" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("rel", ["../evil.xml", "a/../../evil.xml", "./x.xml", "/abs.xml"])
def test_keys_that_would_escape_the_download_directory_are_refused(rel):
    with pytest.raises(CharlieError, match="outside the download directory"):
        sources._check_relative(rel, f"p/{rel}", "s3://b/p/")


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"])
def test_refused_credentials_are_one_sentence(code):
    exc = ClientError({"Error": {"Code": code, "Message": "secret detail"}}, "ListObjectsV2")
    message = sources._s3_problem(exc, "b", "s3://b/p/", {"AWS_ENDPOINT_URL": "http://minio:9000"})
    assert message == (
        f"http://minio:9000 refused the credentials for s3://b/p/ ({code}); check "
        "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY."
    )


# ------------------------------------------------------------------------------ DVC


def git(repo: Path, *args: str) -> str:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
           "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}  # fmt: skip
    result = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{args} failed:\n{result.stdout}\n{result.stderr}"
    return result.stdout.strip()


def write_theses(directory: Path, reasoning: str) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for ticker, action in (("ACME", "BUY"), ("BOLT", "SELL")):
        text = THESIS.format(ticker=ticker, action=action, reasoning=reasoning)
        (directory / f"{ticker}.xml").write_text(text, encoding="utf-8")


@pytest.fixture
def dvc_repo(s3, s3_endpoint, tmp_path) -> Path:
    """A git repository whose data/raw_xml DVC tracks in an S3 remote: tags v1 and v2."""
    repo = tmp_path / "theses-repo"
    repo.mkdir()
    git(repo, "git", "init", "-q", "-b", "main")
    git(repo, "dvc", "init", "-q")
    git(repo, "dvc", "remote", "add", "-d", "store", f"s3://{BUCKET}/dvc")
    git(repo, "dvc", "remote", "modify", "store", "endpointurl", s3_endpoint)
    for tag, reasoning in (("v1", "First version."), ("v2", "Second version.")):
        write_theses(repo / "data" / "raw_xml", reasoning)
        git(repo, "dvc", "add", "-q", "data/raw_xml")
        git(repo, "dvc", "push", "-q")
        git(repo, "git", "add", "-A")
        git(repo, "git", "commit", "-q", "-m", tag)
        git(repo, "git", "tag", tag)
    # Only the remote holds the data now, so a fetch that works went through S3.
    git(repo, "rm", "-rf", ".dvc/cache")
    return repo


@pytest.mark.slow
def test_a_dvc_source_gives_exactly_the_revision_asked_for(dvc_repo, tmp_path, scratch, capsys):
    v1 = git(dvc_repo, "git", "rev-parse", "v1")
    dvc = ["--dvc-repo", str(dvc_repo), "--input-dir", "data/raw_xml"]
    assert parse(tmp_path, "v1", *dvc, "--dvc-rev", "v1")[0] == 0
    assert parse(tmp_path, "head", *dvc)[0] == 0
    old = read_jsonl(tmp_path / "v1" / "records.jsonl")
    new = read_jsonl(tmp_path / "head" / "records.jsonl")
    assert {r["reasoning"] for r in old} == {"First version."} and len(old) == 2
    assert {r["reasoning"] for r in new} == {"Second version."}

    source = report(tmp_path / "v1")["source"]
    md5 = git(dvc_repo, "git", "show", "v1:data/raw_xml.dvc").split("md5: ")[1].split()[0]
    assert source == {
        "kind": "dvc",
        "uri": str(dvc_repo),
        "version": {"repo": str(dvc_repo), "path": "data/raw_xml", "rev": "v1", "commit": v1,
                    "md5": md5, "tree_sha256": source["version"]["tree_sha256"]},
    }  # fmt: skip
    head = report(tmp_path / "head")["source"]["version"]
    assert head["rev"] == "" and head["commit"] == git(dvc_repo, "git", "rev-parse", "HEAD")
    assert f"at v1 = commit {v1[:12]}, md5 {md5}" in capsys.readouterr().err
    assert not list(scratch.iterdir())

    assert parse(tmp_path, "bad", *dvc, "--dvc-rev", "no-such-tag")[0] == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (
        f"charlie parse: error: dvc get data/raw_xml from {dvc_repo} at no-such-tag failed: "
        "unknown Git revision 'no-such-tag' (no branch, tag or commit 'no-such-tag' in the "
        "repository)."
    )
    assert parse(tmp_path, "bad", "--dvc-repo", str(dvc_repo), "--input-dir", "data/nope")[0] == 2
    assert f"data/nope is not in {dvc_repo} (default branch)." in capsys.readouterr().err
    assert not list(scratch.iterdir())


def test_dvc_flags_that_contradict_are_one_sentence(tmp_path, capsys):
    assert parse(tmp_path, "x", "--dvc-repo", "r", "--input-dir", "s3://b/p/")[0] == 2
    assert "with dvc_repo, input_dir is a path inside that repository" in capsys.readouterr().err
    assert parse(tmp_path, "x", "--dvc-rev", "v1")[0] == 2
    assert "dvc_rev (v1) needs dvc_repo" in capsys.readouterr().err


# --------------------------------------------------------------------------- prices


@pytest.fixture(scope="module")
def records(tmp_path_factory) -> Path:
    """The bundled sample, parsed."""
    out = tmp_path_factory.mktemp("parsed")
    assert main(["parse", "--input-dir", str(SAMPLES / "xml"),
                 "--out", str(out / "records.jsonl"), "--rejects", str(out / "rejects.jsonl"),
                 "--report", str(out / "report.json")]) == 0  # fmt: skip
    return out / "records.jsonl"


def dataset(tmp_path: Path, records: Path, name: str, *flags: str) -> int:
    return main(["dataset", "--params", str(REPO / "params.yaml"), "--records", str(records),
                 "--out", str(tmp_path / name / "ds"), "--card", str(tmp_path / name / "card.json"),
                 *flags])  # fmt: skip


@pytest.mark.slow
def test_prices_from_an_s3_prefix_are_downloaded_once_per_version(
    s3, tmp_path, records, monkeypatch
):
    monkeypatch.chdir(REPO)
    upload(s3, SAMPLES / "prices", "prices/")
    cache = tmp_path / "cache"
    flags = ["--price-dir", f"s3://{BUCKET}/prices/", "--price-cache-dir", str(cache)]
    assert dataset(tmp_path, records, "local") == 0  # params.yaml: the sample, as before
    assert dataset(tmp_path, records, "s3", *flags) == 0
    card = json.loads((tmp_path / "s3" / "card.json").read_text())
    assert card == json.loads((tmp_path / "local" / "card.json").read_text())
    (copy,) = (cache / "file" / "s3").iterdir()
    assert sorted(p.name for p in copy.iterdir()) == sorted(
        p.name for p in (SAMPLES / "prices").iterdir()
    )

    def no_download(*args, **kwargs):
        raise AssertionError("downloaded again")

    monkeypatch.setattr(sources, "_s3_fetch", no_download)
    assert dataset(tmp_path, records, "again", *flags) == 0


@pytest.mark.slow
def test_a_second_eodhd_run_asks_the_network_nothing(tmp_path, records, monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    key = "SOURCES-TEST-KEY-42"
    with FakeEodhd(bars_from_csv(SAMPLES / "prices"), api_key=key) as server:
        monkeypatch.setenv("EODHD_API_KEY", key)
        monkeypatch.setenv("CHARLIE_PRICES__EODHD__BASE_URL", server.url)  # as the pipeline does
        flags = ["--price-providers", "eodhd", "--price-cache-dir", str(tmp_path / "cache")]
        assert dataset(tmp_path, records, "first", *flags) == 0
        first = len(server.requests)
        assert first >= 6 and all(r.query["api_token"] == key for r in server.requests)
        assert dataset(tmp_path, records, "second", *flags) == 0
        assert len(server.requests) == first  # zero HTTP requests: all from the cache
        monkeypatch.delenv("EODHD_API_KEY")  # a full cache hit needs no key either
        assert dataset(tmp_path, records, "third", *flags) == 0
        assert len(server.requests) == first
    card = json.loads((tmp_path / "second" / "card.json").read_text())
    assert {s["provider"] for s in card["price_sources"]} == {"eodhd"}
    assert card == json.loads((tmp_path / "first" / "card.json").read_text())
    cached = b"".join(p.read_bytes() for p in (tmp_path / "cache" / "eodhd").iterdir())
    assert key.encode() not in cached and key not in capsys.readouterr().err
