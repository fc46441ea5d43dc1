"""Categories named in other languages: what the English text encoder makes of them (``foreign_script`` and the
``unreadable_category`` / ``unreadable_query`` warnings of ``service/engine.py``).

    .venv/bin/python -m service.benchmarks.category_languages [--data-root ../shared/data] [--artifact DIR]

Scores the dr_sh_600 test split (128 photographs from a Shanghai clinic; 72 with DR) zero-shot with "normal"
against "diabetic retinopathy" in English and in eight translations (one softmax of two), and prints how many
eyes each calls DR, the recall of each class and the balanced accuracy, beside the word pieces the tokenizer
reads for each name.
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from PIL import Image

from model.runtime import KeepfitRuntime
from model.tokenizer import foreign_script
from service.benchmarks._common import DEFAULT_DATA, ROOT

# (normal, diabetic retinopathy) as a clinic writing in that language might name them
LANGUAGES: dict[str, tuple[str, str]] = {
    "English": ("normal", "diabetic retinopathy"),
    "German": ("normal", "diabetische Retinopathie"),
    "French": ("normal", "rétinopathie diabétique"),
    "Spanish": ("sano", "retinopatía diabética"),
    "Portuguese": ("normal", "retinopatia diabética"),
    "Chinese": ("正常", "糖尿病视网膜病变"),
    "Japanese": ("正常", "糖尿病網膜症"),
    "Arabic": ("طبيعي", "اعتلال الشبكية السكري"),
    "Russian": ("норма", "диабетическая ретинопатия"),
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA)
    p.add_argument("--artifact", type=Path, default=ROOT / "artifacts" / "keepfit-v2-small")
    args = p.parse_args(argv)
    runtime = KeepfitRuntime.from_artifact(args.artifact)
    root = args.data_root / "dr_sh_600"
    with (root / "labels.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"].strip() == "test"]
    truth = np.array([0 if r["dr_grade"].startswith("no ") else 1 for r in rows])
    embeddings = []
    for i in range(0, len(rows), 16):
        images = [Image.open(root / r["path"]).convert("RGB") for r in rows[i : i + 16]]
        embeddings.append(runtime.encode_pixels(runtime.preprocess(images)).embeddings)
    emb = np.concatenate(embeddings)
    print(f"dr_sh_600 test split: {len(truth)} photographs, {int(truth.sum())} with DR; normal vs DR, flat softmax")
    print(f"{'language':<11} {'calls DR':>8} {'normal':>7} {'DR':>6} {'bal.acc':>7}  warned  word pieces")
    for language, names in LANGUAGES.items():
        probs, _ = runtime.predict(emb, list(names), "CFP", "flat")
        called = probs.argmax(1)
        recall = [float((called[truth == c] == c).mean()) for c in (0, 1)]
        warned = any(foreign_script(n) is not None for n in names)
        pieces = " | ".join(" ".join(runtime.tokenizer.pieces(n)) for n in names)
        print(f"{language:<11} {called.mean():8.2f} {recall[0]:7.2f} {recall[1]:6.2f} {np.mean(recall):7.3f}  "
              f"{'yes' if warned else 'no':<6}  {pieces}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
