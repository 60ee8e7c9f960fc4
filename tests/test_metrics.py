import numpy as np
import pytest

from cl.core import metrics as M

# R[i][j]: accuracy on experience j after training on 0..i
R = np.array([
    [0.90, 0.10, 0.00],
    [0.50, 0.80, 0.20],
    [0.40, 0.70, 0.60],
])


def test_average_accuracy_rows():
    assert M.average_accuracy(R) == pytest.approx((0.4 + 0.7 + 0.6) / 3)
    assert M.average_accuracy(R, 0) == pytest.approx(0.9)
    assert M.average_accuracy(R, 1) == pytest.approx((0.5 + 0.8) / 2)


def test_average_incremental_accuracy():
    expect = (0.9 + (0.5 + 0.8) / 2 + (0.4 + 0.7 + 0.6) / 3) / 3
    assert M.average_incremental_accuracy(R) == pytest.approx(expect)
    # weighted by test-set sizes: accuracy on the union of seen test sets
    sizes = [100, 300, 100]
    w1 = (0.5 * 100 + 0.8 * 300) / 400
    w2 = (0.4 * 100 + 0.7 * 300 + 0.6 * 100) / 500
    assert M.average_incremental_accuracy(R, sizes) == pytest.approx((0.9 + w1 + w2) / 3)


def test_forgetting_uses_the_best_earlier_accuracy_not_the_last_but_one():
    # task 0 peaked after experience 0 (0.9), then 0.5, then 0.4: forgetting is 0.9-0.4, not 0.5-0.4
    f = M.forgetting_per_task(R)
    assert f == pytest.approx([0.5, 0.1])
    assert M.average_forgetting(R) == pytest.approx(0.3)
    assert M.forgetting_per_task(R, 1) == pytest.approx([0.4])
    assert M.average_forgetting(R, 0) == 0.0


def test_bwt_fwt_intransigence():
    assert M.bwt(R) == pytest.approx(((0.4 - 0.9) + (0.7 - 0.8)) / 2)
    b = [0.1, 0.05, 0.15]
    assert M.fwt(R, b) == pytest.approx(((0.1 - 0.05) + (0.2 - 0.15)) / 2)
    assert M.intransigence(R, [1.0, 0.9, 0.8]) == pytest.approx([0.1, 0.1, 0.2])


def test_online_and_windowed_accuracy():
    c = [1, 0, 1, 1, 0, 0]
    assert M.online_accuracy(c) == pytest.approx(0.5)
    assert M.online_accuracy([3, 1], [4, 4]) == pytest.approx(0.5)
    w = M.windowed_online_accuracy(c, 2)
    assert w.tolist() == pytest.approx([1.0, 0.5, 0.5, 1.0, 0.5, 0.0])


def test_summary_and_bad_shape():
    s = M.summary(R, random_init=[0.1, 0.05, 0.15])
    assert s["avg_acc"] == pytest.approx(M.average_accuracy(R))
    assert s["fwt"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="2-D"):
        M.average_accuracy([0.1, 0.2])
