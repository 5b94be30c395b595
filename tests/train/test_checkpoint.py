"""Which checkpoints a run may resume from: ZeRO-1..3 state only on as many workers as wrote it."""

import pytest

from angle_ray.errors import UserError
from angle_ray.train.checkpoint import CheckpointError, check_world_size


def test_partitioned_state_from_another_world_size_is_refused_naming_both_sizes():
    with pytest.raises(CheckpointError, match=r"ckpt_3: written by 2 workers, and this run has 4"
                                              r".*train.num_workers=2") as err:
        check_world_size({"world_size": 2}, 4, any_size=False, where="runs/x/ckpt_3")
    assert isinstance(err.value, UserError)  # the command line prints it as `error: ...`, exit 2


@pytest.mark.parametrize("state, world_size, any_size", [
    ({"world_size": 2}, 2, False),   # the same size
    ({"world_size": 2}, 4, True),    # DDP / ZeRO-0: rank 0 holds the whole state
    ({}, 4, False),                  # written before the size was recorded: DeepSpeed decides
])
def test_resumable_checkpoints_pass(state, world_size, any_size):
    check_world_size(state, world_size, any_size, where="runs/x/ckpt")
