"""The named evaluation tasks behind `angle-ray eval --tasks ...` and where their data lives.

Data is looked up in one folder (``--data-dir``, else ``$ANGLE_RAY_DATA_DIR``, else
``../shared/data`` next to the project) laid out like the project's shared data:

    stsb/test.jsonl                      STS-B test, Format A, labels 0-5
    sick_r/semeval2014/test.jsonl        SICK-R test (SemEval-2014 split), labels 1-5
    sts/STS12-en-test/ ... STS16-en-test SemEval STS folders (STS.input.* / STS.gs.*)
    scifact/                             BEIR layout; evaluated on a dev split of qrels/train.tsv

Any other BEIR-layout folder is a task too: ``beir:DIR`` (the same dev split of its
qrels/train.tsv as scifact) or ``beir:DIR:SPLIT`` (every judgement of qrels/SPLIT.tsv), e.g.
``--tasks beir:/data/nfcorpus:test``; its metrics are scifact's (nDCG@10, MRR@10, recall@k).

When a folder is missing and the network is allowed (HF_HUB_OFFLINE unset), STS-B, SICK-R and
STS12-16 fall back to their public Hugging Face copies (mteb/stsbenchmark-sts, mteb/sickr-sts,
mteb/sts12-sts ... mteb/sts16-sts).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from angle_ray.data.location import default_data_dir  # noqa: F401  (re-exported)
from angle_ray.errors import UserError

STS_YEARS = {f"sts{y}": f"STS{y}-en-test" for y in (12, 13, 14, 15, 16)}
SCIFACT_DEV_FRACTION = 0.2  # share of judged train queries held out as the dev split (beir:DIR too)
SCIFACT_SPLIT_SEED = 0
BEIR_PREFIX = "beir:"


class TaskError(UserError):
    """An unknown task, or a task whose data cannot be found (the message says what to set)."""


@dataclass
class StsData:
    text1: list[str]
    text2: list[str]
    gold: list[float]


def _missing(task: str, path: Path, hub_id: str | None = None) -> TaskError:
    if hub_id is None:
        hub = "there is no public copy to fall back to"
    elif os.environ.get("HF_HUB_OFFLINE", "0") == "1":
        hub = f"the public copy {hub_id} was not tried (HF_HUB_OFFLINE=1)"
    else:
        hub = f"the public copy {hub_id} could not be read from the Hugging Face hub"
    fallback = " or unset HF_HUB_OFFLINE to read the public copy" if hub_id else ""
    return TaskError(
        f"task {task!r}: data not found at {path} and {hub}. Set --data-dir (or "
        f"ANGLE_RAY_DATA_DIR) to a folder holding it (layout in angle_ray/eval/tasks.py){fallback}."
    )


def _hub_sts(task: str, hub_id: str) -> StsData | None:
    if os.environ.get("HF_HUB_OFFLINE", "0") == "1":
        return None
    try:
        import datasets

        ds = datasets.load_dataset(hub_id, split="test")
    except Exception:  # noqa: BLE001  unreachable hub or dataset moved: the caller raises the clear error
        return None
    return StsData(list(ds["sentence1"]), list(ds["sentence2"]), [float(s) for s in ds["score"]])


def _jsonl_sts(task: str, path: Path, label_range: tuple[float, float], hub_id: str) -> StsData:
    if not path.is_file():
        data = _hub_sts(task, hub_id)
        if data is None:
            raise _missing(task, path, hub_id)
        return data
    from angle_ray.config import DatasetConfig
    from angle_ray.data.formats import read_records

    rows = list(read_records(DatasetConfig(path=str(path), format="A", label_range=label_range)))
    return StsData([r["text1"] for r in rows], [r["text2"] for r in rows],
                   [r["label"] for r in rows])


def _semeval_sts(task: str, folder: Path) -> StsData:
    if not folder.is_dir():
        raise _missing(task, folder)
    from angle_ray.data.semeval import read_sts_folder

    pooled = StsData([], [], [])
    for pairs in read_sts_folder(str(folder)).values():
        for s1, s2, score in pairs:
            pooled.text1.append(s1)
            pooled.text2.append(s2)
            pooled.gold.append(score)
    return pooled


def load_sts_task(task: str, data_dir: Path) -> StsData:
    if task == "stsb":
        return _jsonl_sts(task, data_dir / "stsb" / "test.jsonl", (0.0, 5.0), "mteb/stsbenchmark-sts")
    if task == "sickr":
        return _jsonl_sts(task, data_dir / "sick_r" / "semeval2014" / "test.jsonl", (1.0, 5.0),
                          "mteb/sickr-sts")
    if task in STS_YEARS:
        for folder in (data_dir / "sts" / STS_YEARS[task], data_dir / STS_YEARS[task]):
            if folder.is_dir():
                return _semeval_sts(task, folder)
        hub_id = f"mteb/{task}-sts"
        data = _hub_sts(task, hub_id)
        if data is None:
            raise _missing(task, data_dir / "sts" / STS_YEARS[task], hub_id)
        return data
    raise TaskError(f"{task!r} is not an STS task")


STS_TASKS = ("stsb", "sickr", *STS_YEARS)
RETRIEVAL_TASKS = ("scifact",)
ALL_TASKS = (*STS_TASKS, *RETRIEVAL_TASKS)


def is_beir_task(task: str) -> bool:
    return task.lower().startswith(BEIR_PREFIX)


def is_retrieval_task(task: str) -> bool:
    return task in RETRIEVAL_TASKS or is_beir_task(task)


@dataclass
class BeirTask:
    folder: Path
    split: str | None  # None: the dev split of qrels/train.tsv

    @property
    def qrels(self) -> Path:
        return self.folder / "qrels" / f"{self.split or 'train'}.tsv"


def parse_beir_task(task: str) -> BeirTask:
    """`beir:DIR` or `beir:DIR:SPLIT` (a DIR that exists as written wins over a split suffix)."""
    spec = task[len(BEIR_PREFIX):].strip()
    if not spec:
        raise TaskError(f"task {task!r}: give a BEIR folder, as beir:DIR or beir:DIR:SPLIT")
    folder, _, split = spec.rpartition(":")
    if not folder or Path(spec).expanduser().is_dir():
        return BeirTask(Path(spec).expanduser(), None)
    return BeirTask(Path(folder).expanduser(), split or None)


def check_beir_task(task: str) -> BeirTask:
    """The parsed task, once its folder and qrels file are there (else a TaskError naming them)."""
    beir = parse_beir_task(task)
    if not beir.folder.is_dir():
        raise TaskError(f"task {task!r}: BEIR folder not found: {beir.folder}")
    if not beir.qrels.is_file():
        splits = sorted(p.stem for p in (beir.folder / "qrels").glob("*.tsv"))
        raise TaskError(f"task {task!r}: no qrels file {beir.qrels} (splits in "
                        f"{beir.folder / 'qrels'}: {', '.join(splits) or 'none'})")
    return beir


def _task_name(raw: str) -> str:
    """Names are case-insensitive; a BEIR folder keeps its case (paths are not)."""
    raw = raw.strip()
    return BEIR_PREFIX + raw[len(BEIR_PREFIX):] if is_beir_task(raw) else raw.lower()


def resolve_tasks(spec: str | list[str], data_dir: Path) -> tuple[list[str], list[str]]:
    """Parse `stsb,sickr,beir:DIR:test` or `all`; returns (tasks to run, tasks left out for lack
    of data).

    Named tasks must exist (unknown names are an error listing the valid ones), a `beir:` task's
    folder and qrels file too. `all` runs every named task whose data is present and reports the
    rest, so it works on partial data folders.
    """
    names = [_task_name(t) for t in (spec.split(",") if isinstance(spec, str) else spec)]
    names = [t for t in names if t]
    choices = f"{', '.join(ALL_TASKS)}, beir:DIR[:SPLIT] or 'all'"
    if not names:
        raise TaskError(f"no task given; choose from {choices}")
    unknown = [t for t in names if t not in ALL_TASKS and t != "all" and not is_beir_task(t)]
    if unknown:
        raise TaskError(f"unknown task(s) {unknown}; choose from {choices}")
    for task in filter(is_beir_task, names):
        check_beir_task(task)
    if "all" not in names:
        return names, []
    present, absent = [], []
    for task in ALL_TASKS:
        (present if task_data_present(task, data_dir) else absent).append(task)
    return present, absent


def task_data_present(task: str, data_dir: Path) -> bool:
    if task == "stsb":
        return (data_dir / "stsb" / "test.jsonl").is_file()
    if task == "sickr":
        return (data_dir / "sick_r" / "semeval2014" / "test.jsonl").is_file()
    if task in STS_YEARS:
        return any((d / STS_YEARS[task]).is_dir() for d in (data_dir / "sts", data_dir))
    if task == "scifact":
        return (data_dir / "scifact" / "qrels" / "train.tsv").is_file()
    return False


def load_beir_task(beir: BeirTask):
    """(corpus, queries, qrels): every judgement of the split, or without one the dev part of
    qrels/train.tsv (split by query id)."""
    from angle_ray.data.beir import load_beir, split_qrels_by_query

    data = load_beir(str(beir.folder), split=beir.split or "train")
    if beir.split is not None:
        return data.corpus, data.queries, data.qrels
    _, dev = split_qrels_by_query(data.qrels, SCIFACT_DEV_FRACTION, SCIFACT_SPLIT_SEED)
    return data.corpus, data.queries, dev


def load_scifact_dev(data_dir: Path):
    """SciFact corpus + queries and the dev part of qrels/train.tsv (split by query id)."""
    folder = data_dir / "scifact"
    if not (folder / "qrels" / "train.tsv").is_file():
        raise _missing("scifact", folder)
    return load_beir_task(BeirTask(folder, None))


def load_retrieval_task(task: str, data_dir: Path):
    """(corpus, queries, qrels) of `scifact` or a `beir:` task."""
    if is_beir_task(task):
        return load_beir_task(check_beir_task(task))
    return load_scifact_dev(data_dir)
