"""Writes the study's local data from the Python standard library's `pydoc_data.topics` (the English
language reference that `help()` shows), so nothing is downloaded:

    DIR/calib.txt      calibration text: topics whose sorted index i has i % 4 != 0
    DIR/heldout.txt    held-out text: the first HELDOUT_BYTES of topics with i % 4 == 0 (no method sees it)
    DIR/tasks/pydoc_ending.{yaml,jsonl}
                       a small zero-shot multiple-choice task (lm-eval YAML on a local jsonl): the two sentences
                       before a held-out paragraph's last, and four endings: its own last sentence and the
                       last sentences of three other held-out paragraphs (HellaSwag's form; acc, acc_norm)

    python experiments/survey_table_smollm2/prepare.py DIR
"""

import json
import os
import random
import re
import sys
from pydoc_data.topics import topics

HELDOUT_BYTES = 24_000
TASK_ITEMS = 80
CONTEXT_SENTENCES = 2  # the paragraph's sentences before the ending that are shown (≤ 2: a short prompt)
SEED = 0


def prose_paragraphs(text: str) -> list[str]:
    """Paragraphs of running English (no indented code, no headings), whitespace folded."""
    out = []
    for para in re.split(r"\n\s*\n", text):
        lines = para.split("\n")
        if any(line.startswith(" ") for line in lines) or any(set(line) <= set("*=-") for line in lines):
            continue
        out.append(" ".join(line.strip() for line in lines))
    return out


def sentences(para: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+(?=[A-Z\"])", para) if s]


def task_items(texts: list[str]) -> list[dict]:
    rng = random.Random(SEED)
    items = []
    for t in texts:
        for para in prose_paragraphs(t):
            sents = sentences(para)
            if len(sents) >= 3 and all(20 <= len(s) <= 250 for s in sents[-1:]):
                items.append({"context": " ".join(sents[-CONTEXT_SENTENCES - 1 : -1]), "ending": sents[-1]})
    rng.shuffle(items)
    items = items[:TASK_ITEMS]
    endings = [it["ending"] for it in items]
    out = []
    for i, it in enumerate(items):
        others = rng.sample([e for j, e in enumerate(endings) if j != i], 3)
        label = rng.randrange(4)
        choices = others[:label] + [it["ending"]] + others[label:]
        out.append({"context": it["context"], "choices": choices, "label": label})
    return out


YAML = """task: pydoc_ending
dataset_path: json
dataset_kwargs:
  data_files:
    test: {jsonl}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{context}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: label
target_delimiter: " "
metric_list:
  - metric: acc
    aggregation: mean
    higher_is_better: true
  - metric: acc_norm
    aggregation: mean
    higher_is_better: true
"""


def main(out_dir: str) -> None:
    keys = sorted(topics)
    heldout = [topics[k] for i, k in enumerate(keys) if i % 4 == 0]
    calib = [topics[k] for i, k in enumerate(keys) if i % 4 != 0]
    os.makedirs(os.path.join(out_dir, "tasks"), exist_ok=True)
    with open(os.path.join(out_dir, "calib.txt"), "w") as f:
        f.write("\n\n".join(calib))
    text = "\n\n".join(heldout).encode()[:HELDOUT_BYTES].decode("utf-8", "ignore")
    with open(os.path.join(out_dir, "heldout.txt"), "w") as f:
        f.write(text)
    items = task_items(heldout)
    jsonl = os.path.abspath(os.path.join(out_dir, "tasks", "pydoc_ending.jsonl"))
    with open(jsonl, "w") as f:
        f.writelines(json.dumps(it) + "\n" for it in items)
    with open(os.path.join(out_dir, "tasks", "pydoc_ending.yaml"), "w") as f:
        f.write(YAML.format(jsonl=jsonl))
    print(f"{out_dir}: calib {sum(map(len, calib))} chars, heldout {len(text)} chars, task {len(items)} items")


if __name__ == "__main__":
    main(sys.argv[1])
