import json
import socket

import pytest
from standins_plugin import API_KEY

from chat.definitions import ArtifactStore, LlmResource, chat_job, multi_turn_job, rag_job


def resources(standins, tmp_path, **llm):
    settings = {"base_url": standins.url + "/v1", "api_key": API_KEY, "model": "lab-standin", "max_retries": 0,
                **llm}
    return {"llm": LlmResource(**settings), "artifacts": ArtifactStore(root=str(tmp_path))}


def failure(result):
    return str([e for e in result.all_events if e.is_step_failure][0].event_specific_data.error)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("embedding_model", ["", "lab-embeddings"])
def test_rag_answers_from_the_documents_and_keeps_every_stage(standins, tmp_path, embedding_model):
    config = {"ops": {"evaluate": {"config": {"expected_document": "warehouse.md"}}}}
    result = rag_job.execute_in_process(run_config=config,
                                        resources=resources(standins, tmp_path, embedding_model=embedding_model))
    assert result.success
    stages = sorted(p.name for p in (tmp_path / result.run_id).iterdir())
    assert stages == ["01_documents.json", "02_chunks.json", "03_index.json", "04_retrieval.json",
                      "05_answer.json", "06_evaluation.json"]
    answer = json.loads((tmp_path / result.run_id / "05_answer.json").read_text())
    assert "WAREHOUSE_URL" in answer["answer"] and "warehouse.md" in answer["sources"]
    index = json.loads((tmp_path / result.run_id / "03_index.json").read_text())
    assert index["kind"] == ("embeddings" if embedding_model else "bm25")
    scores = result.output_for_node("evaluate")
    assert scores["expected_document_retrieved"] is True and scores["grounded_fraction"] == 1.0


def test_chat_without_retrieval(standins, tmp_path):
    config = {"ops": {"chat_answer": {"config": {"question": "What is Dagster?"}}}}
    result = chat_job.execute_in_process(run_config=config, resources=resources(standins, tmp_path))
    assert result.success
    assert result.output_for_node("chat_answer") == "Stand-in answer to 'What is Dagster?' (user turn 1)."
    assert (tmp_path / result.run_id / "answer.json").exists()


def test_multi_turn_sends_the_history(standins, tmp_path):
    result = multi_turn_job.execute_in_process(resources=resources(standins, tmp_path))
    assert result.success
    transcript = result.output_for_node("conversation")
    assert [m["role"] for m in transcript] == ["system"] + ["user", "assistant"] * 3
    assert transcript[-1]["content"].endswith("(user turn 3).")
    last_request = standins.get("/v1/_requests")[-1]
    assert len(last_request["messages"]) == 6  # system + 3 user + 2 earlier replies


def test_missing_key_fails_clearly(standins, tmp_path):
    result = chat_job.execute_in_process(raise_on_error=False, resources=resources(standins, tmp_path, api_key=" "))
    assert not result.success
    assert "OPENAI_API_KEY is empty: set it in the environment of this code location" in failure(result)


def test_wrong_key_fails_clearly(standins, tmp_path):
    result = chat_job.execute_in_process(raise_on_error=False, resources=resources(standins, tmp_path, api_key="nope"))
    assert not result.success
    assert f"{standins.url}/v1 refused the API key (chat with model lab-standin, HTTP 401)" in failure(result)


def test_unreachable_endpoint_fails_clearly(tmp_path):
    url = f"http://127.0.0.1:{free_port()}/v1"
    llm = LlmResource(base_url=url, api_key="k", max_retries=0, timeout_seconds=5)
    result = chat_job.execute_in_process(raise_on_error=False,
                                         resources={"llm": llm, "artifacts": ArtifactStore(root=str(tmp_path))})
    assert not result.success
    assert f"cannot reach the OpenAI-compatible endpoint {url} (chat with model gpt-4o-mini)" in failure(result)
