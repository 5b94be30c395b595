import numpy as np
import pytest
from scipy.stats import rankdata

from angle_ray.eval.sts import cosine_rows, spearman_x100


def test_cosine_rows_matches_definition():
    a = np.array([[1.0, 0.0], [1.0, 1.0]])
    b = np.array([[0.0, 2.0], [2.0, 2.0]])
    np.testing.assert_allclose(cosine_rows(a, b), [0.0, 1.0], atol=1e-12)


def test_spearman_is_pearson_of_ranks_times_100():
    pred = [0.1, 0.4, 0.35, 0.8, 0.2]
    gold = [1.0, 3.0, 4.0, 5.0, 0.5]
    rp, rg = rankdata(pred), rankdata(gold)
    expected = np.corrcoef(rp, rg)[0, 1] * 100
    assert spearman_x100(pred, gold) == pytest.approx(expected)


def test_spearman_rejects_length_mismatch():
    with pytest.raises(ValueError, match="3 predictions for 2"):
        spearman_x100([1, 2, 3], [1, 2])
