"""Chat and retrieval-augmented answers over the `openai` client.

Three jobs: a plain chat, a chat with retrieval (ingest -> chunk -> index -> retrieve ->
answer -> evaluate), and a multi-turn session. Every stage writes its artifact as JSON
under <artifacts root>/<run id>/, by default $DAGSTER_HOME/rag_artifacts. Retrieval is
BM25 and works offline; with an embedding model configured it uses the endpoint's
embeddings instead. Any OpenAI-compatible server works (OpenAI, vLLM, Ollama, ...).
"""

import json
import math
import os
import re
import time
from collections import Counter
from importlib import resources as package_files
from pathlib import Path

import dagster as dg
import openai

WORD = re.compile(r"[a-z0-9]+")
DEFAULT_QUESTION = "How does a code location get its warehouse connection?"
SYSTEM_PROMPT = "You answer questions about a Dagster platform. Be brief."


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class LlmResource(dg.ConfigurableResource):
    """An OpenAI-compatible endpoint. The key comes from OPENAI_API_KEY (never shown in the UI)."""

    base_url: str = "https://api.openai.com/v1"
    api_key: str
    model: str = "gpt-4o-mini"
    # Empty: retrieval ranks with BM25, offline. Set: the endpoint's embeddings rank chunks.
    embedding_model: str = ""
    timeout_seconds: float = 60.0
    max_retries: int = 2

    def _client(self) -> openai.OpenAI:
        if not self.api_key.strip():
            raise dg.Failure(description=(
                "OPENAI_API_KEY is empty: set it in the environment of this code location "
                "(its dagster_locations entry's env, from a vault variable)"), allow_retries=False)
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key, timeout=self.timeout_seconds,
                             max_retries=self.max_retries)

    def _call(self, what: str, request):
        try:
            return request(self._client())
        except openai.APIConnectionError as error:
            raise dg.Failure(description=f"cannot reach the OpenAI-compatible endpoint {self.base_url} "
                                         f"({what}): {error.__cause__ or error}") from error
        except openai.AuthenticationError as error:
            raise dg.Failure(description=f"{self.base_url} refused the API key ({what}, HTTP 401): "
                                         "check OPENAI_API_KEY", allow_retries=False) from error
        except openai.APIStatusError as error:
            raise dg.Failure(description=f"{self.base_url} answered HTTP {error.status_code} to {what}: "
                                         f"{error.message}") from error

    def chat(self, messages: list[dict]) -> tuple[str, dict]:
        response = self._call(f"chat with model {self.model}", lambda client: client.chat.completions.create(
            model=self.model, messages=messages))
        usage = response.usage.model_dump() if response.usage else {}
        return response.choices[0].message.content or "", usage

    def embed(self, texts: list[str]) -> list[list[float]]:
        response = self._call(f"embeddings with model {self.embedding_model}",
                              lambda client: client.embeddings.create(model=self.embedding_model, input=texts))
        return [item.embedding for item in sorted(response.data, key=lambda item: item.index)]


class ArtifactStore(dg.ConfigurableResource):
    """Where each stage's output is kept, one folder per run id."""

    root: str

    def write(self, context: dg.OpExecutionContext, stage: str, data) -> str:
        folder = Path(self.root) / context.run_id
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{stage}.json"
        path.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n")
        context.log.info("%s artifact: %s", stage, path)
        return str(path)


class Question(dg.Config):
    question: str = DEFAULT_QUESTION


class Corpus(dg.Config):
    """Markdown documents to answer from; empty means the handbook shipped with the package."""

    path: str = ""
    chunk_words: int = 60
    overlap_words: int = 15


class Retrieval(dg.Config):
    top_k: int = 3


class Evaluation(dg.Config):
    """Optional expectation: the document the answer should come from (e.g. warehouse.md)."""

    expected_document: str = ""


class Conversation(dg.Config):
    turns: list[str] = [
        "Which unit runs a gRPC code location?",
        "And how do I see its log?",
        "Summarise both answers in one sentence.",
    ]


# -- plain chat ---------------------------------------------------------------------------
@dg.op(retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL))
def chat_answer(context: dg.OpExecutionContext, config: Question, llm: LlmResource, artifacts: ArtifactStore) -> str:
    started = time.monotonic()
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": config.question}]
    answer, usage = llm.chat(messages)
    artifacts.write(context, "answer", {"question": config.question, "answer": answer, "model": llm.model,
                                        "usage": usage, "seconds": round(time.monotonic() - started, 3)})
    context.add_output_metadata({"answer": answer, "total_tokens": usage.get("total_tokens", 0)})
    return answer


@dg.job(description="Ask the model a question, without retrieval.")
def chat_job():
    chat_answer()


# -- retrieval-augmented ------------------------------------------------------------------
@dg.op
def ingest(context: dg.OpExecutionContext, config: Corpus, artifacts: ArtifactStore) -> list[dict]:
    folder = Path(config.path) if config.path else Path(str(package_files.files("chat") / "docs"))
    documents = [{"id": path.name, "text": path.read_text()} for path in sorted(folder.glob("*.md"))]
    if not documents:
        raise dg.Failure(description=f"no *.md documents in {folder}")
    artifacts.write(context, "01_documents", documents)
    context.add_output_metadata({"documents": len(documents), "source": str(folder)})
    return documents


@dg.op
def chunk(context: dg.OpExecutionContext, config: Corpus, artifacts: ArtifactStore, documents: list[dict]) -> list[dict]:
    """Overlapping windows of words, each remembering its document."""
    if not 0 <= config.overlap_words < config.chunk_words:
        raise dg.Failure(description="overlap_words must be at least 0 and less than chunk_words")
    chunks = []
    for document in documents:
        tokens = document["text"].split()
        step = config.chunk_words - config.overlap_words
        for start in range(0, max(len(tokens) - config.overlap_words, 1), step):
            chunks.append({"id": f"{document['id']}#{len(chunks)}", "document": document["id"],
                           "text": " ".join(tokens[start:start + config.chunk_words])})
    artifacts.write(context, "02_chunks", chunks)
    context.add_output_metadata({"chunks": len(chunks)})
    return chunks


def bm25_index(chunks: list[dict]) -> dict:
    terms = [Counter(words(c["text"])) for c in chunks]
    frequency = Counter(term for counts in terms for term in counts)
    lengths = [sum(counts.values()) for counts in terms]
    return {"kind": "bm25", "chunks": chunks, "terms": [dict(t) for t in terms], "document_frequency": dict(frequency),
            "lengths": lengths, "average_length": sum(lengths) / max(len(lengths), 1)}


def bm25_scores(index: dict, question: str, k1: float = 1.5, b: float = 0.75) -> list[float]:
    total = len(index["chunks"])
    scores = []
    for counts, length in zip(index["terms"], index["lengths"]):
        score = 0.0
        for term in set(words(question)):
            if term not in counts:
                continue
            df = index["document_frequency"][term]
            idf = math.log(1 + (total - df + 0.5) / (df + 0.5))
            tf = counts[term]
            score += idf * tf * (k1 + 1) / (tf + k1 * (1 - b + b * length / index["average_length"]))
        scores.append(score)
    return scores


def cosine(a: list[float], b: list[float]) -> float:
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return sum(x * y for x, y in zip(a, b)) / norm if norm else 0.0


@dg.op
def index(context: dg.OpExecutionContext, llm: LlmResource, artifacts: ArtifactStore, chunks: list[dict]) -> dict:
    if llm.embedding_model:
        built = {"kind": "embeddings", "model": llm.embedding_model, "chunks": chunks,
                 "vectors": llm.embed([c["text"] for c in chunks])}
    else:
        built = bm25_index(chunks)
    artifacts.write(context, "03_index", built)
    context.add_output_metadata({"kind": built["kind"], "chunks": len(chunks)})
    return built


@dg.op
def ask(config: Question) -> str:
    return config.question


@dg.op
def retrieve(context: dg.OpExecutionContext, config: Retrieval, llm: LlmResource, artifacts: ArtifactStore,
             index: dict, question: str) -> list[dict]:
    if index["kind"] == "embeddings":
        query = llm.embed([question])[0]
        scores = [cosine(query, vector) for vector in index["vectors"]]
    else:
        scores = bm25_scores(index, question)
    ranked = sorted(zip(scores, index["chunks"]), key=lambda pair: -pair[0])[:config.top_k]
    retrieved = [{**chunk, "score": round(score, 4)} for score, chunk in ranked]
    artifacts.write(context, "04_retrieval", {"question": question, "kind": index["kind"], "chunks": retrieved})
    context.add_output_metadata({"top": ", ".join(c["id"] for c in retrieved)})
    return retrieved


@dg.op(retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL))
def answer(context: dg.OpExecutionContext, llm: LlmResource, artifacts: ArtifactStore, question: str,
           retrieved: list[dict]) -> dict:
    context_text = "\n\n".join(c["text"] for c in retrieved)
    messages = [
        {"role": "system", "content": SYSTEM_PROMPT + " Answer only from the context; say so when it does not tell."},
        {"role": "user", "content": f"Context:\n{context_text}\n\nQuestion: {question}"},
    ]
    started = time.monotonic()
    text, usage = llm.chat(messages)
    result = {"question": question, "answer": text, "model": llm.model, "usage": usage,
              "sources": sorted({c["document"] for c in retrieved}), "seconds": round(time.monotonic() - started, 3)}
    artifacts.write(context, "05_answer", result)
    context.add_output_metadata({"answer": text, "total_tokens": usage.get("total_tokens", 0)})
    return result


def evaluation(result: dict, retrieved: list[dict], expected_document: str) -> dict:
    """Cheap, offline measures: how much of the answer the context supports, and
    whether retrieval found the expected document."""
    context_words = set(words(" ".join(c["text"] for c in retrieved)))
    answer_words = [w for w in words(result["answer"]) if len(w) > 3]
    grounded = sum(w in context_words for w in answer_words) / len(answer_words) if answer_words else 0.0
    scores = {"answer_words": len(answer_words), "grounded_fraction": round(grounded, 3),
              "sources": result["sources"]}
    if expected_document:
        scores["expected_document_retrieved"] = expected_document in result["sources"]
    return scores


@dg.op
def evaluate(context: dg.OpExecutionContext, config: Evaluation, artifacts: ArtifactStore, result: dict,
             retrieved: list[dict]) -> dict:
    scores = evaluation(result, retrieved, config.expected_document)
    artifacts.write(context, "06_evaluation", scores)
    context.add_output_metadata({k: v for k, v in scores.items() if k != "sources"})
    return scores


@dg.job(description="Answer a question from documents: ingest, chunk, index, retrieve, answer, evaluate.")
def rag_job():
    question = ask()
    retrieved = retrieve(index(chunk(ingest())), question)
    evaluate(answer(question, retrieved), retrieved)


# -- multi-turn ---------------------------------------------------------------------------
@dg.op(retry_policy=dg.RetryPolicy(max_retries=2, delay=5, backoff=dg.Backoff.EXPONENTIAL))
def conversation(context: dg.OpExecutionContext, config: Conversation, llm: LlmResource,
                 artifacts: ArtifactStore) -> list[dict]:
    """Each turn sends the whole history, so the model sees what was said before."""
    messages = [{"role": "system", "content": SYSTEM_PROMPT}]
    for number, turn in enumerate(config.turns, start=1):
        messages.append({"role": "user", "content": turn})
        reply, _ = llm.chat(messages)
        messages.append({"role": "assistant", "content": reply})
        context.log.info("turn %d: %s -> %s", number, turn, reply)
    artifacts.write(context, "transcript", messages)
    context.add_output_metadata({"turns": len(config.turns)})
    return messages


@dg.job(description="A multi-turn session: every turn carries the conversation so far.")
def multi_turn_job():
    conversation()


def default_resources() -> dict:
    home = os.environ.get("DAGSTER_HOME") or "/tmp"
    return {
        "llm": LlmResource(base_url=os.environ.get("OPENAI_BASE_URL") or "https://api.openai.com/v1",
                           api_key=dg.EnvVar("OPENAI_API_KEY"),
                           model=os.environ.get("OPENAI_MODEL") or "gpt-4o-mini",
                           embedding_model=os.environ.get("OPENAI_EMBEDDING_MODEL", "")),
        "artifacts": ArtifactStore(root=os.environ.get("RAG_ARTIFACTS_DIR") or os.path.join(home, "rag_artifacts")),
    }


defs = dg.Definitions(jobs=[chat_job, rag_job, multi_turn_job], resources=default_resources())
