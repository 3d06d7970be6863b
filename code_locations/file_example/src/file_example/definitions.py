"""A location loaded from this one file (workspace kind python_file): keep it self-contained."""

import time
from pathlib import Path

import dagster as dg


class CountWordsConfig(dg.Config):
    # A gate for tests of runs in flight: the op waits until this file exists.
    wait_for_file: str = ""
    wait_timeout_seconds: float = 600.0


@dg.op
def count_words(context: dg.OpExecutionContext, config: CountWordsConfig) -> int:
    if config.wait_for_file:
        context.log.info("waiting for %s", config.wait_for_file)
        deadline = time.monotonic() + config.wait_timeout_seconds
        while not Path(config.wait_for_file).exists():
            if time.monotonic() > deadline:
                raise dg.Failure(f"{config.wait_for_file} did not appear in {config.wait_timeout_seconds:.0f} s")
            time.sleep(0.2)
    words = "the quick brown fox jumps over the lazy dog".split()
    context.log.info("counted %d words", len(words))
    return len(words)


@dg.job(description="Counts words in a fixed sentence (optionally once a gate file exists).")
def file_job():
    count_words()


defs = dg.Definitions(jobs=[file_job])
