"""The distributed tests launch real processes (gloo on 127.0.0.1); their helpers live beside them."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
