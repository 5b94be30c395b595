"""The `angle-ray` command line.

    angle-ray train  --config jobs/configs/quickstart.yaml train.epochs=1
    angle-ray eval   --model all-MiniLM-L6-v2 --tasks stsb,sickr
    angle-ray export --model runs/quickstart/model --output exported/ [--onnx]
    angle-ray embed  --model runs/quickstart/model --input corpus.jsonl --output corpus.parquet
    angle-ray serve  --model runs/quickstart/model --port 8000 --replicas 2
    angle-ray mine   --config JOB.yaml --output negatives.jsonl [--model PATH]
    angle-ray qa-hard --config jobs/configs/qa_hard.yaml [--qa FILE | --from-beir DIR] --loss cln
    angle-ray sweep  --space tune_spaces/stsb_loss_weights.yaml [--config JOB.yaml] [key=value ...]

A mistake in what was given (a config key, a data row, a model path, a task name) prints one
`error: ...` line and exits with code 2; `angle-ray --debug ...` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import get_args

from angle_ray.config import ConfigError, JobConfig, ModelConfig, load_config
from angle_ray.data.location import expand_path
from angle_ray.errors import UserError
from angle_ray.eval.tasks import default_data_dir, resolve_tasks
from angle_ray.version import __version__

# The command functions import what pulls in torch, Ray or pyarrow (models, eval runner, training
# driver, mining, workflows, sweeps) when they run, so `angle-ray --help` and argument errors
# answer in about a second.

USER_ERROR_EXIT = 2  # as argparse's own usage errors
RAY_ADDRESS_HELP = "Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)"
DTYPE_HELP = "inference precision: fp32, or bf16 autocast (default: fp32)"
POOLINGS = get_args(ModelConfig.model_fields["pooling"].annotation)  # without importing torch


def cmd_eval(args: argparse.Namespace) -> int:
    data_dir = Path(args.data_dir) if args.data_dir else default_data_dir()
    resolve_tasks(args.tasks, data_dir)  # fail on unknown names before loading anything
    from angle_ray.eval.runner import markdown_table, run_tasks, write_json
    from angle_ray.models.loader import load_model

    model = load_model(args.model, pooling=args.pooling, max_length=args.max_length,
                       is_llm=args.is_llm, dtype=args.dtype)
    model = _cut_model(model, args.layer, args.dim)
    results = run_tasks(model, args.tasks, data_dir, batch_size=args.batch_size, dtype=args.dtype)
    print(markdown_table(results))
    out = args.output or "eval_results.json"
    write_json(results, out, args.model)
    print(f"\nwrote {out}")
    return 0


def _cut_model(model, layer: int | None, dim: int | None):
    """--layer / --dim: the model cut to its first `layer` layers, embedding `dim` dimensions."""
    from angle_ray.models.truncate import cut_to_layer, num_layers

    depth = num_layers(model)
    if layer is not None and not 1 <= layer <= depth:
        raise UserError(f"--layer {layer}: the model has layers 1..{depth}")
    if dim is not None and not 1 <= dim <= model.embedding_dim:
        raise UserError(f"--dim {dim}: the embedding has 1..{model.embedding_dim} dimensions")
    model = cut_to_layer(model, layer) if layer is not None else model
    return model.set_output_dim(dim) if dim is not None else model


def cmd_export(args: argparse.Namespace) -> int:
    if args.no_int8 and not args.onnx:
        raise UserError("--no-int8 goes with --onnx (it leaves out the int8 ONNX model)")
    from angle_ray.models.export import export_hf, export_sentence_transformers
    from angle_ray.models.loader import load_model
    from angle_ray.train.final_model import export_cards

    model = load_model(args.model, pooling=args.pooling, max_length=args.max_length,
                       is_llm=args.is_llm)
    model = _cut_model(model, args.layer, None)
    out = Path(args.output)
    folders = [export_hf(model, out / "hf")]
    print(f"wrote HF model folder {out / 'hf'}")
    st_dir = None
    if not args.no_sentence_transformers:
        st_dir = export_sentence_transformers(model, out / "sentence-transformers")
        folders.append(st_dir)
        print(f"wrote sentence-transformers folder {st_dir}")
    if args.onnx:
        from angle_ray.models.onnx_export import export_onnx

        folders.append(export_onnx(model, out / "onnx", quantize_int8=not args.no_int8))
        print(f"wrote ONNX folder {out / 'onnx'} (onnx/model.onnx"
              f"{'' if args.no_int8 else ', onnx/model_int8.onnx'})")
    export_cards(args.model, model, folders, st_dir)  # a README.md model card in each folder
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    cfg = load_config(args.config, args.overrides)  # before the heavy imports: config errors first
    if args.eval_tasks:
        resolve_tasks(args.eval_tasks, default_data_dir())  # unknown names before training
    from angle_ray.train.driver import run_training

    before = _eval_quietly(cfg.model.name_or_path, cfg, args.eval_tasks) if args.eval_tasks else None
    run = run_training(cfg, address=args.address)
    print(f"[angle-ray] run folder: {run.run_dir}")
    if args.eval_tasks and run.final is not None:
        from angle_ray.eval.runner import headline

        after = _eval_quietly(str(run.model_dir), cfg, args.eval_tasks)
        run.final.write_cards(eval_table=after)  # the cards now carry the after-training figures
        print("\n| model | " + " | ".join(after) + " |")
        print("|---|" + "---|" * len(after))
        for label, figures in (("before training", before), ("after training", after)):
            print(f"| {label} | " + " | ".join(f"{headline(t, figures[t]):.2f}" for t in after) + " |")
    return 0


def _eval_quietly(model_path: str, cfg: JobConfig, tasks: str) -> dict[str, dict[str, float]]:
    """Task -> metrics of the job's starting model (built as the job builds it) or its result."""
    from angle_ray.eval.runner import run_tasks
    from angle_ray.models.loader import load_model

    return run_tasks(load_model(model_path, base=cfg.model), tasks)["tasks"]


def cmd_qa_hard(args: argparse.Namespace) -> int:
    """Evaluate on QA rows, train on the ones the model gets wrong, evaluate again (a table)."""
    cfg = load_config(args.config, args.overrides)
    source = args.qa or args.from_beir or (cfg.data[0].path if cfg.data else None)
    if source is None:
        raise ConfigError(f"{args.config}: give --qa FILE or --from-beir DIR (or a `data:` entry "
                          "naming one)")
    from angle_ray.data.qa import read_qa, write_qa
    from angle_ray.train.driver import run_dir_of
    from angle_ray.workflows.qa_hard import (
        is_beir_folder,
        make_qa_from_beir,
        markdown_table,
        run_qa_hard,
    )

    path = expand_path(source)
    if args.from_beir or (not args.qa and is_beir_folder(path)):
        print(f"[angle-ray] qa-hard: building QA rows from {path} ({args.candidates} BM25 "
              "candidates per question)", flush=True)
        rows = make_qa_from_beir(path, args.candidates, seed=args.seed, max_questions=args.max_questions)
        print(f"[angle-ray] qa-hard: wrote {write_qa(rows, run_dir_of(cfg) / 'qa.jsonl')}", flush=True)
    else:
        mapping = cfg.data[0].column_rename_mapping if cfg.data else {}  # data.0 renames
        rows = read_qa(path, mapping)[: args.max_questions]
    result = run_qa_hard(cfg, rows, top_k=args.top_k, loss=args.loss, max_negatives=args.negatives,
                         eval_fraction=args.eval_fraction, seed=args.seed, address=args.address)
    print("\n" + markdown_table(result))
    print(f"\n[angle-ray] wrote {result.json_path.with_suffix('.md')} and {result.json_path}")
    return 0


def cmd_mine(args: argparse.Namespace) -> int:
    """Static hard negatives from the job's `mining:` section (BM25 or a model) to one file."""
    cfg = load_config(args.config, args.overrides)
    if cfg.mining is None:
        raise ConfigError(f"{args.config} has no `mining:` section; add one (e.g. mining: {{beir: "
                          "\"{data_dir}/scifact\"}), see README 'Mining hard negatives (static)'")
    from angle_ray.mining.static import mine_static, output_format, summary, write_negatives

    rows, manifest = mine_static(cfg.mining, model=args.model, batch_size=args.batch_size,
                                 dtype=args.dtype)
    out = write_negatives(rows, args.output, output_format(args.output, cfg.mining.output_format))
    print(summary(manifest, len(rows), out))
    return 0


def cmd_embed(args: argparse.Namespace) -> int:
    """A corpus -> Parquet shards of embeddings (+ a FAISS index) on a Ray Data actor pool."""
    from angle_ray.workflows.embed_corpus import run_embed

    return run_embed(args)


def cmd_serve(args: argparse.Namespace) -> int:
    """The HTTP embedding endpoint on Ray Serve, until Ctrl-C / SIGTERM."""
    from angle_ray.serve.server import run_serve

    return run_serve(args)


def cmd_sweep(args: argparse.Namespace) -> int:
    """Ray Tune over the training driver; the same command again resumes an unfinished sweep."""
    from angle_ray.tune.sweep import plan_sweep, run_sweep

    flags = {"num_samples": args.num_samples, "max_concurrent_trials": args.max_concurrent,
             "max_failures": args.max_failures, "search": args.search, "scheduler": args.scheduler,
             "metric": args.metric, "mode": args.mode, "seed": args.seed,
             "trial_cpus": args.trial_cpus}
    sweep = plan_sweep(args.space, args.config, args.overrides, args.output, **flags)
    outcome = run_sweep(sweep, address=args.address, resume=True if args.resume else None)
    report = outcome.report
    print(f"\n[angle-ray] sweep folder: {outcome.folder}\n{report.summary()}")
    for what, path in report.files.items():
        print(f"  {what}: {path}")
    if outcome.interrupted:
        print(f"[angle-ray] interrupted with {report.unfinished} unfinished trial(s); run the same "
              "command again to resume", file=sys.stderr)
        return 130
    return 0


# --- arguments ------------------------------------------------------------------------------


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="all-MiniLM-L6-v2",
                   help="angle-ray model folder, sentence-transformers or HF folder, or hub id "
                        "(default: all-MiniLM-L6-v2, offline)")
    p.add_argument("--pooling", default=None, choices=POOLINGS,
                   help="pooling of a plain HF model (default: the folder's own, else mean; last "
                        "with --is-llm); an angle-ray folder keeps the pooling it was trained with")
    p.add_argument("--max-length", type=int, default=None,
                   help="tokens per text (default: the model's own, else 128)")
    p.add_argument("--is-llm", action="store_true", help="causal LM backbone (last-token pooling)")


def _add_job_args(p: argparse.ArgumentParser, example: str) -> None:
    p.add_argument("--config", required=True, help=f"job YAML, e.g. {example}")
    p.add_argument("--address", default=None, help=RAY_ADDRESS_HELP)


def _add_train_parser(sub) -> None:
    p = sub.add_parser("train", help="train an embedding model with Ray Train (+ DeepSpeed)")
    _add_job_args(p, "jobs/configs/quickstart.yaml")
    p.add_argument("--eval-tasks", default=None,
                   help="evaluate before and after training on these tasks, e.g. stsb")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides")
    p.set_defaults(func=cmd_train)


def _add_eval_parser(sub) -> None:
    p = sub.add_parser("eval", help="STS Spearman / retrieval metrics of a model")
    _add_model_args(p)
    p.add_argument("--tasks", default="stsb",
                   help="comma list of stsb,sickr,sts12..sts16,scifact, beir:DIR (dev split of its "
                        "train qrels) or beir:DIR:SPLIT (all of qrels/SPLIT.tsv), or 'all' "
                        "(default: stsb)")
    p.add_argument("--data-dir", default=None, help="evaluation data folder (see angle_ray/eval/tasks.py)")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help=DTYPE_HELP)
    p.add_argument("--output", default=None, help="JSON results path (default: eval_results.json)")
    p.add_argument("--layer", type=int, default=None,
                   help="evaluate the model cut to its first N layers (ESE; default: all)")
    p.add_argument("--dim", type=int, default=None,
                   help="evaluate the first D embedding dimensions (ESE / Matryoshka; default: all)")
    p.set_defaults(func=cmd_eval)


def _add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="write HF and sentence-transformers folders (LoRA merged)")
    _add_model_args(p)
    p.add_argument("--output", required=True,
                   help="folder to write: <output>/hf and <output>/sentence-transformers")
    p.add_argument("--no-sentence-transformers", action="store_true",
                   help="write the HF folder only")
    p.add_argument("--onnx", action="store_true",
                   help="also write <output>/onnx: the model folder plus onnx/model.onnx (fp32) and "
                        "onnx/model_int8.onnx (needs the onnx extra: pip install 'angle-ray[onnx]')")
    p.add_argument("--no-int8", action="store_true", help="with --onnx: leave out the int8 model")
    p.add_argument("--layer", type=int, default=None,
                   help="export the model cut to its first N layers (ESE; default: all)")
    p.set_defaults(func=cmd_export)


def _add_qa_hard_parser(sub) -> None:
    p = sub.add_parser("qa-hard", help="QA top-1/3/5 before and after training on the hard examples")
    _add_job_args(p, "jobs/configs/qa_hard.yaml")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--qa", default=None, help="QA file/folder: {question, contexts, gold} rows "
                        "(default: the job's data.0.path, a QA file or a BEIR folder)")
    source.add_argument("--from-beir", default=None, help="build the QA rows from this BEIR folder")
    p.add_argument("--candidates", type=int, default=20, help="contexts per question (BEIR; BM25)")
    p.add_argument("--top-k", type=int, default=1, help="hard = gold not in the top k (default 1)")
    p.add_argument("--loss", choices=["cln", "margin"], default="cln",
                   help="cln: contrastive with negatives; margin: margin ranking (loss.margin)")
    p.add_argument("--negatives", type=int, default=3, help="negatives per hard example (max)")
    p.add_argument("--eval-fraction", type=float, default=0.2, help="QA rows held out of training")
    p.add_argument("--seed", type=int, default=0, help="held-out split and context shuffle")
    p.add_argument("--max-questions", type=int, default=None, help="use the first N questions only")
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides, e.g. train.max_steps=40")
    p.set_defaults(func=cmd_qa_hard)


def _add_mine_parser(sub) -> None:
    p = sub.add_parser("mine", help="mine static hard negatives (BM25 or a model) to a Format C file")
    p.add_argument("--config", required=True, help="job YAML with a `mining:` section")
    p.add_argument("--output", required=True, help="negatives.jsonl or negatives.parquet")
    p.add_argument("--model", default=None,
                   help="mine with this model (angle-ray / sentence-transformers / HF folder, hub id, "
                        "all-MiniLM-L6-v2) instead of mining.warm_start")
    p.add_argument("--batch-size", type=int, default=64, help="texts per forward pass (default: 64)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help=DTYPE_HELP)
    p.add_argument("overrides", nargs="*", help="key.sub=value config overrides, e.g. mining.k=8")
    p.set_defaults(func=cmd_mine)


class CommandParser(argparse.ArgumentParser):
    """A command's parser; ``deferred_options`` adds the options of a command whose module
    imports Ray (embed, serve) when that command is parsed or its help shown, so the other
    commands and `angle-ray --help` do not wait for Ray to import."""

    def __init__(self, *args, deferred_options: Callable[[argparse.ArgumentParser], None] | None = None,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.deferred_options = deferred_options

    def load_options(self) -> None:
        if self.deferred_options is not None:
            add_options, self.deferred_options = self.deferred_options, None
            add_options(self)

    def parse_known_args(self, args=None, namespace=None):
        self.load_options()
        return super().parse_known_args(args, namespace)

    def format_help(self) -> str:
        self.load_options()
        return super().format_help()


def _embed_options(p: argparse.ArgumentParser) -> None:
    from angle_ray.workflows.embed_corpus import add_embed_args

    add_embed_args(p)


def _serve_options(p: argparse.ArgumentParser) -> None:
    from angle_ray.serve.server import add_serve_args

    add_serve_args(p)


def _add_embed_parser(sub) -> None:
    p = sub.add_parser("embed", deferred_options=_embed_options,
                       help="embed a corpus (file, folder, BEIR) to Parquet shards (+ FAISS index)")
    p.set_defaults(func=cmd_embed)


def _add_serve_parser(sub) -> None:
    p = sub.add_parser("serve", deferred_options=_serve_options,
                       help="serve a model over HTTP (POST /v1/embeddings) with Ray Serve")
    p.set_defaults(func=cmd_serve)


def _add_sweep_parser(sub) -> None:
    p = sub.add_parser("sweep", help="Ray Tune search over a job's config keys (ASHA/PBT, random/TPE)")
    p.add_argument("--space", required=True, help="search space YAML, e.g. tune_spaces/stsb_loss_weights.yaml")
    p.add_argument("--config", default=None, help="base job YAML (default: the space file's `config:`)")
    p.add_argument("--output", default=None,
                   help="sweep folder (default: <train.storage_path>/sweeps/<space name>)")
    p.add_argument("--resume", action="store_true",
                   help="require an unfinished sweep in the folder (it resumes anyway when one is there)")
    p.add_argument("--address", default=None, help=RAY_ADDRESS_HELP)
    p.add_argument("--num-samples", type=int, default=None, help="trials to run (default: the space's)")
    p.add_argument("--max-concurrent", type=int, default=None, help="trials running at once")
    p.add_argument("--max-failures", type=int, default=None, help="retries of a failed trial")
    p.add_argument("--trial-cpus", type=float, default=None,
                   help="CPUs of each trial's Tune function (its workers: train.cpus_per_worker)")
    p.add_argument("--search", choices=["random", "optuna"], default=None,
                   help="searcher: random, or optuna (TPE) (default: the space's)")
    p.add_argument("--scheduler", choices=["asha", "pbt", "fifo"], default=None,
                   help="trial scheduler (default: the space's)")
    p.add_argument("--metric", default=None, help="reported metric to optimise (default dev_metric)")
    p.add_argument("--mode", choices=["max", "min"], default=None,
                   help="maximise or minimise --metric (default: the space's)")
    p.add_argument("--seed", type=int, default=None, help="seed of the searcher")
    p.add_argument("overrides", nargs="*", help="key.sub=value overrides of the base job")
    p.set_defaults(func=cmd_sweep)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="angle-ray", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"angle-ray {__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback of an error instead of one `error:` line")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND",
                                parser_class=CommandParser,
                                help="what to run (`angle-ray COMMAND --help` for its options)")
    for add in (_add_train_parser, _add_eval_parser, _add_export_parser, _add_embed_parser,
                _add_serve_parser, _add_qa_hard_parser, _add_mine_parser, _add_sweep_parser):
        add(sub)
    return parser


# --- errors ---------------------------------------------------------------------------------


def _wrapped(err: BaseException) -> Iterator[BaseException]:
    """The exceptions ``err`` carries: Ray's task / Train wrappers, then Python's own chain.

    ray.exceptions.RayTaskError keeps the remote exception in ``.cause``; Ray Train 2.x raises
    WorkerGroupError (``.worker_failures``: rank -> exception, each a UserExceptionWithTraceback
    holding ``._base_exc``) or ControllerError (``.controller_failure``)."""
    found = [getattr(err, "cause", None), getattr(err, "_base_exc", None),
             getattr(err, "controller_failure", None),
             *(getattr(err, "worker_failures", None) or {}).values(), err.__cause__, err.__context__]
    return (e for e in found if isinstance(e, BaseException))


def _is_ray_wrapper(err: BaseException) -> bool:
    # a RayTaskError re-raised as its cause's class is both a UserError and a wrapper whose text
    # is the remote traceback; only a process that imported Ray can hold one
    ray_exceptions = sys.modules.get("ray.exceptions")
    return ray_exceptions is not None and isinstance(err, ray_exceptions.RayError)


def find_user_error(err: BaseException) -> BaseException | None:
    """The user-fixable error inside ``err`` (itself, or one Ray wrapped), else None."""
    queue, seen = [err], set()
    while queue:
        current = queue.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, (UserError, FileNotFoundError, NotADirectoryError)) and not (
                _is_ray_wrapper(current)):
            return current
        queue.extend(_wrapped(current))
    return None


def _one_line(err: BaseException) -> str:
    """The message on one line: a heading and its indented items joined ("a: b; c")."""
    if isinstance(err, OSError) and err.filename is not None:  # not "[Errno 2] No such file..."
        return f"{err.filename}: {err.strerror or err}"
    head, *items = [line.strip() for line in str(err).splitlines() if line.strip()] or [""]
    return f"{head} {'; '.join(items)}" if items else head


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except Exception as err:
        found = find_user_error(err)
        if found is None or args.debug:
            raise
        print(f"error: {_one_line(found)}", file=sys.stderr)
        return USER_ERROR_EXIT


if __name__ == "__main__":
    sys.exit(main())
