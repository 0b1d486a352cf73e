"""gpu_suite.md from gpu_suite.json: the targets of the project issue first, then every part's rows."""
from __future__ import annotations

UNITS = {"images_per_s": "images/s", "samples_per_s": "samples/s", "queries_per_s": "queries/s"}


def _rate(row: dict) -> str:
    key = next((k for k in UNITS if row.get(k) is not None), None)
    if key is None and row.get("tflops") is not None:
        return f"{row['tflops']} TFLOP/s"
    return f"{row[key]:,} {UNITS[key]}" if key else ""


def _pct(x) -> str:
    return "" if x is None else f"{100 * x:.1f}%"


def _row_notes(row: dict) -> str:
    bits = []
    if row.get("batch_limited_by"):
        bits.append(f"batch limited by {row['batch_limited_by']}")
    for key in ("peak_memory_gib", "compiled", "attention", "resume_ok", "loss_finite", "fsdp", "precision",
                "planted_found_at_rank1", "ratio_to_gpu_rate", "resolution", "dtype", "compute_dtype"):
        if row.get(key) is not None:
            bits.append(f"{key} {row[key]}")
    bits += row.get("notes", [])
    if row.get("error"):
        bits.append(f"**error: {row['error']}**")
    return "; ".join(str(b) for b in bits)


def to_markdown(result: dict) -> str:
    env = (result["parts"].get("a") or {}).get("environment", {})
    quick = result["quick"]
    lines = [f"# GPU suite: {env.get('gpu_name') or 'CPU'}{' (--quick)' if quick else ''}", ""]
    if not result["performance_claim"]:
        lines += ["**Not a performance claim**: " + ("--quick runs the tiny models" if quick else "no GPU")
                  + (" on CPU in fp32" if result["device"] == "cpu" else "") + "; it shows every part's code path "
                  "runs end to end.", ""]
    lines += [f"Device {result['device']}; torch {env.get('torch')}, CUDA {env.get('cuda')}, Python {env.get('python')}"
              + (f"; {env.get('gpu_memory_gib')} GiB" if env.get("gpu_memory_gib") else "") + ". "
              f"Measured {result.get('peak_dtype', '')} matmul peak (MFU denominator): {result.get('peak_tflops')} "
              f"TFLOP/s. Wall time {result['seconds']} s (budget {result['budget_s']} s).", "",
              "## Targets (project issue 13)", "", "| target | measured | met |", "|---|---|---|"]
    for t in result["targets"]:
        met = {True: "yes", False: "**no**", None: "not judged"}[t["met"]]
        lines.append(f"| {t['target']} | {t['measured']} | {met} |")
    lines += [""]
    for key, part in result["parts"].items():
        lines += [f"## Part {key}: {part['title']} ({part.get('seconds', '?')} s, {part.get('cpu_s', '?')} CPU s)", ""]
        if part.get("error"):
            lines += [f"**Part failed:** `{part['error']}`", ""]
        if part.get("rows"):
            lines += ["| row | rate | MFU | speed-up vs naive | batch | notes |", "|---|---:|---:|---:|---:|---|"]
            for r in part["rows"]:
                lines.append(f"| {r['name']} | {_rate(r)} | {_pct(r.get('mfu'))} | "
                             f"{'' if r.get('speedup_vs_naive') is None else str(r['speedup_vs_naive']) + 'x'} | "
                             f"{r.get('batch_size') or ''} | {_row_notes(r)} |")
            lines.append("")
        lines += [f"- {n}" for n in part.get("notes", [])] + ([""] if part.get("notes") else [])
    if env.get("stack"):
        lines += ["## Imported stack", "", "| module | version | from |", "|---|---|---|"]
        lines += [f"| {m} | {v.get('version', v.get('error'))} | {v.get('path', '')} |" for m, v in env["stack"].items()]
        lines.append("")
    lines += [f"Command: `{result['command']}`", ""]
    return "\n".join(lines)


def targets(result: dict) -> list[dict]:
    """The issue's targets, judged only on a GPU run (met = None otherwise)."""
    rows = {r["name"]: r for r in result["rows"]}
    judge = result["performance_claim"]
    cfg = "tiny_32" if result["quick"] else "sd2_256"
    full = rows.get(f"train_{cfg}_f") if rows.get(f"train_{cfg}_f", {}).get("images_per_s") else rows.get(f"train_{cfg}_e")
    out = []
    speedup = (full or {}).get("speedup_vs_naive")
    out.append({"target": "full stack >= 3x the naive row (sd2, 256 px)", "measured":
                f"{speedup}x ({full['name']})" if speedup else "n/a", "met": (speedup >= 3.0) if judge and speedup else None})
    for res in ((256, 512) if not result["quick"] else (32,)):
        cand = [r for n, r in rows.items() if n.startswith(f"train_{'tiny' if result['quick'] else 'sd2'}_{res}_")
                and r.get("mfu") is not None]
        best = max(cand, key=lambda r: r["mfu"], default=None)
        out.append({"target": f"sd2 MFU >= 40% of the measured {result.get('peak_dtype') or 'bf16'} peak, {res} px",
                    "measured":
                    f"{_pct(best['mfu'])} ({best['name']}, {best['images_per_s']} images/s)" if best else "n/a",
                    "met": (best["mfu"] >= 0.40) if judge and best else None})
    loader = [r for r in result["rows"] if r["name"].startswith("dataloader_latents")]
    for r in loader:
        out.append({"target": "dataloader (precomputed latents, default workers) >= 4x the GPU rate", "measured":
                    f"{r['ratio_to_gpu_rate']}x of {r['gpu_rate']} images/s ({r['gpu_rate_row']})",
                    "met": r["target_met"] if judge else None})
    recipe = rows.get("recipe_commoncanvas_s_c")
    if recipe:
        out.append({"target": "recipe: loss finite, checkpoint written, autoresume continues from it",
                    "measured": f"loss finite {recipe['loss_finite']}, resume {recipe['resume_ok']}, "
                                f"{recipe['images_per_s']} images/s", "met": recipe["loss_finite"] and recipe["resume_ok"]})
    return out

