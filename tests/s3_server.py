"""moto's S3 server on 127.0.0.1: the S3-compatible store of the DVC-remote and submit tests."""

import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

# Dummy credentials: moto accepts any. They live only in the environment of this process and
# of the `dvc` subprocesses, never in a config file (the test checks .dvc/config).
ACCESS_KEY = "AKIATESTDUMMYKEY0000"
SECRET_KEY = "dummy-secret-key-never-written-to-config"


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


@pytest.fixture
def s3_endpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto's S3 server on a free local port, stopped by its PID whatever the test does."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3"):
        monkeypatch.delenv(name, raising=False)
    # Nothing from the user's ~/.aws may leak in.
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "aws-config-absent"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "aws-credentials-absent"))

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    log = (tmp_path / "moto_server.log").open("wb")
    proc = subprocess.Popen(
        [str(BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (
                f"moto_server exited: {(tmp_path / 'moto_server.log').read_text()}"
            )
            try:
                with urllib.request.urlopen(endpoint, timeout=1):
                    break
            except urllib.error.HTTPError:
                break  # it answered
            except OSError:
                assert time.monotonic() < deadline, "moto_server did not answer within 30 s"
                time.sleep(0.1)
        yield endpoint
    finally:
        stop(proc)
        log.close()
    assert proc.returncode is not None


def s3_client(endpoint: str):
    import boto3

    return boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1")
