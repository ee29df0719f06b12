"""Shared fixtures: the real data root, a local S3/SageMaker (moto) server on 127.0.0.1, CPU-friendly torch."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from geossl.settings import data_root

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The real data (../shared/data or $GEOSSL_DATA). Tests on real data fail loudly if it is absent."""
    root = data_root()
    assert (root / "eurosat-rgb").is_dir(), f"real data not found at {root}; set GEOSSL_DATA"
    return root


@pytest.fixture(scope="session")
def scenes_dir(shared_data: Path) -> Path:
    return shared_data / "scenes"


@pytest.fixture()
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Fake credentials and no telemetry, so nothing can reach a real AWS account."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SESSION_TOKEN", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    monkeypatch.setenv("SAGEMAKER_VALIDATE_ROLE", "false")
    cfg = tmp_path / "sagemaker-config.yaml"
    cfg.write_text("SchemaVersion: '1.0'\nSageMaker:\n  PythonSDK:\n    Modules:\n      TelemetryOptOut: true\n")
    monkeypatch.setenv("SAGEMAKER_USER_CONFIG_OVERRIDE", str(cfg))


@pytest.fixture()
def moto_server(aws_env: None, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """A moto server bound to 127.0.0.1 on a free port; yields its endpoint URL (http://127.0.0.1:PORT).

    Also points boto3 (AWS_ENDPOINT_URL) and GDAL (AWS_S3_ENDPOINT, no scheme) at it. moto keeps its buckets
    in the process, not in the server, so each test starts from an empty account (moto's reset API): two tests
    that use the same bucket name must not see each other's objects, whatever order they run in.
    """
    import urllib.request

    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST"), timeout=30).close()
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    monkeypatch.setenv("AWS_S3_ENDPOINT", f"{host}:{port}")
    monkeypatch.setenv("AWS_HTTPS", "NO")
    monkeypatch.setenv("AWS_VIRTUAL_HOSTING", "FALSE")
    try:
        yield endpoint
    finally:
        server.stop()
