#!/usr/bin/env python3
"""Digest of each location's source folder on the controller, as the hosts get it.

Reads {"locations": {name: folder}, "excludes": [rsync patterns]} from its argument (or
stdin) and prints {name: sha256}. A pattern ending in / excludes directories of that
name, any other a file name glob, wherever they are (the forms dagster_code_source_excludes
documents).
The digest covers every copied path and its content (a symlink's target), so a host
whose recorded digest matches holds exactly this code.
"""

import fnmatch
import hashlib
import json
import os
import sys


def digest(folder: str, dir_patterns: list[str], file_patterns: list[str]) -> str:
    h = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not any(fnmatch.fnmatch(d, p) for p in dir_patterns))
        # rsync copies a link to a folder as a link: digest it as one, do not descend.
        links = [d for d in dirs if os.path.islink(os.path.join(root, d))]
        dirs[:] = [d for d in dirs if d not in links]
        for name in sorted(files + links):
            if name not in links and any(fnmatch.fnmatch(name, p) for p in file_patterns):
                continue
            path = os.path.join(root, name)
            h.update(os.fsencode(os.path.relpath(path, folder)) + b"\0")
            if os.path.islink(path):
                h.update(b"link:" + os.fsencode(os.readlink(path)))
            else:
                with open(path, "rb") as f:
                    for block in iter(lambda: f.read(1 << 20), b""):
                        h.update(block)
            h.update(b"\0")
    return h.hexdigest()


def main() -> None:
    request = json.loads(sys.argv[1]) if len(sys.argv) > 1 else json.load(sys.stdin)
    excludes = request.get("excludes", [])
    dir_patterns = [p.rstrip("/") for p in excludes if p.endswith("/")]
    file_patterns = [p for p in excludes if not p.endswith("/")]
    json.dump({name: digest(folder, dir_patterns, file_patterns)
               for name, folder in request["locations"].items()}, sys.stdout)


if __name__ == "__main__":
    main()
