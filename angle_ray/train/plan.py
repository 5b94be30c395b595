"""What the driver hands every training worker besides the job config: the worker plan.

    plan = WorkerPlan(streams=[StreamPlan("train_0", "A", ...)], total_steps=720, pad_id=0,
                      left_pad=False, dev=load_dev(cfg), negatives=None)
    TorchTrainer(train_loop_per_worker,
                 train_loop_config={"job": cfg.model_dump(mode="json"), "plan": plan}, ...)

The plan holds only what the driver worked out (stream names and sizes, step count, padding,
the dev set, where the negatives are published); train settings stay in the job config
(`job.train`), which every worker reads. Plain dataclasses (and `MiningConfig` itself), so the
plan travels through Ray's train_loop_config by pickle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from angle_ray.config import JobConfig, MiningConfig
from angle_ray.data.beir import load_beir, split_qrels_by_query
from angle_ray.data.formats import read_records
from angle_ray.data.roles import LABEL, TEXT1, TEXT2, roles


@dataclass(frozen=True)
class StreamPlan:
    """One training dataset as a Ray Data stream named `name` (`get_dataset_shard(name)`)."""

    name: str
    fmt: str  # A, B or C
    weight: float  # share of steps when several datasets are mixed
    num_negatives: int  # Format C: negatives per query
    rows: int  # usable rows (validation pass)
    loss: dict[str, float] = field(default_factory=dict)  # this dataset's loss overrides

    @property
    def roles(self) -> list[str]:
        return roles(self.fmt, self.num_negatives)


@dataclass(frozen=True)
class StsDev:
    """STS dev pairs: the dev metric is Spearman x100."""

    text1: list[str]
    text2: list[str]
    gold: list[float]


@dataclass(frozen=True)
class RetrievalDev:
    """A BEIR corpus with its dev queries: the dev metric is nDCG@10 x100."""

    corpus: dict[str, str]
    queries: dict[str, str]
    qrels: dict[str, dict[str, int]]


DevSet = StsDev | RetrievalDev


@dataclass(frozen=True)
class NegativesPlan:
    """Hard negatives (mining): stream `stream` gets k negatives per query from `dir`."""

    stream: int  # index into WorkerPlan.streams of the mined (query, positive) stream
    dir: str  # where the versions are published (negatives/v<step>/)
    mining: MiningConfig


@dataclass(frozen=True)
class WorkerPlan:
    streams: list[StreamPlan]
    total_steps: int
    pad_id: int
    left_pad: bool  # last-token pooling pads on the left
    dev: DevSet | None = None
    negatives: NegativesPlan | None = None


def load_dev(cfg: JobConfig) -> DevSet | None:
    """The dev set shipped to the workers: STS pairs, or a BEIR corpus with its dev queries."""
    if cfg.eval.retrieval_dev is not None:
        r = cfg.eval.retrieval_dev
        data = load_beir(r.path, split=r.split)
        _, dev = split_qrels_by_query(data.qrels, r.dev_fraction, r.seed)
        qids = sorted(dev)[: r.max_queries] if r.max_queries else sorted(dev)
        return RetrievalDev(corpus=data.corpus, queries={q: data.queries[q] for q in qids},
                            qrels={q: dev[q] for q in qids})
    if cfg.eval.dev is None:
        return None
    dev_cfg = cfg.eval.dev
    rows = list(read_records(dev_cfg if dev_cfg.format != "auto"
                             else dev_cfg.model_copy(update={"format": "A"})))
    return StsDev(text1=[r[TEXT1] for r in rows], text2=[r[TEXT2] for r in rows],
                  gold=[r[LABEL] for r in rows])
