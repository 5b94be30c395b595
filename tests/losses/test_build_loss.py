"""build_loss (angle_ray/losses/__init__.py): a LossConfig becomes the loss module."""

from angle_ray.config import LossConfig
from angle_ray.losses import AnglELoss, MatryoshkaLoss, build_loss


def test_build_loss_without_matryoshka_dims_is_a_plain_angle_loss():
    loss_fn = build_loss(LossConfig(angle_w=0.05, ibn_tau=10.0))
    assert isinstance(loss_fn, AnglELoss)
    assert loss_fn.angle_w == 0.05 and loss_fn.ibn.tau == 10.0


def test_build_loss_with_matryoshka_dims_wraps_the_angle_loss():
    loss_fn = build_loss(LossConfig(matryoshka_dims=[8, 4], matryoshka_weights=[1.0, 0.5]))
    assert isinstance(loss_fn, MatryoshkaLoss) and isinstance(loss_fn.base, AnglELoss)
    assert loss_fn.dims == [8, 4] and loss_fn.weights == [1.0, 0.5]
