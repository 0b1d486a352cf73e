"""Where every benchmark leaves its result: <out>/<stem>.json (every figure) and <out>/<stem>.md (the table)."""
from __future__ import annotations

import json
import math
import os


def safe_ratio(numerator: float, denominator: float | None, digits: int = 4) -> float | None:
    """numerator / denominator rounded, or None when the denominator is a measured value that came out zero,
    missing or not finite (a CPU's bf16 peak can round to 0.000 TFLOP/s): reports show "n/a", never crash."""
    if not denominator or not math.isfinite(denominator) or not math.isfinite(numerator):
        return None
    return round(numerator / denominator, digits)


def percent(fraction: float | None) -> str:
    """A fraction as a table cell: "12.34%", or "n/a" when it could not be computed."""
    return "n/a" if fraction is None else f"{100 * fraction:.2f}%"


def write_result(out: str, stem: str, result: dict, markdown: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write(markdown)
