"""The course pipelines on the lab host, against the lab's stand-ins: a taxi month from
the sample (twice, the count must not move), a failed run alerting every channel
once, and a RAG answer with its artifacts."""

import csv
import gzip
import json
import time
import urllib.parse
import urllib.request

import pytest

from dagster_platform import PROJECT, RUN_TIMES, record

MONTH = "2019-01-01"
TAXI_SAMPLE = PROJECT / "files" / "taxi"
# The loader's identifying columns (nyc_taxi.definitions._IDENTITY), by source header.
IDENTITY = {
    "yellow": ["VendorID", "tpep_pickup_datetime", "tpep_dropoff_datetime", "PULocationID", "DOLocationID",
               "passenger_count", "trip_distance", "fare_amount", "total_amount"],
    "green": ["VendorID", "lpep_pickup_datetime", "lpep_dropoff_datetime", "PULocationID", "DOLocationID",
              "passenger_count", "trip_distance", "fare_amount", "total_amount"],
}
MATERIALIZATION = """
query($path: [String!]!, $partition: String!) { assetOrError(assetKey: {path: $path}) { ... on Asset {
  assetMaterializations(partitions: [$partition], limit: 1) { runId partition
    metadataEntries { label ... on IntMetadataEntry { intValue } ... on FloatMetadataEntry { floatValue } } } } } }
"""
CHECKS = """
query($path: [String!]!, $check: String!) { assetCheckExecutions(assetKey: {path: $path}, checkName: $check, limit: 1) {
  runId status } }
"""
SENSOR_TICKS = """
{ sensorOrError(sensorSelector: {repositoryLocationName: "platform_alerts", repositoryName: "__repository__",
  sensorName: "run_failure_alerts"}) { ... on Sensor { sensorState { status ticks(limit: 1) { timestamp status } } } } }
"""
CHANNELS = ("slack", "teams", "discord", "telegram")


def sample_file(colour: str):
    return TAXI_SAMPLE / colour / f"{colour}_tripdata_2019-01.csv.gz"


def expected_trips(colour: str) -> int:
    """Distinct trips of the sample month, counted from the raw CSV."""
    with gzip.open(sample_file(colour), "rt") as source:
        return len({tuple(row[c] for c in IDENTITY[colour]) for row in csv.DictReader(source)})


def expected_rows(colour: str) -> int:
    """Data rows of the sample month's file."""
    with gzip.open(sample_file(colour), "rt") as source:
        return sum(1 for _ in csv.DictReader(source))


def month_rows(host) -> dict[str, int]:
    out = host.check_output(
        "runuser -u postgres -- psql -d warehouse -Atc \"SELECT (SELECT count(*) FROM yellow_trips WHERE "
        f"source_month = '{MONTH}') || ' ' || (SELECT count(*) FROM green_trips WHERE source_month = '{MONTH}')\"")
    yellow, green = out.split()
    return {"yellow": int(yellow), "green": int(green)}


def materialization(web, key: str | list[str]) -> dict:
    data = web.gql(MATERIALIZATION, {"path": [key] if isinstance(key, str) else key, "partition": MONTH})
    latest = data["assetOrError"]["assetMaterializations"][0]
    return {"runId": latest["runId"], **{e["label"]: e.get("intValue", e.get("floatValue"))
                                         for e in latest["metadataEntries"]}}


@pytest.fixture(scope="module")
def standins_url(host):
    return f"http://{host.ansible.get_variables()['ansible_host']}:8900"


def test_taxi_month_from_the_sample_and_again_without_duplicates(web, host):
    expected = {"yellow": expected_trips("yellow"), "green": expected_trips("green")}
    runs = []
    for attempt in ("first", "second"):
        run_id = web.launch("nyc_taxi", "taxi_job", tags={"dagster/partition": MONTH})
        assert web.wait_run(run_id) == "SUCCESS", f"{attempt} taxi run {run_id}"
        assert month_rows(host) == expected, attempt
        times = web.gql(RUN_TIMES, {"id": run_id})["runOrError"]
        meta = {colour: materialization(web, f"{colour}_trips") for colour in expected}
        assert all(m["runId"] == run_id for m in meta.values())
        runs.append({"run_seconds": round(times["endTime"] - times["startTime"], 1), **meta})
        for colour in expected:
            for check in ("no_null_keys", "row_count_positive", "ids_unique"):
                execution = web.gql(CHECKS, {"path": [f"{colour}_trips"], "check": check})["assetCheckExecutions"][0]
                assert (execution["runId"], execution["status"]) == (run_id, "SUCCEEDED"), (colour, check)
    first, second = runs
    assert first["yellow"]["rows_read"] == 5000 and first["green"]["rows_read"] == 5
    assert first["yellow"]["rows_inserted"] + second["yellow"]["rows_inserted"] == expected["yellow"]
    assert second["yellow"]["rows_inserted"] == 0 and second["green"]["rows_inserted"] == 0
    record("taxi_sample_runs", runs)


def test_gcp_taxi_uploads_a_month_to_cloud_storage_and_replaces_it_on_a_rerun(web, host):
    """The GCP module's upload part against the stand-ins' fake-gcs-server (BigQuery has no
    stand-in in the lab: its load and query are tested by the location's own suite)."""
    gcs = f"http://{host.ansible.get_variables()['ansible_host']}:8901/storage/v1/b/lab-gcp-taxi-nyc-taxi"
    setup = web.launch("gcp_taxi", "gcp_setup_job", ops=["create_bucket"])
    assert web.wait_run(setup) == "SUCCESS", web.run_messages(setup)
    names = {colour: f"nyc_taxi/{colour}/{colour}_tripdata_2019-01.csv.gz" for colour in ("yellow", "green")}
    generations = []
    for attempt in ("first", "second"):
        run_id = web.launch("gcp_taxi", "gcp_data_pipeline_job", tags={"dagster/partition": MONTH},
                            assets=[["gcp_taxi", f"{colour}_tripdata_file"] for colour in names])
        assert web.wait_run(run_id) == "SUCCESS", (attempt, web.run_messages(run_id))
        with urllib.request.urlopen(f"{gcs}/o?prefix=nyc_taxi/", timeout=30) as response:
            listed = {item["name"]: item for item in json.load(response).get("items", [])}
        assert set(listed) == set(names.values()), (attempt, sorted(listed))
        for colour, name in names.items():
            sample = sample_file(colour).read_bytes()
            with urllib.request.urlopen(f"{gcs}/o/{urllib.parse.quote(name, safe='')}?alt=media", timeout=30) as response:
                assert response.read() == sample, (attempt, name)
            assert materialization(web, ["gcp_taxi", f"{colour}_tripdata_file"])["rows_in_file"] == \
                expected_rows(colour), (attempt, colour)
        generations.append({name: item["generation"] for name, item in listed.items()})
    first, second = generations
    assert all(second[name] != first[name] for name in first), "a re-run replaces each object"
    record("gcp_taxi_upload_generations", generations)


def test_a_failed_run_alerts_each_channel_once(web, standins_url):
    # A run-failure sensor reports failures after its first tick: wait for one.
    deadline = time.monotonic() + 120
    while not web.gql(SENSOR_TICKS)["sensorOrError"]["sensorState"]["ticks"]:
        assert time.monotonic() < deadline, "run_failure_alerts never ticked"
        time.sleep(1)
    run_id = web.launch("platform_alerts", "alert_drill_job")
    assert web.wait_run(run_id) == "FAILURE"
    failed_at = web.gql(RUN_TIMES, {"id": run_id})["runOrError"]["endTime"]

    def messages() -> dict[str, list[dict]]:
        with urllib.request.urlopen(f"{standins_url}/alerts/received", timeout=10) as response:
            received = json.load(response)
        return {c: [m for m in received[c] if run_id in json.dumps(m["payload"])] for c in CHANNELS}

    deadline = time.monotonic() + 120
    while not all(messages().values()):
        assert time.monotonic() < deadline, f"alerts so far: {messages()}"
        time.sleep(0.5)
    arrived = messages()
    latest = max(m["received_at"] for found in arrived.values() for m in found)
    # One more completed tick after the messages: the sensor must not post them again.
    deadline = time.monotonic() + 120
    while web.gql(SENSOR_TICKS)["sensorOrError"]["sensorState"]["ticks"][0]["timestamp"] <= latest:
        assert time.monotonic() < deadline, "no sensor tick after the alerts"
        time.sleep(1)
    assert {c: len(found) for c, found in messages().items()} == dict.fromkeys(CHANNELS, 1)
    text = arrived["slack"][0]["payload"]["text"]
    assert "Dagster run failed: alert_drill_job in platform_alerts" in text
    assert "Step fail_on_purpose failed: alert drill: this run fails on purpose" in text
    assert f"/runs/{run_id}" in text and text.count("https://") == 1
    assert arrived["telegram"][0]["payload"]["chat_id"] == "-1001000"
    record("alert_latency_seconds", {c: round(found[0]["received_at"] - failed_at, 1) for c, found in arrived.items()})


def test_rag_answers_from_its_documents_and_keeps_its_artifacts(web, host):
    config = {"ops": {"evaluate": {"config": {"expected_document": "warehouse.md"}}}}
    run_id = web.launch("chat", "rag_job", run_config=config)
    assert web.wait_run(run_id) == "SUCCESS", f"rag run {run_id}"
    folder = f"/var/lib/dagster/rag_artifacts/{run_id}"
    stages = host.check_output(f"ls {folder}").split()
    assert stages == ["01_documents.json", "02_chunks.json", "03_index.json", "04_retrieval.json",
                      "05_answer.json", "06_evaluation.json"]
    answer = json.loads(host.file(f"{folder}/05_answer.json").content_string)
    assert "WAREHOUSE_URL" in answer["answer"] and "warehouse.md" in answer["sources"]
    evaluation = json.loads(host.file(f"{folder}/06_evaluation.json").content_string)
    assert evaluation["expected_document_retrieved"] is True
    artifact = host.file(f"{folder}/05_answer.json")
    # Written by the location's own user, for the platform's group, to nobody else.
    assert (artifact.user, artifact.group) == ("dagster-chat", "dagster") and artifact.mode & 0o007 == 0
    assert web.wait_run(web.launch("chat", "multi_turn_job")) == "SUCCESS"
