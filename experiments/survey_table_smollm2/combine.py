"""results.md and bpb_vs_bits.png of the survey-table study, from results.csv alone.

    python experiments/survey_table_smollm2/combine.py [OUT_DIR]      # default: this directory

results.csv (collect.py, from the workdir): one row per quantized model of SmolLM2-135M-Instruct plus its FP
source; held-out bits/byte, nats/token and token perplexity on heldout.txt, the pydoc_ending task's acc and
acc_norm (72 items, 4 endings each), and the row's wall time on this machine. One run per row (no seeds: a
PTQ of a fixed model is deterministic given its calibration text), so the table has no error bars; the
task's binomial standard error is printed beside it. The survey's orderings are checked against stated
thresholds below the table.
"""

import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from bitjax import sweep

METHODS = ["rtn", "gptq", "omniquant", "decoupleq", "efficientqat", "efficientqat_e2e", "billm", "b158"]
LABEL = {
    "rtn": "RTN",
    "gptq": "GPTQ",
    "omniquant": "OmniQuant (LWC)",
    "decoupleq": "decoupleQ",
    "efficientqat": "EfficientQAT Block-AP",
    "efficientqat_e2e": "EfficientQAT Block-AP + E2E-QP",
    "billm": "BiLLM",
    "b158": "b1.58",
}
NUMERIC = ("eval_bpb", "nats_per_token", "token_ppl", "task_acc", "task_acc_norm")
TASK_ITEMS = 72  # prepare.py's pydoc_ending (it says how many it wrote)
W4_PPL_RATIO = 1.25  # "W4 ≈ FP": token ppl within this factor of FP's (LLaMA-2-7B's W4 rows in the survey: ≤ 1.1×)
COLLAPSE_BPB = 3.0  # "collapses": held-out bits/byte ≥ this many times FP's
FAR_BELOW = 0.5  # "far below": nats/token ≤ this fraction of the other's (7B: OmniQuant W2 ln 37.4 vs GPTQ ln 7.7e3)


def fmt(v, digits=3):
    return "" if v is None else f"{v:.{digits}f}"


def table(rows: list[dict]) -> list[str]:
    lines = [
        (
            "| row | method | bits | group | bits/weight | held-out bits/byte | nats/token | token ppl "
            "| pydoc_ending acc | acc_norm | wall time (s) |"
        ),
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    order = {m: i for i, m in enumerate(["fp", *METHODS])}
    key = lambda r: (
        -float(r["bits"]) if r["method"] != "fp" else -99,
        order[r["method"]],
        r["group"],
        r["kind"],
    )
    for r in sorted(rows, key=key):
        label = LABEL.get(r["method"], "FP (Q4_1 release, dequantized)") + (
            "" if r["kind"] in ("ptq", "fp", "ptq+e2e") else f" {r['kind']}"
        )
        lines.append(
            f"| {r['row']} | {label} | {r['bits']} | {r['group']} | {r['bits_per_weight']} | {r['eval_bpb']:.3f} "
            f"| {r['nats_per_token']:.3f} | {fmt(r['token_ppl'], 1)} | {fmt(r['task_acc'])} "
            f"| {fmt(r['task_acc_norm'])} | {r['wall_s']} |"
        )
    return lines


def orderings(rows: list[dict]) -> list[str]:
    """The survey's expected orderings (its table: LLaMA-2-7B, WikiText-2), each checked on these rows."""
    by = {r["row"]: r for r in rows}
    fp = by["fp"]
    yes = lambda ok: "yes" if ok else "**no**"
    w4 = [r for r in rows if r["bits"] == "4.0"]
    ratio = {r["row"]: r["token_ppl"] / fp["token_ppl"] for r in w4}
    lo, hi = min(ratio, key=ratio.get), max(ratio, key=ratio.get)
    out = [
        "| survey's ordering (7B) | measured here | threshold | holds |",
        "|---|---|---|---|",
        (
            f"| W4 ≈ FP | W4 token ppl / FP's: {ratio[lo]:.2f}× ({lo}) to {ratio[hi]:.2f}× ({hi}) "
            f"| every W4 row ≤ {W4_PPL_RATIO}× | {yes(ratio[hi] <= W4_PPL_RATIO)} "
            f"(best W4 rows: {yes(ratio[lo] <= W4_PPL_RATIO)}) |"
        ),
    ]
    for name in ("gptq_w2", "ptq_b158"):
        r = by[name]
        out.append(
            f"| {LABEL[r['method']]} {'W2' if name == 'gptq_w2' else 'PTQ'} collapses | {r['eval_bpb']:.2f} "
            f"bits/byte vs FP {fp['eval_bpb']:.2f} | ≥ {COLLAPSE_BPB}× FP | "
            f"{yes(r['eval_bpb'] >= COLLAPSE_BPB * fp['eval_bpb'])} |"
        )
    g = by["gptq_w2"]["nats_per_token"]
    for name in ("omniquant_w2", "decoupleq_w2"):
        r = by[name]
        out.append(
            f"| {LABEL[r['method']]} W2 far below GPTQ W2 | {r['nats_per_token']:.2f} vs {g:.2f} nats/token "
            f"| ≤ {FAR_BELOW}× GPTQ's | {yes(r['nats_per_token'] <= FAR_BELOW * g)} |"
        )
    for group in ("channel", "64"):
        w3 = [r for r in rows if r["bits"] == "3.0" and r["group"] == group]
        best = min(w3, key=lambda r: r["eval_bpb"])
        eq = [r for r in w3 if r["method"].startswith("efficientqat")]
        eqb = min(eq, key=lambda r: r["eval_bpb"])
        out.append(
            f"| EfficientQAT W3 closest to FP of the W3 rows ({group}) | closest: {best['row']} "
            f"{best['eval_bpb']:.3f}; {eqb['row']} {eqb['eval_bpb']:.3f} | lowest W3 bits/byte "
            f"| {yes(best['method'].startswith('efficientqat'))} |"
        )
    q, p = by["qat_b158_kd"], by["ptq_b158"]
    out.append(
        f"| b1.58 QAT+KD recovers part of the PTQ loss | {q['eval_bpb']:.2f} bits/byte vs PTQ {p['eval_bpb']:.2f}, "
        f"FP {fp['eval_bpb']:.2f} | FP < QAT+KD < PTQ | {yes(fp['eval_bpb'] < q['eval_bpb'] < p['eval_bpb'])} |"
    )
    return out


def plot(rows: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.8))
    markers = dict(zip(METHODS, "osD^vP*X"))
    fp = next(r for r in rows if r["method"] == "fp")["eval_bpb"]
    ax.axhline(fp, color="k", lw=1, ls="--", label=f"FP ({fp:.3f})")
    for m in METHODS:
        for kind in ("ptq", "ptq+e2e", "qat+kd"):
            rs = [r for r in rows if r["method"] == m and r["kind"] == kind]
            if rs:
                lab = LABEL[m] + ("" if kind != "qat+kd" else " QAT+KD")
                ax.scatter(
                    [float(r["bits_per_weight"]) for r in rs],
                    [r["eval_bpb"] for r in rs],
                    marker=markers[m] if kind != "qat+kd" else "h",
                    color=sweep.color(m),
                    edgecolors="k" if kind == "qat+kd" else "none",
                    label=lab,
                    s=40,
                    alpha=0.85,
                )
    ax.set_yscale("log")
    ax.set_xlabel("bits per weight (codes + fp16 scale and zero per group)")
    ax.set_ylabel("held-out bits/byte (log scale)")
    ax.set_title("SmolLM2-135M-Instruct, pydoc held-out text")
    ax.legend(fontsize=7, ncol=2)
    sweep.save_fig(fig, path)


def main(out=HERE):
    rows = sweep.read_csv(os.path.join(HERE, "results.csv"), numeric=NUMERIC)
    fp_acc = next(r for r in rows if r["method"] == "fp")["task_acc"]
    se = math.sqrt(fp_acc * (1 - fp_acc) / TASK_ITEMS)
    lines = [
        *table(rows),
        "",
        (
            f"pydoc_ending: {TASK_ITEMS} items, 4 endings (chance 0.25); one accuracy near FP's {fp_acc:.3f} has "
            f"a binomial standard error of {se:.3f}, the difference of two such rows {math.sqrt(2) * se:.3f} (as "
            f"independent samples; the per-item answers that a paired test would need were not kept), so rows "
            f"within ±{2 * math.sqrt(2) * se:.2f} of each other are not told apart."
        ),
        "",
        *orderings(rows),
    ]
    sweep.write_markdown(out, lines)
    try:
        plot(rows, os.path.join(out, "bpb_vs_bits.png"))
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[plots]')")


if __name__ == "__main__":
    main(*sys.argv[1:])
