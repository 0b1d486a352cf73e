"""Where every benchmark leaves its result: <out>/<stem>.json (every figure) and <out>/<stem>.md (the table)."""
from __future__ import annotations

import json
import os


def write_result(out: str, stem: str, result: dict, markdown: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write(markdown)
