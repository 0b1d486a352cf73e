"""Where every benchmark leaves its result: <out>/<stem>.json (every figure) and <out>/<stem>.md (the table)."""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import time


def safe_ratio(numerator: float, denominator: float | None, digits: int = 4) -> float | None:
    """numerator / denominator rounded, or None when the denominator is a measured value that came out zero,
    missing or not finite (a CPU's bf16 peak can round to 0.000 TFLOP/s): reports show "n/a", never crash."""
    if not denominator or not math.isfinite(denominator) or not math.isfinite(numerator):
        return None
    return round(numerator / denominator, digits)


def percent(fraction: float | None) -> str:
    """A fraction as a table cell: "12.34%", or "n/a" when it could not be computed."""
    return "n/a" if fraction is None else f"{100 * fraction:.2f}%"


def markdown_table(columns: list[tuple[str, str]], rows: list[list]) -> list[str]:
    """Lines of a Markdown table: columns are (header, "l" or "r" alignment), rows their cells in order."""
    rule = {"l": "---", "r": "---:"}
    return (["| " + " | ".join(h for h, _ in columns) + " |", "|" + "|".join(rule[a] for _, a in columns) + "|"]
            + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows])


def write_result(out: str, stem: str, result: dict, markdown: str) -> None:
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, stem + ".json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(out, stem + ".md"), "w") as f:
        f.write(markdown)


class CpuTimer:
    """Wall seconds, process CPU seconds (user+sys of every thread) and the 1-minute load average before and
    after a block: `with CpuTimer() as t: ...` then t.wall_s, t.cpu_s, t.load_avg_1min. CPU seconds carry to
    other machines; wall time on a shared machine does not, and the load average says how shared it was."""

    @staticmethod
    def cpu_seconds() -> float:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    def __enter__(self) -> CpuTimer:
        self._load = os.getloadavg()[0]
        self._cpu, self._t0 = self.cpu_seconds(), time.perf_counter()
        return self

    def __exit__(self, *exc) -> None:
        self.wall_s = time.perf_counter() - self._t0
        self.cpu_s = self.cpu_seconds() - self._cpu
        self.load_avg_1min = [round(self._load, 2), round(os.getloadavg()[0], 2)]


def cpu_environment() -> dict:
    """The machine facts a CPU image benchmark's table names."""
    from PIL import Image

    return {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(), "pillow": Image.__version__}


def image_stage_figures(images: int, timer: CpuTimer, out_dir: str) -> dict:
    """Per-run figures of an image stage writing MDS to out_dir: wall and CPU seconds, images/s, CPU ms per
    image, images per CPU-core-second (the figure that carries to other machines), MDS MB, load averages.
    Refuses a run with nothing to divide by rather than report a rate that rounds to zero or infinity."""
    if images == 0 or timer.wall_s <= 0 or timer.cpu_s <= 0:
        raise SystemExit(f"nothing measurable in {out_dir}: {images} images in {timer.wall_s:.3f} s wall, "
                         f"{timer.cpu_s:.3f} s CPU")
    mds_bytes = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(out_dir) for f in fs
                    if f.endswith(".mds"))
    return {"wall_s": round(timer.wall_s, 3), "cpu_s": round(timer.cpu_s, 3),
            "images_per_s": round(images / timer.wall_s, 2), "cpu_ms_per_image": round(1000 * timer.cpu_s / images, 2),
            "images_per_cpu_core_s": round(images / timer.cpu_s, 2), "mds_mb": round(mds_bytes / 1e6, 1),
            # Other work on the machine inflates wall time; CPU seconds are much less affected.
            "load_avg_1min": timer.load_avg_1min}
