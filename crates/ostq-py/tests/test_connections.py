"""`Client(url)` takes every URL the Rust client takes: TLS with a private CA and a client
certificate (`rediss://`, `ca_file=`, `client_cert=`/`client_key=`) and Redis Cluster
(`redis+cluster://`), each on private redis-servers started here."""

from __future__ import annotations

import pathlib
import random
import socket
import subprocess
import time
from typing import Iterator

import pytest

import ostq
from conftest import free_port, running, wait_until


def openssl(*args: str, cwd: pathlib.Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


@pytest.fixture
def tls_server(tmp_path: pathlib.Path) -> Iterator[tuple[int, pathlib.Path]]:
    """A redis-server that speaks TLS only and verifies client certificates."""
    (tmp_path / "san.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out",
            "ca.crt", "-days", "1", "-subj", "/CN=ostq test CA", cwd=tmp_path)
    for name in ("server", "client"):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out",
                f"{name}.csr", "-subj", f"/CN={name}", cwd=tmp_path)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                "-CAcreateserial", "-out", f"{name}.crt", "-days", "1", "-extfile", "san.ext",
                cwd=tmp_path)
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
         "--tls-cert-file", "server.crt", "--tls-key-file", "server.key",
         "--tls-ca-cert-file", "ca.crt", "--tls-auth-clients", "yes", "--save", "",
         "--appendonly", "no", "--dir", str(tmp_path)],
        cwd=tmp_path, stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.3)
        assert server.poll() is None, "redis-server does not support TLS here"
        yield port, tmp_path
    finally:
        server.terminate()
        server.wait(10)


def test_tls_with_a_private_ca_and_a_client_certificate(tls_server) -> None:
    port, certs = tls_server
    url = f"rediss://127.0.0.1:{port}"
    client = wait_until(lambda: _connect(url, certs), 10, "the TLS server")
    tasks = client.queue("tasks")
    with running(tasks.worker(lambda job: job.text[::-1])):
        assert tasks.push_and_wait("over tls", timeout=10) == b"slt revo"
    with pytest.raises(ostq.Error):  # the server wants a client certificate
        ostq.Client(url, ca_file=str(certs / "ca.crt"))
    with pytest.raises(ostq.ConfigError):
        ostq.Client(url, ca_file=str(certs / "ca.crt"), client_cert=str(certs / "client.crt"))


def _connect(url: str, certs: pathlib.Path):
    try:
        return ostq.Client(url, ca_file=str(certs / "ca.crt"),
                           client_cert=str(certs / "client.crt"),
                           client_key=str(certs / "client.key"))
    except ostq.ConnectionError:
        return None


def free_cluster_port(taken: list[int]) -> int:
    """A port that is free with its cluster bus port (port + 10000): an ephemeral port from the
    kernel can be above 55535, where the bus port does not exist."""
    while True:
        port = random.randrange(20000, 45000)
        if any(abs(port - other) in (0, 10000) for other in taken):
            continue
        try:
            with socket.socket() as s, socket.socket() as bus:
                s.bind(("127.0.0.1", port))
                bus.bind(("127.0.0.1", port + 10000))
            return port
        except OSError:
            continue


@pytest.fixture
def cluster(tmp_path: pathlib.Path) -> Iterator[list[int]]:
    """A three-primary Redis Cluster."""
    ports: list[int] = []
    for _ in range(3):
        ports.append(free_cluster_port(ports))
    servers = []
    for port in ports:
        folder = tmp_path / str(port)
        folder.mkdir()
        servers.append(subprocess.Popen(
            ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled",
             "yes", "--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no",
             "--dir", str(folder)],
            stdout=subprocess.DEVNULL))
    try:
        for port in ports:
            wait_until(lambda: subprocess.run(["redis-cli", "-p", str(port), "ping"],
                                              capture_output=True).returncode == 0, 10)
        subprocess.run(["redis-cli", "--cluster", "create",
                        *(f"127.0.0.1:{p}" for p in ports), "--cluster-replicas", "0",
                        "--cluster-yes"], check=True, capture_output=True, timeout=30)
        wait_until(lambda: all(
            b"cluster_state:ok" in subprocess.run(["redis-cli", "-p", str(p), "cluster", "info"],
                                                  capture_output=True).stdout
            for p in ports), 20, "the cluster to be ok")
        yield ports
    finally:
        for server in servers:
            server.terminate()
        for server in servers:
            server.wait(10)


def test_redis_cluster(cluster: list[int]) -> None:
    url = "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in cluster[:2])
    client = ostq.Client(url)
    queues = [client.queue(name) for name in ("videos", "mail", "reports")]  # several slots
    for queue in queues:
        queue.push_bulk(["a", "b"], track=True)
    results = []
    for queue in queues:
        with running(queue.worker(lambda job: results.append((job.queue, job.text)))):
            wait_until(lambda: queue.counts().completed == 2, 10, f"queue {queue.name}")
    assert sorted(results) == sorted((q.name, t) for q in queues for t in "ab")
    assert sorted(client.queues()) == ["mail", "reports", "videos"]
