"""The study's one-page findings, ``outputs/<profile>/REPORT.md``, written by notebook 06.

Every sentence is computed from the notebooks' ``metrics.json`` files, so the report cannot drift from the
results; a notebook that has not run (or is a placeholder) is reported as such, never skipped silently.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from mimic_utils.artifacts import profile_dir, read_json, write_text

NOTEBOOKS = ("01_data_build", "02_zero_shot_diagnosis", "03_attention_analysis", "04_data_centric_finetune",
             "05_masked_qlora_finetune", "06_cross_benchmark_eval")


def load_all(profile: str, root: Path | None = None) -> dict[str, dict | None]:
    """Each notebook's metrics, or None where it has not written any."""
    found = {}
    for notebook in NOTEBOOKS:
        path = profile_dir(profile, root) / notebook / "metrics.json"
        found[notebook] = read_json(path) if path.is_file() else None
    return found


def _status(metrics: dict | None) -> str:
    if metrics is None:
        return "not run"
    return metrics.get("status", "ok")


def _mean_score(rows: list[dict], **where) -> float | None:
    chosen = [r["score"] for r in rows if all(r.get(k) == v for k, v in where.items())]
    return sum(chosen) / len(chosen) if chosen else None


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f}"


def paper_claims(metrics: dict[str, dict | None], base: str) -> list[tuple[str, str]]:
    """(claim of the paper, what this run found) pairs, each finding computed from the metrics."""
    claims = []
    diag = metrics.get("02_zero_shot_diagnosis")
    if diag and diag.get("status") == "ok" and diag.get("models"):
        studied = next(iter(diag["models"]))  # notebook 02's model under study (the organism, or a checkpoint)
        images = [r for r in diag["by_images"] if r["model"] == studied]
        values = sorted({r["n_images"] for r in images})
        first, last = _mean_score(images, n_images=values[0]), _mean_score(images, n_images=values[-1])
        claims.append(("Accuracy falls as images are added.",
                       f"{studied}: mean score {_fmt(first)} at {values[0]} image(s), {_fmt(last)} at {values[-1]}."))
        spread = [r for r in diag["spread"] if r["model"] == studied]
        if spread:
            s = sorted({r["spread"] for r in spread})
            claims.append(("Counting fails when the instances are spread over several images.",
                           f"counting accuracy {_fmt(_mean_score(spread, spread=s[0]))} with the total in one image, "
                           f"{_fmt(_mean_score(spread, spread=s[-1]))} spread over {s[-1]}."))
        pooling = [r for r in diag["pooling"] if r["model"] == studied]
        if pooling:
            n = max(r["n_images"] for r in pooling)
            rs = sorted({r["pool"] for r in pooling})
            claims.append(("Shortening each image's token sequence (1D pooling) does not recover accuracy.",
                           f"at {n} images: {_fmt(_mean_score(pooling, n_images=n, pool=rs[0]))} at r={rs[0]}, "
                           f"{_fmt(_mean_score(pooling, n_images=n, pool=rs[-1]))} at r={rs[-1]}."))
    attn = metrics.get("03_attention_analysis")
    if attn and attn.get("status") == "ok":
        cross = [r for r in attn["shares"] if r["query_kind"] == "vision" and r["target"] == "other_images"]
        cross.sort(key=lambda r: r["layer"])
        claims.append(("Cross-image attention is strong early and fades in deeper layers.",
                       f"vision→other-image share {cross[0]['mean']:.2f} in layer 0, {cross[-1]['mean']:.2f} in the last "
                       f"layer; auto layer: {attn.get('auto_layer')} ({attn.get('auto_layer_rule')})."))
    for notebook, other, claim in (("04_data_centric_finetune", "data-centric",
                                    "Multi-image synthetic supervision improves multi-image accuracy."),
                                   ("05_masked_qlora_finetune", "masked LoRA (late)",
                                    "Masking image tokens to their own image in deep layers improves accuracy.")):
        found = metrics.get(notebook)
        if found and found.get("status") == "ok":
            images = found.get("images", [])
            n = max((r["n_images"] for r in images), default=None)
            if n is not None:
                claims.append((claim, f"at {n} images, mean score {base} {_fmt(_mean_score(images, model=base, n_images=n))} → "
                                      f"{other} {_fmt(_mean_score(images, model=other, n_images=n))}; at 1 image "
                                      f"{_fmt(_mean_score(images, model=base, n_images=1))} → "
                                      f"{_fmt(_mean_score(images, model=other, n_images=1))}."))
    masked = metrics.get("05_masked_qlora_finetune")
    if masked and masked.get("status") == "ok":
        flops = {r["n_images"]: r for r in masked["compute_flops"]}
        n = max(flops)
        claims.append(("Masking cuts compute (the paper: about 81% fewer FLOPs).",
                       f"analytic, LLaVA-OV-7B size, {n} images: {flops[n]['masked_layer_attention_saving']:.0%} of the "
                       f"masked layers' attention FLOPs, {flops[n]['attention_saving']:.0%} of all attention FLOPs, "
                       f"{flops[n]['total_saving']:.0%} of total prefill FLOPs."))
    return claims


def write_report(profile: str, results: pd.DataFrame, base: str = "base", root: Path | None = None) -> Path:
    """Compose ``REPORT.md`` from every notebook's metrics and notebook 06's results table."""
    metrics = load_all(profile, root)
    lines = [f"# MIMIC study — findings (profile `{profile}`)", "",
             "Every number below is computed from the notebooks' `metrics.json`; figures are in each notebook's "
             "output folder and the executed notebooks in `executed/`.", "", "## What ran", "",
             "| notebook | status |", "|---|---|"]
    lines += [f"| {n} | {_status(m)} |" for n, m in metrics.items()]
    data = metrics.get("01_data_build")
    if data:
        lines += ["", f"Benchmark: {data['benchmark']['total']} questions; training data: "
                      f"{data['train']['total']} conversations (disjoint image source)."]
    lines += ["", "## Cross-benchmark results (notebook 06)", "", results.to_markdown(index=False), ""]
    for notebook, title in (("02_zero_shot_diagnosis", "Diagnosis (notebook 02)"),
                            ("04_data_centric_finetune", "Data-centric finetuning (notebook 04)"),
                            ("05_masked_qlora_finetune", "Masked LoRA (notebook 05)")):
        found = metrics.get(notebook)
        if found and found.get("findings"):
            lines += [f"## {title}", ""] + [f"- {line}" for line in found["findings"]] + [""]
    claims = paper_claims(metrics, base)
    lines += ["## The paper's claims and what this run found", "", "| claim | this run |", "|---|---|"]
    lines += [f"| {claim} | {found} |" for claim, found in claims]
    lines += ["", "A tiny model organism is a controlled miniature, not a reproduction of the paper's numbers: where "
              "a finding differs from the paper, read it as a property of this setting, to be checked at scale "
              "with the `paper` profile.", ""]
    return write_text(profile_dir(profile, root) / "REPORT.md", "\n".join(lines))
