"""Mechanism tests for nearest-class-mean, PEC and center-loss (methods.md sections 7, 9, 10)."""
import torch
import torch.nn.functional as F

from cl.models.prototypes import PrototypeHead
from test_strategies_er_family import make


# -- nearest class mean ------------------------------------------------------------------------------

def test_incremental_means_equal_batch_means():
    torch.manual_seed(0)
    h, y = torch.randn(300, 12) * 3 + 1, torch.randint(0, 7, (300,))
    for normalize in (False, True):
        head = PrototypeHead(12, 10, normalize=normalize)
        for chunk in torch.split(torch.arange(300), 17):  # uneven batches, classes arriving in any order
            head.update(h[chunk], y[chunk])
        hh = F.normalize(h, dim=1) if normalize else h
        ref = torch.stack([hh[y == c].mean(0) for c in range(7)])
        assert torch.allclose(head.means[:7], ref, atol=1e-5)
        assert head.seen[:7].all() and not head.seen[7:].any()


def test_ncm_euclidean_and_cosine_scores():
    torch.manual_seed(0)
    mu = torch.randn(3, 5)
    head_e = PrototypeHead(5, 4, metric="euclidean", normalize=False)
    head_c = PrototypeHead(5, 4, metric="cosine", normalize=False)
    for head in (head_e, head_c):
        head.update(mu, torch.arange(3))
    x = torch.randn(20, 5)
    assert torch.allclose(head_e(x)[:, :3], -torch.cdist(x, mu), atol=1e-5)
    assert torch.allclose(head_c(x)[:, :3], F.normalize(x, dim=1) @ F.normalize(mu, dim=1).t(), atol=1e-5)
    assert (head_e(x)[:, 3] == float("-inf")).all()  # no sample of class 3 yet


def test_ncm_strategy_classifies_by_the_nearest_mean_without_training():
    s, sc = make("ncm", backbone="identity")
    exp = sc[0]
    params = [p.detach().clone() for p in s.model.parameters()]
    for i in range(0, len(exp.train_y), 10):
        s.train_step(exp.train_x[i:i + 10], exp.train_y[i:i + 10])
    assert all(torch.equal(a, b) for a, b in zip(params, s.model.parameters()))
    feats = F.normalize(exp.train_x, dim=1)
    means = torch.stack([feats[exp.train_y == c].mean(0) for c in exp.classes])
    pred = s.predict(exp.test_x).argmax(1)
    ref = torch.tensor(exp.classes)[torch.cdist(F.normalize(exp.test_x, dim=1), means).argmin(1)]
    assert torch.equal(pred, ref)


# -- PEC ------------------------------------------------------------------------------------------------

def test_pec_students_share_init_and_the_teacher_is_frozen_and_wider():
    s, _ = make("pec", backbone="identity")
    st, te = s.model.students, s.model.teacher
    for p in st.parameters():
        assert all(torch.equal(p[0], p[i]) for i in range(1, p.shape[0]))
    assert not any(p.requires_grad for p in te.parameters())
    assert te.width == 500 * st.width


def test_pec_scores_of_a_class_drop_after_training_its_student_and_others_are_unchanged():
    s, sc = make("pec", backbone="identity", teacher_mult=50)
    exp = sc[0]
    c = exp.classes[0]
    xc = exp.train_x[exp.train_y == c][:50]
    with torch.no_grad():
        err0 = s.model.errors(exp.test_x)
    teacher0 = [p.clone() for p in s.model.teacher.parameters()]
    for i in range(0, len(xc), 1):  # batch size 1, as in the paper
        s.train_step(xc[i:i + 1], torch.tensor([c]))
    with torch.no_grad():
        err1 = s.model.errors(exp.test_x)
    on_c = exp.test_y == c
    assert err1[on_c, c].mean() < 0.5 * err0[on_c, c].mean()  # its prediction error (the score) dropped
    others = [k for k in range(sc.n_classes) if k != c]
    assert torch.equal(err1[:, others], err0[:, others])  # every other student untouched
    assert all(torch.equal(a, b) for a, b in zip(teacher0, s.model.teacher.parameters()))
    # the class-c error drops more on class-c test data than on the other classes' data
    assert (err0[on_c, c].mean() - err1[on_c, c].mean()) > (err0[~on_c, c].mean() - err1[~on_c, c].mean())


def test_pec_per_class_learning_rate_decays_linearly_to_zero():
    s, sc = make("pec", backbone="identity", teacher_mult=50,
                 scenario={"name": "gaussian", "train_per_class": 30, "test_per_class": 5})
    exp = sc[0]
    s.before_experience(exp)
    c = exp.classes[0]
    n = int((exp.train_y == c).sum())
    assert s.total[c] == n
    xc = exp.train_x[exp.train_y == c]
    for i in range(n):
        s.train_step(xc[i:i + 1], torch.tensor([c]))
    assert s.consumed[c] == n and s.optimizer.state["step"][c] == n
    assert s.optimizer.state["step"].sum() == n  # no other class took a step


def test_pec_cnn_students_match_their_selected_forward():
    from strategies.pec import ParallelNets

    torch.manual_seed(0)
    nets = ParallelNets(4, "cnn", (3, 8, 8), 5, 7, pool=2)
    with torch.no_grad():
        for p in nets.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # make the networks differ
    x, idx = torch.randn(6, 3, 8, 8), torch.tensor([0, 3, 1, 1, 2, 0])
    full = nets(x)
    assert torch.allclose(nets.forward_selected(x, idx), full[idx, torch.arange(6)], atol=1e-5)


# -- center loss -----------------------------------------------------------------------------------------

def _train_exp(s, exp, bs=10):
    s.before_experience(exp)
    for i in range(0, len(exp.train_y), bs):
        s.train_step(exp.train_x[i:i + bs], exp.train_y[i:i + bs])
    s.after_experience(exp)


def test_center_loss_centres_learned_in_task_1_then_frozen_with_their_classifier_rows():
    s, sc = make("center-loss", backbone="identity", lambda_c=0.5)
    e0, e1 = sc[0], sc[1]
    _train_exp(s, e0)
    c0 = e0.classes
    # centres moved toward the class means of the features
    feats = s.model.features(e0.train_x).detach()
    for c in c0:
        mean = feats[e0.train_y == c].mean(0)
        assert (s.centers[c] - mean).norm() < 0.5 * mean.norm()
    assert s.frozen[c0].all() and not s.frozen[e1.classes].any()
    centres, W, b = s.centers.clone(), s.model.head.fc.weight.detach().clone(), s.model.head.fc.bias.detach().clone()
    _train_exp(s, e1)
    assert torch.equal(s.centers[c0], centres[c0])  # frozen centres
    assert torch.equal(s.model.head.fc.weight[c0], W[c0]) and torch.equal(s.model.head.fc.bias[c0], b[c0])
    assert not torch.equal(s.centers[e1.classes], centres[e1.classes])  # new classes' centres learned
    assert not torch.equal(s.model.head.fc.weight[e1.classes], W[e1.classes])


def test_center_loss_penalty_pulls_features_to_the_centres():
    s, sc = make("center-loss", lambda_c=1.0)
    torch.manual_seed(0)
    s.centers.normal_()
    x, y = torch.randn(8, 16), torch.tensor([0, 1] * 4)
    h = s.model.features(x)
    pen = s.center_penalty(h, y)
    ref = 0.5 * ((h - s.centers[y]) ** 2).sum(1).mean()
    assert torch.allclose(pen, ref)
    # the penalty's gradient reaches the backbone, not the centres (buffers, updated by their own rule)
    pen.backward()
    assert not s.centers.requires_grad
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in s.model.backbone.parameters())


def test_center_loss_with_replay_uses_the_buffer():
    s, sc = make("center-loss", backbone="identity", buffer_size=30)
    _train_exp(s, sc[0])
    assert len(s.buffer) == 30
