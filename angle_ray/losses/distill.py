"""Alignment with a frozen teacher (``loss.teacher``): distillation, or self-distillation when the
teacher is the student's own starting model (it holds the student near it: less forgetting).

Terms, on pooled embeddings ``s`` (student) and ``t`` (teacher), both ``[R, d]``, one row per text::

    kl   KL(softmax(t) || softmax(s)) = 1/R * sum_r sum_j p_t[r, j] * (log p_t[r, j] - log p_s[r, j])
         with p = softmax over the embedding dimension at temperature 1 (``angle_emb``'s
         convention); the reduction is ``batchmean``: summed over dimensions, averaged over rows
    mse  mean over all R * d entries of (s - t)^2

The teacher term is ``weight * term`` added to the AnglE loss. Gradients reach the student only:
the teacher runs without a graph and its output is detached.

    teacher = build_teacher(job.loss.teacher, student)       # frozen, eval mode, student's dtype/device
    t_emb = teacher.embed(batch["input_ids"], batch["attention_mask"])
    loss = loss + teacher.loss(student_emb, t_emb)

The teacher reads the student's token ids, so both must share one tokenizer (same vocabulary and
special tokens); ``build_teacher`` refuses a mismatch with a ``ConfigError`` naming both paths.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from angle_ray.config import ConfigError, TeacherConfig
from angle_ray.models.backbone import EmbeddingModel
from angle_ray.models.loader import load_model

KINDS = ("kl", "mse")
_SPECIAL_ATTRS = ("bos_token", "eos_token", "unk_token", "sep_token", "pad_token", "cls_token",
                  "mask_token")


def kl_rows(target_logits: Tensor, input_logits: Tensor, temperature: float = 1.0) -> Tensor:
    """KL(softmax(target / T) || softmax(input / T)) per row, summed over the last dimension and
    averaged over rows (``batchmean``). ``target_logits`` is taken as a constant."""
    log_p_input = F.log_softmax(input_logits.float() / temperature, dim=-1)
    log_p_target = F.log_softmax(target_logits.detach().float() / temperature, dim=-1)
    return F.kl_div(log_p_input, log_p_target, reduction="batchmean", log_target=True)


def distill_loss(student: Tensor, teacher: Tensor, kind: str = "kl") -> Tensor:
    """The unweighted teacher term (see the module docstring); ``teacher`` is detached."""
    if student.shape != teacher.shape:
        raise ValueError(
            f"distill_loss: student {tuple(student.shape)} and teacher {tuple(teacher.shape)} "
            "embeddings must have the same shape (same rows, same dimension)"
        )
    if kind == "kl":
        return kl_rows(teacher, student)
    if kind == "mse":
        return F.mse_loss(student.float(), teacher.detach().float())
    raise ValueError(f"distill_loss: kind {kind!r} is not one of {KINDS}")


class Teacher:
    """A frozen embedding model (no gradients, always eval mode) and its weighted loss term.

    Deliberately not an ``nn.Module``: hung on the training model it would be wrapped by
    DDP / DeepSpeed and its parameters handed to the optimizer.
    """

    def __init__(self, model: EmbeddingModel, weight: float = 1.0, kind: str = "kl") -> None:
        if kind not in KINDS:
            raise ValueError(f"Teacher: kind {kind!r} is not one of {KINDS}")
        self.model = model
        self.weight = weight
        self.kind = kind
        model.requires_grad_(False)
        model.eval()

    @torch.no_grad()
    def embed(self, input_ids: Tensor, attention_mask: Tensor) -> Tensor:
        """Pooled teacher embeddings ``[B, d]`` (fp32) for the student's token ids."""
        self.model.eval()  # a caller's model.train() on everything must not turn dropout on here
        device = self.model.device
        return self.model(input_ids.to(device), attention_mask.to(device))

    def loss(self, student_emb: Tensor, teacher_emb: Tensor) -> Tensor:
        """``weight * distill_loss(student_emb, teacher_emb, kind)``."""
        return self.weight * distill_loss(student_emb, teacher_emb.to(student_emb.device), self.kind)


def _special_tokens(tokenizer) -> dict[str, tuple[str | None, int | None]]:
    out = {}
    for attr in _SPECIAL_ATTRS:
        token = getattr(tokenizer, attr, None)
        out[attr] = (token, tokenizer.convert_tokens_to_ids(token) if token is not None else None)
    return out


def tokenizer_mismatch(student_tok, teacher_tok) -> str | None:
    """What differs between two tokenizers (vocabulary, special tokens), or None if they match."""
    s_vocab, t_vocab = student_tok.get_vocab(), teacher_tok.get_vocab()
    if s_vocab != t_vocab:
        differing = sorted(set(s_vocab.items()) ^ set(t_vocab.items()))[:3]
        return (f"vocabularies differ ({len(s_vocab)} vs {len(t_vocab)} tokens; e.g. "
                f"{[token for token, _ in differing]})")
    s_special, t_special = _special_tokens(student_tok), _special_tokens(teacher_tok)
    differing = [name for name in _SPECIAL_ATTRS if s_special[name] != t_special[name]]
    if differing:
        name = differing[0]
        return f"special token {name} differs ({s_special[name][0]!r} vs {t_special[name][0]!r})"
    return None


def check_same_tokenizer(student_tok, teacher_tok, student_path: str, teacher_path: str) -> None:
    """Raise ``ConfigError`` naming both paths when the tokenizers differ."""
    problem = tokenizer_mismatch(student_tok, teacher_tok)
    if problem is not None:
        raise ConfigError(
            f"loss.teacher.path={teacher_path!r}: its tokenizer is not the student's "
            f"(model.name_or_path={student_path!r}): {problem}. The teacher reads the student's "
            "token ids, so both must share one tokenizer"
        )


def build_teacher(cfg: TeacherConfig, student: EmbeddingModel) -> Teacher:
    """Load ``cfg.path`` frozen, in the student's dtype, max_length and device; check the tokenizer.

    ``cfg.pooling`` None: the student's pooling.
    """
    model = load_model(
        cfg.path,
        pooling=cfg.pooling or student.cfg.pooling,
        max_length=student.cfg.max_length,
        is_llm=student.cfg.is_llm,
        dtype=student.cfg.dtype,
    )
    check_same_tokenizer(student.tokenizer, model.tokenizer, student.cfg.name_or_path, cfg.path)
    model.to(student.device)
    return Teacher(model, weight=cfg.weight, kind=cfg.kind)
