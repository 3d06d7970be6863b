import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from http_task.definitions import http_job


class Api(BaseHTTPRequestHandler):
    """Answers /ok with stats, /broken with 503, /slow after 3 s; counts the calls."""

    calls: list[str] = []

    def do_GET(self):
        Api.calls.append(self.path)
        if self.path == "/slow":
            time.sleep(3)
        status, body = {"/ok": (200, {"data": {"last_day": 1234}}), "/broken": (503, {"error": "down"}),
                        "/shape": (200, {"unexpected": True})}.get(self.path, (200, {"data": {"last_day": 1}}))
        payload = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def api():
    server = ThreadingHTTPServer(("127.0.0.1", 0), Api)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def run(url, timeout=5.0):
    config = {"ops": {"fetch_download_stats": {"config": {"url": url, "timeout_seconds": timeout}}}}
    return http_job.execute_in_process(run_config=config, raise_on_error=False)


def failure_message(result):
    return str([e for e in result.all_events if e.is_step_failure][0].event_specific_data.error)


def test_returns_count_and_timestamp(api):
    result = run(f"{api}/ok")
    assert result.success
    out = result.output_for_node("fetch_download_stats")
    assert out["count"] == 1234 and out["url"] == f"{api}/ok" and out["timestamp"].endswith("+00:00")


def test_http_error_names_url_and_status_after_retries(api):
    Api.calls.clear()
    result = run(f"{api}/broken")
    assert not result.success
    assert f"GET {api}/broken answered HTTP 503" in failure_message(result)
    assert Api.calls.count("/broken") == 3  # the first try and two retries


def test_timeout_names_url(api):
    result = run(f"{api}/slow", timeout=0.5)
    assert not result.success
    assert f"GET {api}/slow timed out after 0.5s" in failure_message(result)


def test_unexpected_json_is_explained(api):
    result = run(f"{api}/shape")
    assert not result.success
    assert "without data.last_day" in failure_message(result)
