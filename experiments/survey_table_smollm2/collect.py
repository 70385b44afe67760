"""results.csv of the survey-table study, from its workdir (combine.py makes results.md and the plot from it).

    python experiments/survey_table_smollm2/collect.py W OUT_DIR

Reads W/<row>/ptq.json (PTQ rows and bitjax.convert's b1.58 PTQ: held-out bits/byte, nats/token, token
perplexity, computed by the tool on heldout.txt), W/_task/<row>.ppl.json (the trained rows: bitjax.eval
--text_files on heldout.txt), W/_task/<row>.json (the pydoc_ending zero-shot task: acc, acc_norm) and
W/_time/<row> (the row's own wall time, s). Rows missing a file are left out of the table, by name.
"""

import json
import math
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))
from bitjax import sweep

COLS = [
    "row",
    "method",
    "kind",
    "bits",
    "group",
    "bits_per_weight",
    "eval_bpb",
    "nats_per_token",
    "token_ppl",
    "task_acc",
    "task_acc_norm",
    "wall_s",
]


def bits_per_weight(bits: float, group: int | None) -> float:
    """Stored bits per weight: k-bit codes plus an fp16 scale and an fp16 zero per group (per channel: over
    ≥ 576 inputs, < 0.06 bits, left out); b1.58: log2 3; BiLLM: ~1.1 (its paper's 1.08–1.11)."""
    return bits + (32 / group if group else 0.0)


def parse_row(name: str) -> tuple[str, str, float, int | None]:
    """'gptq_w3g64' → (method 'gptq', kind 'ptq', bits 3, group 64)."""
    if name == "ptq_b158":
        return "b158", "ptq", math.log2(3), None
    if name == "qat_b158_kd":
        return "b158", "qat+kd", math.log2(3), None
    method, w = name.rsplit("_w", 1)
    kind = "ptq+e2e" if method == "efficientqat_e2e" else "ptq"
    bits, _, group = w.partition("g")
    return method, kind, float(bits), int(group) if group else None


def read(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def collect(w: str) -> list[dict]:
    names = sorted(n for n in os.listdir(w) if not n.startswith("_") and n not in ("fp", "text"))
    fp_task = read(os.path.join(w, "_task", "fp.json"))
    rows, missing = [], []
    fp_ppl = None
    for name in names:
        method, kind, bits, group = parse_row(name)
        ev = read(os.path.join(w, name, "ptq.json"))
        trained = read(os.path.join(w, "_task", f"{name}.ppl.json"))
        task = read(os.path.join(w, "_task", f"{name}.json"))
        t = os.path.join(w, "_time", name)
        if (ev is None and trained is None) or not os.path.exists(t):
            missing.append(name)
            continue
        if ev is not None:
            bpb, npt, ppl = ev["eval_bpb"], ev["eval_loss"], ev["eval_ppl"]
            fp_ppl = fp_ppl or (ev["fp_eval_bpb"], ev["fp_eval_loss"], math.exp(ev["fp_eval_loss"]))
        else:
            bpb, npt, ppl = trained["bits_per_byte"], trained["nats_per_token"], trained["token_ppl"]
        res = task["results"]["pydoc_ending"] if task else {}
        with open(t) as f:
            wall = float(f.read())
        bpw = 1.1 if method == "billm" else bits_per_weight(bits, group)
        rows.append(
            dict(
                row=name,
                method=method,
                kind=kind,
                bits=round(bits, 2),
                group=group or ("tensor" if method == "b158" else "channel"),
                bits_per_weight=round(bpw, 2),
                eval_bpb=round(bpb, 4),
                nats_per_token=round(npt, 4),
                token_ppl=round(ppl, 2),
                task_acc=res.get("acc,none", ""),
                task_acc_norm=res.get("acc_norm,none", ""),
                wall_s=round(wall),
            )
        )
    fres = fp_task["results"]["pydoc_ending"] if fp_task else {}
    rows.insert(
        0,
        dict(
            row="fp",
            method="fp",
            kind="fp",
            bits=16,
            group="",
            bits_per_weight=16,
            eval_bpb=round(fp_ppl[0], 4),
            nats_per_token=round(fp_ppl[1], 4),
            token_ppl=round(fp_ppl[2], 2),
            task_acc=fres.get("acc,none", ""),
            task_acc_norm=fres.get("acc_norm,none", ""),
            wall_s="",
        ),
    )
    if missing:
        print("not in the table (unfinished):", ", ".join(missing))
    return rows


def main(w: str, out: str) -> None:
    sweep.write_csv(os.path.join(out, "results.csv"), COLS, collect(w))


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
