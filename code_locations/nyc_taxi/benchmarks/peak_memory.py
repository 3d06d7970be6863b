"""Peak memory and throughput of one month's ingest, for files of growing size.

Builds month files of N rows from the real sample (files/taxi; each copy of the
sample shifts its times by a minute, so every row is a distinct trip), loads each
into the warehouse in a fresh process, and prints rows, seconds and peak RSS.
Run under files/test/warehouse-db.sh for a throwaway PostgreSQL:

    ../../files/test/warehouse-db.sh run uv run --frozen python benchmarks/peak_memory.py 100000 1000000
"""

import argparse
import csv
import gzip
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timedelta
from pathlib import Path

SAMPLE = Path(__file__).resolve().parents[3] / "files" / "taxi" / "yellow" / "yellow_tripdata_2019-01.csv.gz"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def build(rows: int, target: Path) -> None:
    with gzip.open(SAMPLE, "rt") as source:
        reader = csv.reader(source)
        header, sample = next(reader), list(reader)
    times = [header.index("tpep_pickup_datetime"), header.index("tpep_dropoff_datetime")]
    with gzip.open(target, "wt", compresslevel=1) as out:
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(header)
        for n in range(rows):
            row = list(sample[n % len(sample)])
            shift = timedelta(minutes=n // len(sample))
            for i in times:
                row[i] = (datetime.strptime(row[i], TIME_FORMAT) + shift).strftime(TIME_FORMAT)
            writer.writerow(row)


def load(path: str, chunk_rows: int) -> None:
    """In a child process: load the file, report counters, seconds and peak RSS."""
    import psycopg2

    from nyc_taxi.definitions import SCHEMAS, load_month

    started = time.monotonic()
    conn = psycopg2.connect(os.environ["DAGSTER_TEST_WAREHOUSE_URL"])
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS yellow_trips")
    conn.commit()
    counts = load_month(SCHEMAS["yellow"], "2019-01", path, chunk_rows, conn)
    conn.close()
    print(json.dumps({**counts, "seconds": round(time.monotonic() - started, 1),
                      "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("rows", type=int, nargs="+")
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return load(args.child, args.chunk_rows)
    with tempfile.TemporaryDirectory() as tmp:
        for rows in args.rows:
            path = Path(tmp) / f"yellow_{rows}.csv.gz"
            build(rows, path)
            out = subprocess.run([sys.executable, __file__, "0", "--chunk-rows", str(args.chunk_rows),
                                  "--child", str(path)], check=True, capture_output=True, text=True).stdout
            result = json.loads(out.strip().splitlines()[-1])
            print(json.dumps({"rows_in_file": rows, "file_mib": round(path.stat().st_size / 2**20, 1),
                              "chunk_rows": args.chunk_rows, **result}), flush=True)


if __name__ == "__main__":
    main()
