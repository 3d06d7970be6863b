#!/usr/bin/env python3
"""Lab-side stand-ins for the outside services the course pipelines talk to.

One stdlib HTTP server, so the lab and the locations' tests work with no internet:

  GET  /pypistats/api/packages/<name>/recent   pypistats' JSON shape (HTTP task)
  GET  /nyc-tlc/<colour>/<file>.csv.gz          files of --data-dir (NYC taxi sample)
  GET  /v1/models, POST /v1/chat/completions, POST /v1/embeddings
                                                an OpenAI-compatible API (chat / RAG)
  POST /alerts/{slack,teams,discord}/<any path>, /alerts/telegram/bot<token>/sendMessage
                                                webhook receivers that record each payload
  GET  /alerts/received, DELETE /alerts/received
                                                what the receivers recorded, by channel

The chat answer is deterministic: with a "Context:" block in the messages it returns
the context sentence sharing the most words with the question (an extractive answer);
without one, it names the question and how many user turns it was sent.
"""

import argparse
import hashlib
import json
import math
import os
import re
import threading
import time
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

WORD = re.compile(r"[a-z0-9]+")
EMBEDDING_DIMENSIONS = 64
CHANNELS = ("slack", "teams", "discord", "telegram")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


def extractive_answer(question: str, context: str) -> str:
    """The context sentence that shares the most words with the question."""
    asked = set(words(question))
    sentences = [s.strip() for s in re.split(r"(?<=[.!?])\s+|\n+", context) if len(words(s)) > 3]
    if not sentences:
        return "The context does not say."
    return max(sentences, key=lambda s: (len(asked & set(words(s))), -len(s)))


def embedding(text: str) -> list[float]:
    """Hashed bag of words, L2-normalised: similar texts get similar vectors."""
    vector = [0.0] * EMBEDDING_DIMENSIONS
    for word in words(text):
        vector[int(hashlib.sha256(word.encode()).hexdigest(), 16) % EMBEDDING_DIMENSIONS] += 1.0
    norm = math.sqrt(sum(v * v for v in vector)) or 1.0
    return [v / norm for v in vector]


class State:
    def __init__(self, data_dir: Path | None, api_key: str):
        self.data_dir = data_dir
        self.api_key = api_key
        self.lock = threading.Lock()
        self.received: dict[str, list[dict]] = {channel: [] for channel in CHANNELS}
        self.chat_requests: list[dict] = []


class Handler(BaseHTTPRequestHandler):
    server_version = "lab-standins/1"
    state: State

    def log_message(self, fmt, *args):  # one line per request on stderr (the journal)
        print(f"{self.address_string()} {fmt % args}", flush=True)

    def reply(self, status: int, body=None, content_type="application/json"):
        payload = b"" if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        self.send_response(status)
        if payload:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    def body(self) -> dict:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return json.loads(raw or b"{}")
        except json.JSONDecodeError:
            return {"_raw": raw.decode(errors="replace")}

    def authorized(self) -> bool:
        given = self.headers.get("Authorization", "")
        if given.startswith("Bearer ") and given[7:] and (not self.state.api_key or given[7:] == self.state.api_key):
            return True
        self.reply(HTTPStatus.UNAUTHORIZED, {"error": {"message": "Incorrect API key provided",
                                                       "type": "invalid_request_error", "code": "invalid_api_key"}})
        return False

    # GET ----------------------------------------------------------------------------
    def do_GET(self):
        path = self.path.split("?", 1)[0]
        if path == "/healthz":
            return self.reply(HTTPStatus.OK, {"ok": True})
        match = re.fullmatch(r"/pypistats/api/packages/([A-Za-z0-9_.-]+)/recent", path)
        if match:
            # A stable count per package and day, so that runs are comparable.
            seed = int(hashlib.sha256(f"{match[1]}{time.strftime('%Y-%m-%d')}".encode()).hexdigest(), 16)
            return self.reply(HTTPStatus.OK, {"data": {"last_day": 100_000 + seed % 50_000, "last_week": 0,
                                                       "last_month": 0}, "package": match[1],
                                              "type": "recent_downloads"})
        match = re.fullmatch(r"/nyc-tlc/(yellow|green)/((?:yellow|green)_tripdata_\d{4}-\d{2}\.csv\.gz)", path)
        if match:
            return self.send_data_file(Path(match[1]) / match[2])
        if path == "/v1/models":
            if self.authorized():
                self.reply(HTTPStatus.OK, {"object": "list", "data": [
                    {"id": "lab-standin", "object": "model", "created": 0, "owned_by": "lab"}]})
            return None
        if path == "/alerts/received":
            with self.state.lock:
                return self.reply(HTTPStatus.OK, self.state.received)
        if path == "/v1/_requests":
            with self.state.lock:
                return self.reply(HTTPStatus.OK, self.state.chat_requests)
        return self.reply(HTTPStatus.NOT_FOUND, {"error": f"no stand-in at {path}"})

    def send_data_file(self, relative: Path):
        source = self.state.data_dir / relative if self.state.data_dir else None
        if source is None or not source.is_file():
            return self.reply(HTTPStatus.NOT_FOUND, {"error": f"no sample file {relative}"})
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", "application/gzip")
        self.send_header("Content-Length", str(source.stat().st_size))
        self.end_headers()
        with source.open("rb") as data:
            while chunk := data.read(1 << 16):
                self.wfile.write(chunk)

    def do_DELETE(self):
        if self.path == "/alerts/received":
            with self.state.lock:
                for channel in CHANNELS:
                    self.state.received[channel].clear()
            return self.reply(HTTPStatus.NO_CONTENT)
        self.reply(HTTPStatus.NOT_FOUND, {"error": f"no stand-in at {self.path}"})

    # POST ---------------------------------------------------------------------------
    def do_POST(self):
        path = self.path.split("?", 1)[0]
        if path == "/v1/chat/completions":
            return self.chat_completion()
        if path == "/v1/embeddings":
            return self.embeddings()
        match = re.fullmatch(r"/alerts/(slack|teams|discord)/.+|/alerts/(telegram)/bot[^/]+/sendMessage", path)
        if match:
            return self.receive(match[1] or match[2])
        self.reply(HTTPStatus.NOT_FOUND, {"error": f"no stand-in at {path}"})

    def receive(self, channel: str):
        payload = self.body()
        with self.state.lock:
            self.state.received[channel].append({"received_at": time.time(), "path": self.path,
                                                 "payload": payload})
        if channel == "telegram":
            return self.reply(HTTPStatus.OK, {"ok": True, "result": {"message_id": 1}})
        if channel == "discord":
            return self.reply(HTTPStatus.NO_CONTENT)
        return self.reply(HTTPStatus.OK, b"ok", content_type="text/plain")

    def chat_completion(self):
        if not self.authorized():
            return
        request = self.body()
        messages = request.get("messages") or []
        with self.state.lock:
            self.state.chat_requests.append(request)
        user_turns = [m.get("content", "") for m in messages if m.get("role") == "user"]
        question = user_turns[-1] if user_turns else ""
        everything = "\n".join(str(m.get("content", "")) for m in messages)
        if "Context:" in everything:
            context = everything.split("Context:", 1)[1].split("Question:", 1)[0]
            answer = extractive_answer(question.split("Question:")[-1], context)
        else:
            answer = f"Stand-in answer to {question!r} (user turn {len(user_turns)})."
        prompt_tokens, completion_tokens = len(words(everything)), len(words(answer))
        self.reply(HTTPStatus.OK, {
            "id": f"chatcmpl-{hashlib.sha256(everything.encode()).hexdigest()[:12]}",
            "object": "chat.completion", "created": int(time.time()),
            "model": request.get("model", "lab-standin"),
            "choices": [{"index": 0, "finish_reason": "stop",
                         "message": {"role": "assistant", "content": answer}}],
            "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                      "total_tokens": prompt_tokens + completion_tokens},
        })

    def embeddings(self):
        if not self.authorized():
            return
        request = self.body()
        inputs = request.get("input") or []
        inputs = [inputs] if isinstance(inputs, str) else inputs
        self.reply(HTTPStatus.OK, {
            "object": "list", "model": request.get("model", "lab-standin"),
            "data": [{"object": "embedding", "index": i, "embedding": embedding(text)} for i, text in enumerate(inputs)],
            "usage": {"prompt_tokens": sum(len(words(t)) for t in inputs), "total_tokens": 0},
        })


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--listen", default="127.0.0.1:8900", help="address:port (port 0 picks a free one)")
    parser.add_argument("--data-dir", type=Path, help="folder with yellow/ and green/ sample files")
    parser.add_argument("--api-key", default=os.environ.get("STANDINS_API_KEY", ""),
                        help="the bearer token the OpenAI API accepts (any when empty; default $STANDINS_API_KEY)")
    parser.add_argument("--lifetime", type=float, default=0, help="exit after this many seconds (0: never)")
    parser.add_argument("--port-file", type=Path, help="write the bound port here once listening")
    args = parser.parse_args()
    host, _, port = args.listen.rpartition(":")
    Handler.state = State(args.data_dir, args.api_key)
    server = ThreadingHTTPServer((host, int(port)), Handler)
    server.daemon_threads = True
    if args.lifetime:
        threading.Timer(args.lifetime, server.shutdown).start()
    if args.port_file:
        args.port_file.write_text(str(server.server_address[1]))
    print(f"lab stand-ins listening on {host}:{server.server_address[1]}", flush=True)
    server.serve_forever()
    server.server_close()


if __name__ == "__main__":
    main()
