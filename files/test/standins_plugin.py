"""pytest plugin: the lab's stand-in server (files/lab/standins.py) on a free local port.

A location's tests/conftest.py puts files/test on sys.path and names this plugin.
The server exits by itself after `--lifetime` even if the test run is killed.
"""

import json
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

FILES = Path(__file__).resolve().parents[1]
API_KEY = "test-key"


class Standins:
    def __init__(self, url: str):
        self.url = url

    def get(self, path: str):
        with urllib.request.urlopen(self.url + path, timeout=10) as response:
            return json.load(response)

    def clear_alerts(self) -> None:
        urllib.request.urlopen(urllib.request.Request(self.url + "/alerts/received", method="DELETE"), timeout=10)


@pytest.fixture(scope="session")
def standins(tmp_path_factory):
    port_file = tmp_path_factory.mktemp("standins") / "port"
    process = subprocess.Popen(
        [sys.executable, str(FILES / "lab" / "standins.py"), "--listen", "127.0.0.1:0", "--port-file", str(port_file),
         "--data-dir", str(FILES / "taxi"), "--api-key", API_KEY, "--lifetime", "900"],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while not port_file.exists() or not port_file.read_text():
        assert process.poll() is None and time.monotonic() < deadline, "the stand-in server did not start"
        time.sleep(0.05)
    yield Standins(f"http://127.0.0.1:{port_file.read_text()}")
    process.terminate()
    process.wait(timeout=10)
