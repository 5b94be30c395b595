"""The training driver: config -> Ray Data streams -> TorchTrainer -> fit -> export.

    angle-ray train --config jobs/configs/quickstart.yaml train.epochs=1
    ray job submit --working-dir . -- python jobs/train.py --config jobs/configs/sts_finetune.yaml

With no cluster address (`--address` / RAY_ADDRESS) an embedded local Ray is started.
Re-running the same `train.name` under the same `train.storage_path` resumes from the last
checkpoint instead of starting over.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import ray
import ray.data
from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
from ray.train.torch import TorchConfig, TorchTrainer

from angle_ray.config import ConfigError, DatasetConfig, JobConfig, TrainConfig, dump_config
from angle_ray.data.formats import resolve_format
from angle_ray.data.location import expand_path
from angle_ray.data.stream import normalised_corpus, tokenized_epochs, validate_corpus
from angle_ray.mining.refresher import start_refresher
from angle_ray.mining.training_setup import prepare_mining, stop_refresher
from angle_ray.models.backbone import load_tokenizer
from angle_ray.train.final_model import FinalModel, choose_checkpoint, export_final
from angle_ray.train.loop import train_loop_per_worker
from angle_ray.train.plan import NegativesPlan, StreamPlan, WorkerPlan, load_dev
from angle_ray.train.progress import ProgressCallback, plot_curves
from angle_ray.train.worker_logs import WORKER_ENV_VARS


@dataclass
class TrainRun:
    run_dir: Path
    model_dir: Path | None
    checkpoint_dir: str | None
    metrics: dict
    total_steps: int
    final: FinalModel | None = None  # which checkpoint was exported; writes the model cards


def init_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Connect to a cluster (address or RAY_ADDRESS) or start an embedded local Ray.

    On a cluster the job's own runtime_env applies (cluster/runtime_env.yaml); Ray refuses to
    merge a second env that names the same variables, so none is passed there.
    """
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
    else:
        # the dashboard (on 127.0.0.1) also serves the state API Ray Train's cleanup polls
        ray.init(num_cpus=num_cpus, log_to_driver=True,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})


def with_expanded_paths(cfg: JobConfig) -> JobConfig:
    """`{data_dir}` filled in and local paths made absolute (workers have another cwd)."""
    data = [d.model_copy(update={"path": expand_path(d.path)}) for d in cfg.data]
    ev = cfg.eval
    if ev.dev is not None:
        ev = ev.model_copy(update={"dev": ev.dev.model_copy(update={"path": expand_path(ev.dev.path)})})
    if ev.retrieval_dev is not None:
        ev = ev.model_copy(update={"retrieval_dev": ev.retrieval_dev.model_copy(
            update={"path": expand_path(ev.retrieval_dev.path)})})
    mining = cfg.mining
    if mining is not None:
        mining = mining.model_copy(update={"beir": expand_path(mining.beir)})
    return cfg.model_copy(update={"data": data, "eval": ev, "mining": mining})


def run_dir_of(cfg: JobConfig) -> Path:
    return Path(cfg.train.storage_path).expanduser().resolve() / cfg.train.name


def _check_stream(i: int, ds_cfg: DatasetConfig):
    """Validate one corpus (one streaming pass); returns its StreamPlan and normalised rows."""
    fmt = resolve_format(ds_cfg)
    normalised = normalised_corpus(ds_cfg, fmt)
    check = validate_corpus(ds_cfg, fmt, normalised)
    print(f"[angle-ray] data {i}: format {fmt}, {check.summary()}", flush=True)
    return StreamPlan(name=f"train_{i}", fmt=fmt, weight=ds_cfg.weight,
                      num_negatives=ds_cfg.num_negatives, rows=check.rows,
                      loss=dict(ds_cfg.loss)), normalised


def _passes(t: TrainConfig, stream: StreamPlan, streams: list[StreamPlan], total_steps: int,
            global_batch: int) -> int:
    """Passes over a corpus enough for its share of the planned steps (+1 for slack if mixed)."""
    total_weight = sum(s.weight for s in streams)
    needed = total_steps * stream.weight / total_weight * global_batch
    passes = max(1, int(-(-needed // stream.rows)) + (1 if len(streams) > 1 else 0))
    return max(passes, t.epochs) if len(streams) == 1 and not t.max_steps else passes


def plan_streams(cfg: JobConfig) -> tuple[dict, list[StreamPlan], int]:
    """Validate every corpus in one streaming pass and build its tokenised Ray Dataset.

    Returns (datasets for the trainer by stream name, stream plans, total steps).
    """
    if not cfg.data:
        raise ConfigError("config has no `data:` entries to train on")
    t = cfg.train
    max_workers = t.num_workers if isinstance(t.num_workers, int) else t.num_workers[1]
    global_batch = t.batch_size * max_workers
    checked = [_check_stream(i, ds_cfg) for i, ds_cfg in enumerate(cfg.data)]
    streams = [s for s, _ in checked]
    steps_per_epoch = sum(max(1, s.rows // global_batch) for s in streams)
    total_steps = t.max_steps or t.epochs * steps_per_epoch
    datasets = {
        s.name: tokenized_epochs(normalised, ds_cfg, cfg.model, s.fmt,
                                 _passes(t, s, streams, total_steps, global_batch), t.seed)
        for (s, normalised), ds_cfg in zip(checked, cfg.data)}
    return datasets, streams, total_steps


def plan_workers(cfg: JobConfig, neg_dir: Path | None) -> tuple[dict, WorkerPlan]:
    """The trainer's datasets and the plan every worker gets (`angle_ray.train.plan`)."""
    datasets, streams, total_steps = plan_streams(cfg)
    tok = load_tokenizer(cfg.model)
    negatives = None
    if neg_dir is not None:  # prepare_mining put the mined pairs stream first
        negatives = NegativesPlan(stream=0, dir=str(neg_dir), mining=cfg.mining)
    return datasets, WorkerPlan(streams=streams, total_steps=total_steps,
                                pad_id=tok.pad_token_id, left_pad=tok.padding_side == "left",
                                dev=load_dev(cfg), negatives=negatives)


def build_trainer(cfg: JobConfig, datasets: dict, plan: WorkerPlan,
                  callbacks: list | None = None) -> TorchTrainer:
    t = cfg.train
    run_dir = run_dir_of(cfg)
    num_workers = t.num_workers if isinstance(t.num_workers, int) else tuple(t.num_workers)
    resources = {"CPU": t.cpus_per_worker, **t.resources_per_worker}
    if t.use_gpu:
        resources["GPU"] = 1
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"job": cfg.model_dump(mode="json"), "plan": plan},
        scaling_config=ScalingConfig(num_workers=num_workers, use_gpu=t.use_gpu,
                                     resources_per_worker=resources,
                                     placement_strategy=t.placement_strategy),
        torch_config=TorchConfig(backend="nccl" if t.use_gpu else "gloo"),
        datasets=datasets,
        run_config=RunConfig(
            name=t.name,
            storage_path=str(run_dir.parent),
            failure_config=FailureConfig(max_failures=t.max_failures),
            checkpoint_config=CheckpointConfig(
                num_to_keep=t.keep_checkpoints,
                checkpoint_score_attribute="dev_metric" if plan.dev is not None else None,
                checkpoint_score_order="max"),
            callbacks=[ProgressCallback(str(run_dir)), *(callbacks or [])],
            worker_runtime_env={"env_vars": WORKER_ENV_VARS},
        ),
    )


def _fit(cfg: JobConfig, datasets: dict, plan: WorkerPlan, callbacks: list | None, run_dir: Path):
    """Fit the trainer, with the ANCE refresher beside it when the job refreshes negatives."""
    refresher = None
    if plan.negatives is not None and cfg.mining.dynamic:
        refresher = start_refresher(cfg, run_dir, Path(plan.negatives.dir))
    try:
        result = build_trainer(cfg, datasets, plan, callbacks).fit()
    finally:
        if refresher is not None:
            stop_refresher(*refresher, run_dir)
    if result.error:
        raise result.error
    return result


def run_training(cfg: JobConfig, address: str | None = None, callbacks: list | None = None) -> TrainRun:
    """Fit the job and write the model folder(s); returns where everything landed.

    `callbacks`: extra Ray Train callbacks (a Tune sweep passes its `TuneReportCallback`).
    """
    cfg = with_expanded_paths(cfg)
    init_ray(address)
    ctx = ray.data.DataContext.get_current()
    ctx.execution_options.preserve_order = True  # same seed, same batches
    ctx.enable_progress_bars = False

    run_dir = run_dir_of(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    dump_config(cfg, run_dir / "config.yaml")
    cfg, neg_dir = prepare_mining(cfg, run_dir)  # no-op without a `mining:` section
    datasets, plan = plan_workers(cfg, neg_dir)
    print(f"[angle-ray] {plan.total_steps} steps, batch {cfg.train.batch_size} x "
          f"{cfg.train.num_workers} worker(s); run folder {run_dir}", flush=True)
    result = _fit(cfg, datasets, plan, callbacks, run_dir)
    plot_curves(run_dir)
    chosen = choose_checkpoint(result.best_checkpoints or [], (result.checkpoint, result.metrics))
    final = export_final(cfg, plan.streams, chosen, run_dir)
    return TrainRun(run_dir=run_dir, model_dir=final.model_dir if final else None,
                    checkpoint_dir=result.checkpoint.path if result.checkpoint else None,
                    metrics=dict(result.metrics or {}), total_steps=plan.total_steps, final=final)

