"""ESE: STS-B test Spearman x100 of models cut to a layer and an embedding size, side by side.

    source .venv/bin/activate && export HF_HUB_OFFLINE=1
    python bench/ese_table.py runs/stsb-ese/model runs/stsb-plain/model
    python bench/ese_table.py all-MiniLM-L6-v2 --layers 2 6 --dims 64 384 --pairs 200   # smoke run

For each model (a folder or name ``load_model`` reads) and each layer, the unique test sentences
are embedded once with the first ``layer`` transformer layers (``encode(..., layer=...)``, what
``cut_to_layer`` keeps), then each size keeps the first ``dim`` dimensions; the score is the
Spearman correlation x100 of the pairs' cosine with the gold scores (as ``angle-ray eval``). The
same cut of a trained model is ``angle-ray eval --model DIR --layer L --dim D``.

Prints one Markdown table: a row per (layer, dim), a column per model, and with two models the
difference of the first minus the second.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from angle_ray.eval.sts import cosine_rows, spearman_x100
from angle_ray.eval.tasks import default_data_dir, load_sts_task
from angle_ray.models.embedder import encode
from angle_ray.models.loader import load_model


def scores(model_path: str, data, layers: list[int], dims: list[int], batch_size: int) -> dict:
    """{(layer, dim): Spearman x100} for one model."""
    model = load_model(model_path)
    unique = list(dict.fromkeys([*data.text1, *data.text2]))
    index = {t: i for i, t in enumerate(unique)}
    rows1, rows2 = [index[t] for t in data.text1], [index[t] for t in data.text2]
    out = {}
    for layer in layers:
        emb = encode(model, unique, batch_size=batch_size, layer=layer, show_progress=False)
        for dim in dims:
            if dim > emb.shape[1]:
                raise SystemExit(f"--dims {dim}: {model_path} embeds {emb.shape[1]} dimensions")
            out[layer, dim] = spearman_x100(cosine_rows(emb[rows1, :dim], emb[rows2, :dim]), data.gold)
    return out


def markdown(models: list[str], results: list[dict], layers: list[int], dims: list[int]) -> str:
    names = [Path(m).parent.name if Path(m).name == "model" else m for m in models]
    diff = len(models) == 2
    header = ["layer", "dim", *names] + ([f"{names[0]} - {names[1]}"] if diff else [])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for layer in layers:
        for dim in dims:
            values = [r[layer, dim] for r in results]
            cells = [str(layer), str(dim), *(f"{v:.2f}" for v in values)]
            if diff:
                cells.append(f"{values[0] - values[1]:+.2f}")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("models", nargs="+", help="model folders or names (e.g. ESE-trained, then plain)")
    p.add_argument("--layers", type=int, nargs="+", default=[2, 4, 6])
    p.add_argument("--dims", type=int, nargs="+", default=[64, 128, 384])
    p.add_argument("--task", default="stsb", help="an STS task of angle-ray eval (default stsb)")
    p.add_argument("--pairs", type=int, default=None, help="first N test pairs only (smoke runs)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--data-dir", default=None, help="evaluation data folder")
    args = p.parse_args()
    data = load_sts_task(args.task, Path(args.data_dir) if args.data_dir else default_data_dir())
    if args.pairs:
        data.text1, data.text2, data.gold = data.text1[:args.pairs], data.text2[:args.pairs], data.gold[:args.pairs]
    results = [scores(m, data, args.layers, args.dims, args.batch_size) for m in args.models]
    print(f"{args.task} test Spearman x100 ({len(data.gold)} pairs)\n")
    print(markdown(args.models, results, args.layers, args.dims))


if __name__ == "__main__":
    main()
