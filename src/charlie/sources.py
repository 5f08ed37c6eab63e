"""Where a stage's input comes from: a local directory, an S3 prefix, or a DVC-tracked path.

A source is named by a location string and, for DVC, a repository and revision:

  local  a directory, read in place (``data/samples/xml``, the sample baked into the image)
  s3     ``s3://bucket/prefix/`` on any S3-compatible store (MinIO included): the endpoint
         from ``AWS_ENDPOINT_URL`` (or ``AWS_ENDPOINT_URL_S3``), credentials from
         ``AWS_ACCESS_KEY_ID`` / ``AWS_SECRET_ACCESS_KEY``; every object under the prefix is
         downloaded, keeping its path relative to the prefix
  dvc    a path tracked by DVC in a git repository (a URL or a local path) at a revision,
         fetched as ``dvc get <repo> <path> --rev <rev>`` does; the DVC remote's S3
         credentials come from the same ``AWS_*`` environment

Each materialisation returns a :class:`Source`: its kind, its URI and its version, a record
that says exactly which data was read (see :meth:`Source.as_dict`). Every failure is one
sentence (:class:`~charlie.errors.CharlieError`). Nothing here knows about stages.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from charlie.errors import CharlieError

log = logging.getLogger("charlie.sources")
S3_SCHEME = "s3://"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """What was read: ``kind`` (local, s3 or dvc), ``uri`` and ``version``.

    ``version`` holds ``tree_sha256``, a sha256 over the sorted relative paths and bytes of the
    files as read (so the same files give the same digest whatever their kind; left out, when
    asked, for model weights), and:

      s3   ``sha256`` over the sorted (relative key, ETag, VersionId) of the listing,
           ``objects`` (their count) and ``versioned`` (whether the bucket keeps versions)
      dvc  ``repo``, ``path``, ``rev`` (as asked; empty: the default branch), ``commit`` (the
           git commit it resolved to) and ``md5`` (DVC's hash of the path; None if unknown)
    """

    kind: str
    uri: str
    version: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "uri": self.uri, "version": dict(self.version)}

    def describe(self) -> str:
        """One line for a log: ``s3 s3://b/p/ (sha256 1a2b3c4d5e6f, 6 objects)``."""
        v = self.version
        if self.kind == "s3":
            detail = f"sha256 {v['sha256'][:12]}, {v['objects']} objects"
            detail += ", versioned" if v.get("versioned") else ""
        elif self.kind == "dvc":
            rev = v["rev"] or "default branch"
            md5 = f", md5 {v['md5']}" if v.get("md5") else ""
            detail = f"path {v['path']} at {rev} = commit {v['commit'][:12]}{md5}"
        else:
            detail = f"sha256 {v['tree_sha256'][:12]}"
        return f"{self.kind} {self.uri} ({detail})"


def is_s3(location: str | os.PathLike[str]) -> bool:
    """Whether ``location`` is an ``s3://`` URI."""
    return str(location).startswith(S3_SCHEME)


def tree_sha256(directory: Path) -> tuple[str, int]:
    """sha256 over every file under ``directory``: sorted relative paths, sizes and bytes."""
    digest = hashlib.sha256()
    files = sorted(
        (p.relative_to(directory).as_posix(), p) for p in directory.rglob("*") if p.is_file()
    )
    for rel, path in files:
        digest.update(f"{rel}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return digest.hexdigest(), len(files)


def local_source(directory: Path | str) -> Source:
    """A local directory as a source (read in place); one sentence if it is not a directory."""
    directory = Path(directory)
    if not directory.is_dir():
        raise CharlieError(f"input directory {directory} does not exist.")
    digest, _ = tree_sha256(directory)
    return Source("local", str(directory), {"tree_sha256": digest})


@contextlib.contextmanager
def open_source(
    location: str,
    *,
    dvc_repo: str = "",
    dvc_rev: str = "",
    env: Mapping[str, str] | None = None,
) -> Iterator[tuple[Path, Source]]:
    """The source as a local directory, and what it was; remote ones live only in the block.

    Args:
        location: A local directory, an ``s3://bucket/prefix/``, or (with ``dvc_repo``) the
            path inside that repository.
        dvc_repo: A git repository URL or path; empty: no DVC.
        dvc_rev: The git revision (branch, tag or commit) of ``dvc_repo``; empty: its default
            branch.
        env: Where the ``AWS_*`` settings are read (default ``os.environ``).

    Yields:
        ``(directory, source)``: a local source's own directory, or a temporary one holding
        the download, removed when the block ends.
    """
    if not dvc_repo and not is_s3(location):
        yield Path(location), local_source(location)
        return
    tmp = Path(tempfile.mkdtemp(prefix="charlie-source-"))
    try:
        dest = tmp / "data"
        if dvc_repo:
            source = dvc_get(dvc_repo, str(location), dest, rev=dvc_rev, env=env)
        else:
            source = s3_download(str(location), dest, env=env)
        yield dest, source
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def cached_source(
    location: str, cache_root: Path | str, *, env: Mapping[str, str] | None = None,
    tree: bool = True,
) -> tuple[Path, Source]:  # fmt: skip
    """A local directory or an ``s3://`` prefix, the latter kept under ``cache_root`` by version.

    An S3 prefix is listed (cheap) on every call; its files are downloaded only when no copy of
    that listing's version is in ``<cache_root>/s3/<sha256>/`` yet, and written there
    atomically, so a later run with unchanged objects downloads nothing. Old versions stay
    until removed. ``tree=False`` leaves ``tree_sha256`` out of an S3 source's version (for
    model weights: hashing hundreds of GB again on every run would cost more than the ETags
    tell).
    """
    if not is_s3(location):
        return Path(location), local_source(location)
    listing = s3_list(location, env=env)
    final = Path(cache_root) / "s3" / listing.sha256
    if final.is_dir():
        log.info("%s: version %s is already in %s", location, listing.sha256[:12], final)
    else:
        log.info("%s: downloading %d objects into %s", location, len(listing.objects), final)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{listing.sha256[:12]}.", dir=final.parent))
        try:
            _s3_fetch(listing, tmp / "data", env=env)
            try:
                os.replace(tmp / "data", final)
            except OSError:
                if not final.is_dir():  # another run may have finished first: keep its copy
                    raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return final, listing.source(final, tree)


# ---------------------------------------------------------------------------------- S3


@dataclass
class _Listing:
    uri: str
    bucket: str
    prefix: str
    versioned: bool
    objects: list[dict[str, str]]  # key, rel, etag, version_id

    @property
    def sha256(self) -> str:
        digest = hashlib.sha256()
        for obj in sorted(self.objects, key=lambda o: o["rel"]):
            digest.update(f"{obj['rel']}\0{obj['etag']}\0{obj['version_id']}\n".encode())
        return digest.hexdigest()

    def source(self, directory: Path, tree: bool = True) -> Source:
        version = {"sha256": self.sha256, "objects": len(self.objects),
                   "versioned": self.versioned}  # fmt: skip
        if tree:  # the bytes as read; off for model weights, whose ETags name them well enough
            version["tree_sha256"] = tree_sha256(directory)[0]
        return Source("s3", self.uri, version)


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/prefix`` → ``(bucket, "prefix/")``; a prefix always ends with a slash."""
    if not is_s3(uri):
        raise CharlieError(f"{uri} is not an s3:// URI.")
    bucket, _, prefix = uri[len(S3_SCHEME) :].partition("/")
    if not bucket:
        raise CharlieError(f"{uri} names no bucket; write s3://bucket/prefix/.")
    prefix = prefix.lstrip("/")
    if prefix and not prefix.endswith("/"):
        prefix += "/"
    return bucket, prefix


def s3_client(env: Mapping[str, str] | None = None) -> Any:
    """A boto3 S3 client for the endpoint and credentials in ``env`` (default ``os.environ``).

    With a custom endpoint (MinIO), requests are path-style: ``http://minio:9000/bucket/key``.
    Without explicit credentials boto3's usual chain applies (a profile, a pod's role, ...).
    """
    import boto3
    from botocore.config import Config

    env = os.environ if env is None else env
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or None
    session = boto3.session.Session(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=env.get("AWS_SECRET_ACCESS_KEY") or None,
        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        region_name=env.get("AWS_REGION") or env.get("AWS_DEFAULT_REGION") or "us-east-1",
    )
    config = Config(s3={"addressing_style": "path"} if endpoint else {},
                    retries={"max_attempts": 3, "mode": "standard"})  # fmt: skip
    return session.client("s3", endpoint_url=endpoint, config=config)


def s3_list(uri: str, *, env: Mapping[str, str] | None = None) -> _Listing:
    """Every object under the prefix (latest versions when the bucket keeps versions)."""
    from botocore.exceptions import BotoCoreError, ClientError

    bucket, prefix = split_s3(uri)
    client = s3_client(env)
    shown = f"s3://{bucket}/{prefix}"
    try:
        versioned = _versioned(client, bucket)
        objects = _list_versions(client, bucket, prefix) if versioned else []
        if not versioned:
            pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
            for page in pages:
                for obj in page.get("Contents", []):
                    objects.append({"key": obj["Key"], "etag": obj["ETag"].strip('"'),
                                    "version_id": ""})  # fmt: skip
    except (ClientError, BotoCoreError) as exc:
        raise CharlieError(_s3_problem(exc, bucket, shown, env)) from None
    kept = []
    for obj in objects:
        rel = obj["key"][len(prefix) :]
        if not rel or rel.endswith("/"):
            continue  # a "folder" marker, not a file
        _check_relative(rel, obj["key"], shown)
        kept.append({**obj, "rel": rel})
    if not kept:
        raise CharlieError(f"no objects under {shown}; upload the files there, or fix the URI.")
    return _Listing(shown, bucket, prefix, versioned, kept)


def s3_download(
    uri: str, dest: Path, *, env: Mapping[str, str] | None = None, tree: bool = True
) -> Source:
    """Download every object under the prefix into ``dest`` (relative paths kept)."""
    listing = s3_list(uri, env=env)
    _s3_fetch(listing, dest, env=env)
    return listing.source(dest, tree)


def _versioned(client: Any, bucket: str) -> bool:
    from botocore.exceptions import ClientError

    try:
        return client.get_bucket_versioning(Bucket=bucket).get("Status") == "Enabled"
    except ClientError as exc:
        code = exc.response.get("Error", {}).get("Code", "")
        if code in ("AccessDenied", "NotImplemented", "MethodNotAllowed"):
            return False  # a read-only key may not ask; the listing still says what it is
        raise


def _list_versions(client: Any, bucket: str, prefix: str) -> list[dict[str, str]]:
    objects = []
    for page in client.get_paginator("list_object_versions").paginate(Bucket=bucket, Prefix=prefix):
        for obj in page.get("Versions", []):
            if obj.get("IsLatest"):
                objects.append({"key": obj["Key"], "etag": obj["ETag"].strip('"'),
                                "version_id": obj.get("VersionId") or ""})  # fmt: skip
    return objects  # a key whose latest version is a delete marker is listed under no Versions


def _check_relative(rel: str, key: str, shown: str) -> None:
    parts = rel.split("/")
    if "\\" in rel or any(p in ("..", ".", "") for p in parts):  # "" also: a leading "/"
        raise CharlieError(
            f"object {key} under {shown} would be written outside the download directory; "
            "rename it (no '..', '.', empty or absolute parts)."
        )


def _s3_fetch(listing: _Listing, dest: Path, *, env: Mapping[str, str] | None) -> None:
    from botocore.exceptions import BotoCoreError, ClientError

    client = s3_client(env)
    dest.mkdir(parents=True, exist_ok=True)
    root = dest.resolve()
    for obj in listing.objects:
        target = (dest / obj["rel"]).resolve()
        if not target.is_relative_to(root):
            _check_relative("..", obj["key"], listing.uri)
        target.parent.mkdir(parents=True, exist_ok=True)
        extra = {"VersionId": obj["version_id"]} if obj["version_id"] else {"IfMatch": obj["etag"]}
        try:
            body = client.get_object(Bucket=listing.bucket, Key=obj["key"], **extra)["Body"]
            with body, target.open("wb") as handle:
                shutil.copyfileobj(body, handle, _CHUNK)
        except (ClientError, BotoCoreError) as exc:
            code = getattr(exc, "response", {}).get("Error", {}).get("Code", "")
            if code in ("PreconditionFailed", "412", "NoSuchKey"):
                raise CharlieError(
                    f"s3://{listing.bucket}/{obj['key']} changed while it was downloaded; "
                    "run again once the upload is finished."
                ) from None
            raise CharlieError(_s3_problem(exc, listing.bucket, listing.uri, env)) from None


def _s3_problem(exc: Exception, bucket: str, shown: str, env: Mapping[str, str] | None) -> str:
    """One sentence for a boto3 failure (never its text with a signature or a key)."""
    from botocore.exceptions import ClientError, EndpointConnectionError, NoCredentialsError

    env = os.environ if env is None else env
    endpoint = env.get("AWS_ENDPOINT_URL_S3") or env.get("AWS_ENDPOINT_URL") or "AWS S3"
    if isinstance(exc, NoCredentialsError):
        return (f"no S3 credentials for {shown}; set AWS_ACCESS_KEY_ID and "
                "AWS_SECRET_ACCESS_KEY (and AWS_ENDPOINT_URL for MinIO).")  # fmt: skip
    if isinstance(exc, EndpointConnectionError):
        return f"cannot reach the S3 endpoint {endpoint} for {shown}; check AWS_ENDPOINT_URL."
    if isinstance(exc, ClientError):
        error = exc.response.get("Error", {})
        code = str(error.get("Code", ""))
        if code == "NoSuchBucket":
            return f"bucket {bucket} does not exist at {endpoint} (reading {shown})."
        if code in ("InvalidAccessKeyId", "SignatureDoesNotMatch", "InvalidToken",
                    "ExpiredToken", "AccessDenied", "403", "401"):  # fmt: skip
            return (f"{endpoint} refused the credentials for {shown} ({code}); check "
                    "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY.")  # fmt: skip
        return f"S3 error {code or 'unknown'} reading {shown} at {endpoint}."
    return f"S3 failure reading {shown} at {endpoint} ({type(exc).__name__})."


# --------------------------------------------------------------------------------- DVC


def dvc_get(
    repo: str,
    path: str,
    dest: Path,
    *,
    rev: str = "",
    env: Mapping[str, str] | None = None,
) -> Source:
    """``dvc get <repo> <path> --rev <rev> -o <dest>``, and the commit and md5 it read.

    Args:
        repo: A git repository URL, or a local path to one.
        path: A DVC-tracked file or directory in it (or a file git tracks).
        dest: Where to write it; must not exist yet.
        rev: A branch, tag or commit; empty: the repository's default branch.
        env: The ``AWS_*`` settings for the DVC remote (default ``os.environ``); they are
            exported to this process's environment while DVC runs, as DVC reads them there.
    """
    try:
        from dvc.exceptions import DvcException
        from dvc.fs import download
        from dvc.repo import Repo
    except ImportError:
        raise CharlieError(
            "a DVC source needs DVC; install charlie's `dvc` extra (pip install '.[dvc]')."
        ) from None

    at = f" at {rev}" if rev else ""
    where = f"{path} from {repo}{at}"
    with _environment(env):
        try:
            with Repo.open(url=repo, rev=rev or None, subrepos=True, uninitialized=True) as erepo:
                commit = _commit(erepo, rev)
                fs = erepo.dvcfs
                fs_path = fs.from_os_path(path)
                if not fs.exists(fs_path):
                    raise CharlieError(f"{path} is not in {repo}{at or ' (default branch)'}.")
                md5 = _dvc_md5(fs, fs_path)
                download(fs, fs_path, os.path.abspath(dest))
        except CharlieError:
            raise
        except DvcException as exc:
            raise CharlieError(f"dvc get {where} failed: {_first_line(exc, rev)}") from None
        except Exception as exc:  # dvc wraps little: git, s3fs and fsspec errors come through
            raise CharlieError(
                f"dvc get {where} failed: {type(exc).__name__}: {_first_line(exc, rev)}"
            ) from None
    if not Path(dest).is_dir():  # a single file: keep it in a directory of its own
        single = Path(dest)
        tmp = single.with_name(single.name + ".file")
        single.rename(tmp)
        single.mkdir()
        tmp.rename(single / PurePosixPath(path).name)
    tree, _ = tree_sha256(Path(dest))
    version = {"repo": repo, "path": path, "rev": rev, "commit": commit, "md5": md5,
               "tree_sha256": tree}  # fmt: skip
    return Source("dvc", repo, version)


def _commit(erepo: Any, rev: str) -> str:
    """The commit the repository was read at (its ``scm`` alone says only the clone's HEAD)."""
    commit = str(erepo.get_rev())
    if not re.fullmatch(r"[0-9a-f]{40}", commit):
        commit = str(erepo.scm.resolve_rev(rev or commit))
    return commit


def _dvc_md5(fs: Any, fs_path: str) -> str | None:
    try:
        info = fs.info(fs_path)
    except Exception:  # the md5 is a bonus; the commit already pins the data
        return None
    dvc_info = info.get("dvc_info") or {}
    md5 = dvc_info.get("md5") or info.get("md5")
    return str(md5) if md5 else None


def _first_line(exc: BaseException, rev: str) -> str:
    text = str(exc).strip() or type(exc).__name__
    line = text.splitlines()[0].strip().rstrip(".")
    if rev and "unknown" in line.lower() and rev in line:
        return f"{line} (no branch, tag or commit {rev!r} in the repository)."
    return line + "."


@contextlib.contextmanager
def _environment(env: Mapping[str, str] | None) -> Iterator[None]:
    """Export ``env``'s AWS_* settings while DVC runs (it reads os.environ), then restore."""
    if env is None or env is os.environ:
        yield
        return
    names = [n for n in env if n.startswith("AWS_")]
    saved = {n: os.environ.get(n) for n in names}
    os.environ.update({n: env[n] for n in names})
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
