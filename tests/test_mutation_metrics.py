"""Metrics on constructed cases whose values are known by hand (issue 19: bugs that changed a
number without failing a test).  Every case is chosen so that the plausible wrong formula gives
a different number: non-monotone columns for forgetting, uneven evaluation points for A_auc,
unequal batch sizes for online accuracy, a non-zero upper triangle for FWT."""
import numpy as np
import pytest

import cl.core.metrics as M

approx = pytest.approx


# -- forgetting: max over the rows *before* k only -------------------------------------------------

def test_forgetting_takes_the_max_over_earlier_rows_only():
    # column j=0 is [0.5, 0.7, 0.6]: best earlier accuracy 0.7, now 0.6
    R = [[0.5, 0.0, 0.0], [0.7, 0.9, 0.0], [0.6, 0.8, 0.4]]
    assert M.forgetting_per_task(R) == approx([0.1, 0.1])
    assert M.average_forgetting(R) == approx(0.1)


def test_forgetting_can_be_negative_not_clipped_at_zero():
    # column j=0 is [0.5, 0.4, 0.8]: the task improved beyond its best -> forgetting -0.3
    R = [[0.5, 0.0, 0.0], [0.4, 0.6, 0.0], [0.8, 0.9, 0.2]]
    assert M.forgetting_per_task(R) == approx([-0.3, -0.3])
    assert M.average_forgetting(R) == approx(-0.3)
    assert M.summary(R)["forgetting"] == approx(-0.3)
    assert M.summary(R)["forgetting_per_task"] == approx([-0.3, -0.3])


def test_forgetting_at_an_earlier_row_and_after_the_first_experience():
    R = [[0.5, 0.1, 0.0], [0.7, 0.9, 0.0], [0.6, 0.8, 0.4]]
    assert M.forgetting_per_task(R, k=1) == approx([0.5 - 0.7])  # only task 0, max over row 0
    assert M.average_forgetting(R, k=1) == approx(-0.2)
    assert M.forgetting_per_task(R, k=0) == [] and M.average_forgetting(R, k=0) == 0.0
    assert M.average_forgetting([[0.3]]) == 0.0


def test_anytime_forgetting_non_monotone_and_undefined_tasks():
    A = [[0.5, None], [0.7, None], [0.6, 0.9], [0.2, 0.95]]
    assert M.anytime_forgetting_per_task(A, k=2) == [approx(0.1), None]  # task 1 seen once only
    assert M.anytime_forgetting_per_task(A) == [approx(0.5), approx(-0.05)]
    assert M.anytime_forgetting(A) == approx((0.5 - 0.05) / 2)
    assert M.anytime_forgetting_per_task([[0.5], [0.9]]) == [approx(-0.4)]  # not clipped
    assert M.anytime_forgetting_curve(A) == approx([0.0, -0.2, 0.1, (0.5 - 0.05) / 2])
    assert M.anytime_forgetting_per_task([]) == [] and M.anytime_forgetting([]) == 0.0
    assert M.anytime_forgetting_per_task([[0.5]]) == [None]  # one point: not defined yet
    # NaN entries count as "not evaluated", like None
    assert M.anytime_forgetting_per_task([[np.nan, 0.5], [0.4, 0.2]]) == [None, approx(0.3)]


# -- the other task-based metrics -----------------------------------------------------------------

R3 = [[0.9, 0.2, 0.1],
      [0.6, 0.8, 0.3],
      [0.5, 0.7, 0.6]]


def test_average_accuracy_uses_the_seen_part_of_a_row():
    assert M.average_accuracy(R3) == approx((0.5 + 0.7 + 0.6) / 3)
    assert M.average_accuracy(R3, i=1) == approx((0.6 + 0.8) / 2)  # R[1,2] is not seen yet
    assert M.average_accuracy(R3, i=0) == approx(0.9)


def test_average_incremental_accuracy_plain_and_sample_weighted():
    plain = (0.9 + (0.6 + 0.8) / 2 + (0.5 + 0.7 + 0.6) / 3) / 3
    assert M.average_incremental_accuracy(R3) == approx(plain)
    sizes = [10, 30, 60]
    w = (0.9 + (0.6 * 10 + 0.8 * 30) / 40 + (0.5 * 10 + 0.7 * 30 + 0.6 * 60) / 100) / 3
    assert M.average_incremental_accuracy(R3, sizes) == approx(w)
    # issue 13: avg_inc_acc is the mean over experiences, the weighted one has its own name
    assert M.summary(R3, sizes)["avg_inc_acc"] == approx(plain)
    assert M.summary(R3, sizes)["avg_inc_acc_weighted"] == approx(w)


def test_bwt_and_fwt_use_the_right_entries():
    assert M.bwt(R3) == approx(((0.5 - 0.9) + (0.7 - 0.8)) / 2)
    b = [0.1, 0.05, 0.2]
    assert M.fwt(R3, b) == approx(((0.2 - 0.05) + (0.3 - 0.2)) / 2)  # R[0,1] and R[1,2]: upper triangle
    assert M.summary(R3, random_init=b)["fwt"] == approx(M.fwt(R3, b))
    assert "fwt" not in M.summary(R3)
    assert M.bwt([[0.4]]) == 0.0 and M.fwt([[0.4]], [0.1]) == 0.0
    assert M.fwt([[0.4, 0.3], [0.2, 0.9]], [0.0, 0.1]) == approx(0.2)  # two experiences: one term
    assert M.bwt([[0.4, 0.3], [0.2, 0.9]]) == approx(-0.2)
    assert M.intransigence(R3, [1.0, 0.9, 0.8]) == approx([0.1, 0.1, 0.2])


def test_partial_matrix_and_bad_shape():
    part = [[0.9, 0.2, 0.1], [0.6, 0.8, 0.3]]  # a run that stopped after two experiences
    assert M.average_accuracy(part) == approx(0.7)
    assert M.average_forgetting(part) == approx(0.3)
    assert M.bwt(part) == approx(0.6 - 0.9)
    with pytest.raises(ValueError):
        M.average_accuracy([0.1, 0.2])
    with pytest.raises(ValueError):
        M.bwt(np.zeros((2, 2, 2)))
    assert M.average_incremental_accuracy(part) == approx((0.9 + 0.7) / 2)
    assert M.intransigence(part, [1.0, 1.0, 1.0]) == approx([0.1, 0.2])  # one value per row
    # FWT of a partial run: the rows that exist (i = 1 .. rows - 1), as for a complete run
    assert M.fwt(part, [0.0, 0.1, 0.05]) == approx(0.2 - 0.1)


# -- online metrics -------------------------------------------------------------------------------

def test_online_accuracy_is_total_correct_over_total_with_unequal_batches():
    # batches of 10 (9 correct) and 2 (0 correct): 9/12, not the mean of per-batch accuracies 0.45
    assert M.online_accuracy([9, 0], [10, 2]) == approx(0.75)
    assert M.online_accuracy([1, 0, 1, 1]) == approx(0.75)  # per-sample 0/1 values
    assert M.online_accuracy([], []) == 0.0


def test_windowed_online_accuracy():
    c = [1, 0, 0, 1, 1]
    assert M.windowed_online_accuracy(c, 2) == approx([1.0, 0.5, 0.0, 0.5, 1.0])
    assert M.windowed_online_accuracy(c, 10) == approx([1.0, 0.5, 1 / 3, 0.5, 0.6])


def test_online_accuracy_curve_cumulative_and_windowed():
    c = [1, 0, 0, 1, 1, 1, 0]
    assert M.online_accuracy_curve(c, 2) == [(2, approx(0.5)), (4, approx(0.5)), (6, approx(4 / 6))]
    assert M.online_accuracy_curve(c, 3, window=2) == [(3, approx(0.0)), (6, approx(1.0))]
    assert M.online_accuracy_curve(c, 0) == [] and M.online_accuracy_curve([], 2) == []
    assert M.online_accuracy_curve([1], 1) == [(1, 1.0)]
    assert M.online_accuracy_curve(c, 3, window=5) == [(3, approx(1 / 3)), (6, approx(3 / 5))]  # short window
    assert M.online_accuracy_curve([1, 1, 0, 0, 0, 1, 0], 3, window=2) == [(3, approx(0.5)), (6, approx(0.5))]
    assert M.online_accuracy_curve(c[:6], 3) == [(3, approx(1 / 3)), (6, approx(4 / 6))]  # the last sample counts


def test_anytime_auc_weights_uneven_evaluation_points():
    # points at 10, 30 and 100 samples: each accuracy holds since the previous point
    s, a = [10, 30, 100], [0.2, 0.4, 0.9]
    assert M.anytime_auc_samples(s, a) == approx((0.2 * 10 + 0.4 * 20 + 0.9 * 70) / 100)
    assert M.anytime_auc_samples(s, a) != approx(np.mean(a))
    # evenly spaced points: the plain mean (anytime_auc)
    assert M.anytime_auc_samples([5, 10, 15], a) == approx(M.anytime_auc(a)) == approx(0.5)
    assert M.anytime_auc_samples([], []) == 0.0 and M.anytime_auc([]) == 0.0
    assert M.anytime_auc_samples([0], [0.3]) == approx(0.3)
    assert M.anytime_auc_samples([0, 10], [0.3, 0.5]) == approx(0.5)  # a point at 0 samples has no width
    assert M.anytime_auc_samples([0, 1], [0.2, 0.6]) == approx(0.6)
    with pytest.raises(ValueError):
        M.anytime_auc_samples([10, 5], [0.1, 0.2])
    with pytest.raises(ValueError):
        M.anytime_auc_samples([10, 9.5], [0.1, 0.2])  # any decrease
    with pytest.raises(ValueError):
        M.anytime_auc_samples([10, 20], [0.1])
    with pytest.raises(ValueError):
        M.anytime_auc_samples([10], [0.1, 0.2])


# -- schedules --------------------------------------------------------------------------------------

def test_near_future_pairs():
    assert M.near_future_pairs(5, 2) == [(0, 2), (1, 3), (2, 4)]
    assert M.near_future_pairs(3, 0) == [(0, 0), (1, 1), (2, 2)]
    assert M.near_future_pairs(2, 3) == []
    with pytest.raises(ValueError):
        M.near_future_pairs(5, -1)


def test_realtime_schedule():
    assert M.realtime_schedule(7, 3) == [True, False, False, True, False, False, True]
    assert M.realtime_schedule(4, 0.5) == [True] * 4
    assert M.realtime_schedule(5, 2.5) == [True, False, False, True, False]
    assert M.realtime_schedule(4, 2, start=1.0) == [False, True, False, True]
