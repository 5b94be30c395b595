"""angle_ray/models/pooling.py: every strategy against values worked out by hand."""

import math

import pytest
import torch

from angle_ray.models.pooling import POOLING_STRATEGIES, last_token_index, pool

# row 0 is right-padded (2 real tokens), row 1 left-padded (2 real tokens)
HIDDEN = torch.tensor(
    [
        [[1.0, 2.0], [3.0, 4.0], [50.0, 60.0]],
        [[70.0, 80.0], [9.0, 10.0], [11.0, 12.0]],
    ]
)
MASK = torch.tensor([[1, 1, 0], [0, 1, 1]])


def test_cls_is_the_first_token():
    assert pool(HIDDEN, MASK, "cls").tolist() == [[1.0, 2.0], [70.0, 80.0]]


def test_mean_averages_real_tokens_only():
    assert pool(HIDDEN, MASK, "mean").tolist() == [[2.0, 3.0], [10.0, 11.0]]


def test_max_ignores_pads_even_when_they_are_largest():
    assert pool(HIDDEN, MASK, "max").tolist() == [[3.0, 4.0], [11.0, 12.0]]


def test_max_of_negative_values_is_not_taken_from_zero_pads():
    hidden = torch.tensor([[[-3.0, -1.0], [-2.0, -5.0], [0.0, 0.0]]])
    assert pool(hidden, torch.tensor([[1, 1, 0]]), "max").tolist() == [[-2.0, -1.0]]


def test_last_token_with_right_and_left_padding():
    assert last_token_index(MASK).tolist() == [1, 2]
    assert pool(HIDDEN, MASK, "last").tolist() == [[3.0, 4.0], [11.0, 12.0]]


def test_last_token_without_padding_is_the_final_position():
    assert pool(HIDDEN, torch.ones(2, 3, dtype=torch.long), "last").tolist() == [
        [50.0, 60.0],
        [11.0, 12.0],
    ]


def test_cls_avg_is_half_cls_plus_half_mean():
    assert pool(HIDDEN, MASK, "cls_avg").tolist() == [[1.5, 2.5], [40.0, 45.5]]


def test_first_last_avg_mean_pools_the_average_of_embedding_and_last_layer():
    first = torch.tensor([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]])
    middle = torch.full((1, 3, 2), 1000.0)
    last = torch.tensor([[[5.0, 7.0], [7.0, 9.0], [100.0, 100.0]]])
    out = pool(last, torch.tensor([[1, 1, 0]]), "first_last_avg", hidden_states=(first, middle, last))
    # token 0: (1+5)/2, (1+7)/2 = 3, 4; token 1: (3+7)/2, (3+9)/2 = 5, 6; mean = 4, 5
    assert out.tolist() == [[4.0, 5.0]]


def test_first_last_avg_without_hidden_states_is_an_error():
    with pytest.raises(ValueError, match="hidden_states"):
        pool(HIDDEN, MASK, "first_last_avg")


def test_nan_at_pad_positions_does_not_leak_into_mean_max_or_last():
    hidden = HIDDEN.clone()
    hidden[0, 2] = math.nan
    hidden[1, 0] = math.nan
    for strategy, expected in [
        ("mean", [[2.0, 3.0], [10.0, 11.0]]),
        ("max", [[3.0, 4.0], [11.0, 12.0]]),
        ("last", [[3.0, 4.0], [11.0, 12.0]]),
    ]:
        assert pool(hidden, MASK, strategy).tolist() == expected, strategy


def test_a_row_of_only_pads_pools_to_zeros_not_nan():
    mask = torch.tensor([[0, 0, 0], [1, 1, 1]])
    assert pool(HIDDEN, mask, "mean")[0].tolist() == [0.0, 0.0]
    assert pool(HIDDEN, mask, "max")[0].tolist() == [0.0, 0.0]


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ValueError) as err:
        pool(HIDDEN, MASK, "avg")
    for name in POOLING_STRATEGIES:
        assert name in str(err.value)
