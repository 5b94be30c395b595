"""Teacher alignment: the KL / MSE terms by hand, zero for identical embeddings, gradients to the
student only; the teacher built frozen from a real MiniLM; a tokenizer mismatch refused."""

import copy
import math

import pytest
import torch

from angle_ray.config import DEFAULT_MODEL, ConfigError, ModelConfig, TeacherConfig
from angle_ray.losses.distill import (
    Teacher,
    build_teacher,
    check_same_tokenizer,
    distill_loss,
    kl_rows,
    tokenizer_mismatch,
)
from angle_ray.models.backbone import build_model

STUDENT = [[1.0, 2.0, 3.0], [0.0, 0.5, -1.0]]
TEACHER = [[3.0, 2.0, 1.0], [1.0, 0.0, 0.0]]


def _softmax(row):
    exps = [math.exp(x) for x in row]
    return [e / sum(exps) for e in exps]


def _hand_kl(student_rows, teacher_rows):
    """KL(p_teacher || p_student) summed over dims, averaged over rows, written out by hand."""
    total = 0.0
    for s_row, t_row in zip(student_rows, teacher_rows):
        p_s, p_t = _softmax(s_row), _softmax(t_row)
        total += sum(pt * (math.log(pt) - math.log(ps)) for pt, ps in zip(p_t, p_s))
    return total / len(student_rows)


def test_kl_matches_hand_computation():
    got = distill_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), "kl")
    # the first row alone, fully by hand: p_t = softmax(3,2,1), p_s = softmax(1,2,3) = reversed p_t
    p = _softmax([3.0, 2.0, 1.0])
    row0 = sum(p[j] * (math.log(p[j]) - math.log(p[2 - j])) for j in range(3))
    assert row0 == pytest.approx(2 * (p[0] - p[2]), rel=1e-12)  # log-ratios are (2, 0, -2)
    assert _hand_kl(STUDENT[:1], TEACHER[:1]) == pytest.approx(row0, rel=1e-12)
    assert got.item() == pytest.approx(_hand_kl(STUDENT, TEACHER), rel=1e-6)
    assert got.item() > 0


def test_kl_temperature_divides_logits():
    s, t = torch.tensor(STUDENT), torch.tensor(TEACHER)
    halved = [[x / 2 for x in row] for row in STUDENT], [[x / 2 for x in row] for row in TEACHER]
    assert kl_rows(t, s, temperature=2.0).item() == pytest.approx(_hand_kl(*halved), rel=1e-6)


def test_mse_matches_hand_computation():
    got = distill_loss(torch.tensor(STUDENT), torch.tensor(TEACHER), "mse")
    squares = [(s - t) ** 2 for sr, tr in zip(STUDENT, TEACHER) for s, t in zip(sr, tr)]
    assert got.item() == pytest.approx(sum(squares) / len(squares), rel=1e-6)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_zero_when_student_equals_teacher(kind):
    emb = torch.randn(5, 16, generator=torch.Generator().manual_seed(0))
    assert distill_loss(emb, emb.clone(), kind).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("kind", ["kl", "mse"])
def test_gradients_reach_the_student_only(kind):
    student = torch.tensor(STUDENT, requires_grad=True)
    teacher = torch.tensor(TEACHER, requires_grad=True)
    distill_loss(student, teacher, kind).backward()
    assert teacher.grad is None
    assert student.grad is not None and student.grad.abs().sum() > 0


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="same shape"):
        distill_loss(torch.zeros(2, 3), torch.zeros(3, 3))


def test_self_distillation_teacher_is_frozen_and_agrees_with_the_zero_shot_student(minilm_small):
    teacher = build_teacher(TeacherConfig(path=DEFAULT_MODEL, weight=0.5), minilm_small)
    assert teacher.model is not minilm_small
    assert all(not p.requires_grad for p in teacher.model.parameters())
    assert teacher.model.cfg.pooling == minilm_small.cfg.pooling == "mean"
    teacher.model.train()  # a careless model.train() on everything
    batch = minilm_small.tokenize(["A plane is taking off.", "A man is playing a flute.", "Rain."])
    t_emb = teacher.embed(batch["input_ids"], batch["attention_mask"])
    assert not teacher.model.training and not t_emb.requires_grad

    minilm_small.eval()
    s_emb = minilm_small(**batch)
    assert teacher.loss(s_emb, t_emb).item() == pytest.approx(0.0, abs=1e-6)
    moved = s_emb + torch.linspace(-1, 1, s_emb.shape[1])  # a student that drifted
    expected = 0.5 * _hand_kl(moved.tolist(), t_emb.tolist())
    assert teacher.loss(moved, t_emb).item() == pytest.approx(expected, rel=1e-4)


def test_teacher_with_another_tokenizer_is_a_config_error_naming_both_paths(minilm_small, tiny_llm_dir):
    with pytest.raises(ConfigError) as err:
        build_teacher(TeacherConfig(path=tiny_llm_dir), minilm_small)
    message = str(err.value)
    assert tiny_llm_dir in message and DEFAULT_MODEL in message and "vocabularies differ" in message


def test_same_vocabulary_other_special_token_is_a_mismatch(tiny_llm_dir):
    llm = build_model(ModelConfig(name_or_path=tiny_llm_dir, is_llm=True, pooling="last"))
    same = copy.deepcopy(llm.tokenizer)
    assert tokenizer_mismatch(llm.tokenizer, same) is None
    check_same_tokenizer(llm.tokenizer, same, "a", "b")  # no error
    other = copy.deepcopy(llm.tokenizer)
    other.pad_token = other.convert_ids_to_tokens(5)  # an ordinary token as pad
    assert "pad_token" in tokenizer_mismatch(llm.tokenizer, other)
    with pytest.raises(ConfigError) as err:
        check_same_tokenizer(llm.tokenizer, other, "student-path", "teacher-path")
    assert "'student-path'" in str(err.value) and "'teacher-path'" in str(err.value)


def test_teacher_rejects_unknown_kind(minilm_small):
    with pytest.raises(ValueError, match="kind"):
        Teacher(minilm_small, kind="cosine")
