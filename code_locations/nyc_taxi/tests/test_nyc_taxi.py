import csv
import gzip
import os
from contextlib import closing
from pathlib import Path

import dagster as dg
import pandas as pd
import psycopg2
import pytest

from nyc_taxi.definitions import (SCHEMAS, TaxiSource, Warehouse, defs, green_trips, month_checks, row_ids,
                                  yellow_trips)

WAREHOUSE_URL = os.environ.get("DAGSTER_TEST_WAREHOUSE_URL")
SAMPLE = Path(__file__).resolve().parents[3] / "files" / "taxi"


@pytest.fixture
def warehouse():
    assert WAREHOUSE_URL, "run under files/test/warehouse-db.sh (make test does) for a real PostgreSQL"
    return Warehouse(url=WAREHOUSE_URL)


def query(sql, *args):
    with closing(psycopg2.connect(WAREHOUSE_URL)) as conn, conn.cursor() as cur:
        cur.execute(sql, args)
        return cur.fetchone()


def sample_ids(colour):
    """Row ids of the sample computed independently of the loader, from the raw CSV."""
    schema = SCHEMAS[colour]
    with gzip.open(SAMPLE / colour / f"{colour}_tripdata_2019-01.csv.gz", "rt") as source:
        rows = list(csv.DictReader(source))
    frame = pd.DataFrame(rows)[[c.source for c in schema.columns]].set_axis([c.name for c in schema.columns], axis=1)
    frame = frame.replace("", None)
    return rows, set(row_ids(frame, schema.identity))


def materialize(asset, source, warehouse, month="2019-01-01"):
    return dg.materialize([asset], partition_key=month, raise_on_error=False,
                          resources={"taxi_source": source, "warehouse": warehouse})


def metadata(result, asset):
    return {k: v.value for k, v in result.asset_materializations_for_node(asset.op.name)[0].metadata.items()}


def test_row_ids_are_deterministic_and_tell_trips_apart():
    frame = pd.DataFrame({"a": ["1", "1", "2"], "b": ["x", "x", None]})
    ids = row_ids(frame, ("a", "b"))
    assert ids[0] == ids[1] != ids[2] and ids == row_ids(frame.copy(), ("a", "b"))
    assert all(len(i) == 32 for i in ids)


def test_yellow_month_from_the_sample_and_a_rerun_adds_nothing(standins, warehouse):
    rows, ids = sample_ids("yellow")
    source = TaxiSource(url_template=standins.url + "/nyc-tlc/{colour}/{colour}_tripdata_{month}.csv.gz",
                        chunk_rows=1_000)
    first = materialize(yellow_trips, source, warehouse)
    assert first.success
    assert metadata(first, yellow_trips)["rows_read"] == len(rows) == 5_000
    assert query("SELECT count(*) FROM yellow_trips WHERE source_month = '2019-01-01'")[0] == len(ids)
    assert all(check.passed for check in first.get_asset_check_evaluations())
    assert {c.check_name for c in first.get_asset_check_evaluations()} == {"no_null_keys", "row_count_positive",
                                                                          "ids_unique"}
    second = materialize(yellow_trips, source, warehouse)
    assert second.success
    assert metadata(second, yellow_trips)["rows_inserted"] == 0
    assert metadata(second, yellow_trips)["rows_already_loaded"] == len(ids)
    assert query("SELECT count(*) FROM yellow_trips WHERE source_month = '2019-01-01'")[0] == len(ids)
    # Types land as the schema says: sums in numeric, times as timestamps.
    total, earliest = query("SELECT sum(total_amount), min(pickup_datetime) FROM yellow_trips")
    assert float(total) > 0 and earliest.year == 2019


def test_green_month_from_a_local_path(warehouse):
    rows, ids = sample_ids("green")
    source = TaxiSource(url_template=str(SAMPLE) + "/{colour}/{colour}_tripdata_{month}.csv.gz")
    result = materialize(green_trips, source, warehouse)
    assert result.success
    assert query("SELECT count(*), count(ehail_fee), min(trip_type) FROM green_trips") == (len(ids), 0, 1)


def test_rows_ending_in_a_comma_keep_their_columns(tmp_path, warehouse):
    """The course's mirror ends every data row with a comma; columns must not shift."""
    with closing(psycopg2.connect(WAREHOUSE_URL)) as conn, conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS green_trips")  # the same trips, loaded by another test
        conn.commit()
    rows, ids = sample_ids("green")
    header = list(rows[0])
    lines = [",".join(header)] + [",".join(row[c] for c in header) + "," for row in rows]
    month = tmp_path / "green" / "green_tripdata_2019-02.csv.gz"
    month.parent.mkdir()
    month.write_bytes(gzip.compress(("\n".join(lines) + "\n").encode()))
    source = TaxiSource(url_template=str(tmp_path) + "/{colour}/{colour}_tripdata_{month}.csv.gz")
    assert materialize(green_trips, source, warehouse, month="2019-02-01").success
    loaded = query("SELECT min(vendor_id), min(pickup_datetime)::text, count(*) FROM green_trips "
                   "WHERE source_month = '2019-02-01'")
    assert loaded == (int(min(r["VendorID"] for r in rows)), min(r["lpep_pickup_datetime"] for r in rows), len(ids))


def test_a_missing_month_fails_naming_the_url_and_status(standins, warehouse):
    source = TaxiSource(url_template=standins.url + "/nyc-tlc/{colour}/{colour}_tripdata_{month}.csv.gz")
    result = dg.materialize([yellow_trips], partition_key="2020-06-01", raise_on_error=False,
                            resources={"taxi_source": source, "warehouse": warehouse})
    assert not result.success
    failure = str([e for e in result.all_events if e.is_step_failure][0].event_specific_data.error)
    assert f"GET {standins.url}/nyc-tlc/yellow/yellow_tripdata_2020-06.csv.gz answered HTTP 404" in failure


def test_checks_fail_on_null_keys_and_empty_months(warehouse):
    schema = SCHEMAS["yellow"]
    with closing(warehouse.connect()) as conn:
        with conn.cursor() as cur:
            cur.execute("INSERT INTO yellow_trips (row_id, source_month, pickup_datetime) "
                        "VALUES (md5('broken'), '2000-01-01', NULL) ON CONFLICT DO NOTHING")
        conn.commit()
        _, checks = month_checks(schema, "2000-01", conn)
        _, empty = month_checks(schema, "1999-01", conn)
    assert {c.check_name: c.passed for c in checks} == {"no_null_keys": False, "row_count_positive": True,
                                                        "ids_unique": True}
    assert {c.check_name: c.passed for c in empty}["row_count_positive"] is False


def test_definitions_hold_the_schedule_freshness_checks_and_sensor():
    repo = defs.get_repository_def()
    assert repo.get_schedule_def("taxi_monthly").cron_schedule == "0 6 5 * *"
    assert repo.has_sensor_def("taxi_freshness")
    freshness = [key for checks in defs.asset_checks for key in checks.check_keys]
    assert {(key.asset_key.path[0], key.name) for key in freshness} == {("yellow_trips", "freshness_check"),
                                                                       ("green_trips", "freshness_check")}
