"""A location loaded from this one file (workspace kind python_file): keep it self-contained."""

import dagster as dg


@dg.op
def count_words(context: dg.OpExecutionContext) -> int:
    words = "the quick brown fox jumps over the lazy dog".split()
    context.log.info("counted %d words", len(words))
    return len(words)


@dg.job(description="Counts words in a fixed sentence.")
def file_job():
    count_words()


defs = dg.Definitions(jobs=[file_job])
