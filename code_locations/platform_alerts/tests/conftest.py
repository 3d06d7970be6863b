import sys
from pathlib import Path

# The lab's stand-in server (files/lab/standins.py) records what each channel receives.
sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "files" / "test"))
pytest_plugins = ["standins_plugin"]
