"""results.md and ptq_vs_qat.png of the PTQ vs QAT study, from results.csv alone.

    python experiments/ptq_vs_qat_tiny/combine.py [OUT_DIR]      # default: this directory

results.csv (collected by collect.py from the workdirs): one row per run, `kind` ptq (a PTQ of the FP run of
that seed; fp_eval_bpb is that FP run's eval) or qat (experiments/quant_choice's `tiny` run of that method
at its tuned LR). A PTQ run is paired with its own FP source (paired t); QAT runs are trained
independently of the FP runs (Welch's t), and so are QAT vs PTQ.
"""

import os
import statistics
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from bitjax import stats, sweep

PTQ = {"rtn": ["2", "3", "4"], "gptq": ["2", "3", "4"], "billm": ["1"]}
QAT = {"4": "rtn4", "3": "rtn3", "2": "rtn2", "1.58": "b158", "1": "fbi"}  # fbi: the best 1-bit QAT row of quant_choice
QAT_LR = {"rtn4": "1e-3", "rtn3": "1e-3", "rtn2": "1e-3", "b158": "3e-3", "fbi": "3e-3"}  # quant_choice's tiny LRs


def main(out=HERE):
    rows = sweep.read_csv(os.path.join(HERE, "results.csv"))
    g = sweep.group_rows(rows, ["kind", "method", "bits"])
    val = {k: [r["eval_bpb"] for r in rs] for k, rs in g.items()}
    sd = {k: [r["seed"] for r in rs] for k, rs in g.items()}
    fp_by_seed = {r["seed"]: r["fp_eval_bpb"] for r in rows if r["kind"] == "ptq"}
    fp_seeds = sorted(fp_by_seed)
    fp = [fp_by_seed[s] for s in fp_seeds]
    ptq = lambda m, b: ("ptq", m, b)
    qat = lambda b: ("qat", QAT[b], b)
    lines = [
        f"FP source runs (seeds {', '.join(fp_seeds)}): eval bits/byte {stats.mean_std(fp)} (n={len(fp)}).",
        "",
        "Eval bits/byte, mean ± sample std (n = 3 each):",
        "",
        "| weight bits | PTQ: RTN | PTQ: GPTQ | PTQ: BiLLM | QAT (method, its tuned LR) |",
        "|---|---|---|---|---|",
    ]
    cell = lambda m, b: stats.mean_std(val[ptq(m, b)]) if ptq(m, b) in val else ""
    for b, m in QAT.items():
        lines.append(
            f"| {b} | {cell('rtn', b)} | {cell('gptq', b)} | {cell('billm', b)} | "
            f"{m} ({QAT_LR[m]}): {stats.mean_std(val[qat(b)])} |"
        )
    cost = lambda k: (
        stats.paired(val[k], [fp_by_seed[s] for s in sd[k]], sd[k], sd[k])
        if k[0] == "ptq"
        else stats.welch(val[k], fp, sd[k], fp_seeds)
    )
    lines += [
        "",
        "Cost of quantization (eval bits/byte − FP): PTQ paired with its own FP source; QAT vs the FP runs, Welch:",
        "",
    ]
    for b, m in QAT.items():
        for k in [ptq(p, b) for p in PTQ if b in PTQ[p]] + [qat(b)]:
            who = f"PTQ {k[1]}{b}" if k[0] == "ptq" else f"QAT {m}"
            lines.append(f"- {who} − FP: {cost(k).text()}")
    lines += ["", "Comparisons the reading makes (eval bits/byte):", ""]
    for b in ["2", "3", "4"]:
        t = stats.paired(val[ptq("gptq", b)], val[ptq("rtn", b)], sd[ptq("gptq", b)], sd[ptq("rtn", b)])
        lines.append(f"- GPTQ{b} − RTN{b} (PTQ of the same FP run: paired): {t.text()}")
    for b in ["2", "3", "4"]:
        t = stats.welch(val[qat(b)], val[ptq("gptq", b)], sd[qat(b)], sd[ptq("gptq", b)])
        lines.append(f"- QAT {QAT[b]} − PTQ GPTQ{b} (Welch): {t.text()}")
    t = stats.welch(val[qat("2")], val[ptq("rtn", "2")], sd[qat("2")], sd[ptq("rtn", "2")])
    lines.append(f"- QAT rtn2 − PTQ RTN2 (Welch): {t.text()}")
    t = stats.welch(val[qat("1")], val[ptq("billm", "1")], sd[qat("1")], sd[ptq("billm", "1")])
    lines.append(f"- QAT fbi − PTQ BiLLM (1 bit, Welch): {t.text()}")
    sweep.write_markdown(out, lines)

    plt = sweep.pyplot()
    if plt is None:
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    f_mean, f_std = statistics.mean(fp), statistics.stdev(fp)
    ax.axhspan(
        f_mean - f_std, f_mean + f_std, color="grey", alpha=0.25, lw=0, label=f"FP source mean ± std (n={len(fp)})"
    )
    ax.axhline(f_mean, color="grey", lw=0.8)
    for (m, bits), mk, dx in zip(PTQ.items(), "osD", (-0.06, -0.02, 0.02)):
        bs = [float(b) for b in bits]
        ys = [val[ptq(m, b)] for b in bits]
        ax.errorbar(
            [b + dx for b in bs],
            [statistics.mean(y) for y in ys],
            yerr=[statistics.stdev(y) for y in ys],
            marker=mk,
            capsize=3,
            color=sweep.color(m),
            label=f"PTQ: {m.upper() if m != 'billm' else 'BiLLM'}",
        )
    for b, m in QAT.items():  # QAT rows are different methods: one point each, in its method's colour
        y = val[qat(b)]
        ax.errorbar(
            [float(b) + 0.06],
            [statistics.mean(y)],
            yerr=[statistics.stdev(y)],
            marker="v",
            capsize=3,
            color=sweep.color(m),
            label=f"QAT: {m}",
        )
    ax.set(
        xlabel="weight bits",
        ylabel="eval bits/byte (lower is better)",
        title="tiny: PTQ of a trained FP model vs QAT, mean ± std over 3 seeds",
    )
    ax.set_xticks([1, 1.58, 2, 3, 4], ["1", "1.58", "2", "3", "4"])
    ax.legend(fontsize=7, ncol=2)
    sweep.save_fig(fig, os.path.join(out, "ptq_vs_qat.png"))


if __name__ == "__main__":
    main(*sys.argv[1:2])
