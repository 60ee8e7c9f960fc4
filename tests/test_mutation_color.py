"""Tests written from the mutation run of strategies/color.py (issue 19). The task-keyed machinery
(``TaskKeyedExperts``: per-task experts and heads, k-means keys, grouping of a test batch by identified task,
task-id accuracy, state) runs with a constructed expert (a learned shift of the features per task) on an
identity backbone and two tasks whose inputs point along different axes, so that every value is known by
hand; then CoLoR's LoRA experts and the finetune-lora baseline on a tiny fully connected backbone (peft)."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from cl.core.registry import ConfigError
from cl.core.strategy import RunInfo
from cl.core.streams import Experience, Scenario
from cl.models.task_keys import TaskKeys
from strategies.color import CoLoR, CoLoRConfig, ExpertModel, FinetuneLoRA, FinetuneLoRAConfig, TaskKeyedConfig, \
    TaskKeyedExperts


class Identity(nn.Module):
    """A frozen 'pretrained' backbone: a linear layer set to the identity, then BatchNorm (statistics 0 / 1)."""

    def __init__(self, d=4):
        super().__init__()
        self.lin = nn.Linear(d, d)
        self.bn = nn.BatchNorm1d(d)
        with torch.no_grad():
            self.lin.weight.copy_(torch.eye(d))
            self.lin.bias.zero_()
        self.out_dim = d

    def forward(self, x):
        return self.bn(self.lin(x))


class Shift(nn.Module):
    def __init__(self, d):
        super().__init__()
        self.v = nn.Parameter(torch.zeros(d))


class Shifted(TaskKeyedExperts):
    """Expert t adds a learned vector v_t to the frozen features."""

    @classmethod
    def attach_experts(cls, cfg, model, n_tasks):
        model.experts = nn.ModuleList(Shift(model.backbone.out_dim) for _ in range(n_tasks))

    def expert_features(self, task, x):
        return self.model.backbone(x) + self.model.experts[task].v

    def query_features(self, x):
        return self.model.backbone(x)

    def expert_parameters(self, task):
        return list(self.model.experts[task].parameters())

    def activate(self, task):
        self.activated = getattr(self, "activated", []) + [task]


AXES = (0, 2)  # task t's inputs point along axis AXES[t]


def data(task, n=6, seed=0, classes=None):
    g = torch.Generator().manual_seed(seed + 10 * task)
    x = torch.rand(n, 4, generator=g) * 0.5
    x[:, AXES[task]] += 5.0
    cls = classes if classes is not None else [2 * task, 2 * task + 1]
    y = torch.tensor(cls).repeat(n // len(cls))
    return x, y


def scenario(setting="class", n_tasks=2):
    exps = []
    for t in range(n_tasks):
        x, y = data(t)
        xt, yt = data(t, n=4, seed=1)
        cls = [2 * t, 2 * t + 1] if setting == "class" else [0, 1]
        if setting != "class":
            y, yt = y % 2, yt % 2
        exps.append(Experience(x, y, xt, yt, cls, t if setting == "task" else None, t))
    return Scenario("axes", exps, 4 if setting == "class" else 2, (4,), list(range(4)), setting=setting,
                    modality="vector")


def build(cls=Shifted, cfg_cls=TaskKeyedConfig, sc=None, backbone=None, **cfg):
    torch.manual_seed(0)
    sc = sc or scenario()
    c = cfg_cls(**cfg)
    model = cls.build_model(c, backbone or Identity(), sc)
    info = RunInfo(n_classes=sc.n_classes, input_shape=sc.input_shape, device=torch.device("cpu"), seed=3,
                   setting=sc.setting, n_experiences=len(sc))
    s = cls(c, model, info)
    s.setup()
    return s, sc


def train(s, exp, steps=1):
    s.before_experience(exp)
    s.model.train()
    for _ in range(steps):
        s.train_step(exp.train_x, exp.train_y)


# -- configuration -------------------------------------------------------------------------------------------
def test_defaults():
    c = TaskKeyedConfig()
    assert (c.lr, c.optimizer, c.mode, c.n_keys, c.key_metric, c.keys, c.task_id, c.train_eval_mode, c.feature_batch) \
        == (0.01, "adam", "auto", 5, "l2", "frozen", "keys", False, 256)
    c = CoLoRConfig()
    assert (c.r, c.alpha, c.lora_dropout, c.targets, c.lr, c.optimizer) == (8, 16, 0.0, None, 0.01, "adam")
    c = FinetuneLoRAConfig()
    assert (c.lr, c.head_lr, c.optimizer, c.r, c.alpha, c.targets) == (5e-4, 5e-3, "adam", 8, 16, None)


@pytest.mark.parametrize("field,value", [("mode", "task"), ("keys", "learned"), ("task_id", "given")])
def test_bad_choices_are_config_errors_naming_the_field_and_the_choices(field, value):
    choices = {"mode": "auto, class, domain", "keys": "adapted, frozen", "task_id": "keys, oracle"}[field]
    with pytest.raises(ConfigError, match=rf"Shifted {field}.*{value}.*{choices}"):
        build(**{field: value})


def test_mode_auto_follows_the_scenario_and_an_explicit_mode_wins():
    assert build()[0].mode == "class"
    assert build(sc=scenario("domain"))[0].mode == "domain"
    assert build(sc=scenario("task"))[0].mode == "class"
    assert build(sc=scenario("domain"), mode="class")[0].mode == "class"
    assert build(mode="domain")[0].mode == "domain"


def test_the_model_has_a_frozen_backbone_and_one_head_and_expert_per_task():
    s, sc = build()
    m = s.model
    assert isinstance(m, ExpertModel) and m.scenario_setting == "class"
    assert not any(p.requires_grad for p in m.backbone.parameters())
    assert len(m.heads) == 2 and all((h.in_features, h.out_features) == (4, 4) for h in m.heads)
    assert m.seen.dtype == torch.bool and not m.seen.any() and tuple(m.seen.shape) == (4,)
    assert tuple(m.head_classes.shape) == (2, 4) and not m.head_classes.any()
    assert len(m.experts) == 2 and s.task == -1 and s.n_trained == 0 and s.seen_tests == []
    assert s.keys.k == 5 and s.keys.metric == "l2" and s.keys.seed == 3  # the run's seed
    assert "seen_tests" in TaskKeyedExperts.state_attrs and "_frozen_cache" in TaskKeyedExperts.transient_attrs
    m.observe(torch.tensor([1, 3]))
    assert m.seen.tolist() == [False, True, False, True]
    x = sc[0].test_x
    m.eval()
    assert m.current == 0 and torch.equal(m(x), s._forward_task(0, x))  # before any experience: task 0's expert
    m.current, m.forward_expert = 1, lambda t, x: (t, x)
    assert m(5) == (1, 5)
    with pytest.raises(NotImplementedError):
        TaskKeyedExperts.attach_experts(TaskKeyedConfig(), m, 2)
    for fn in (lambda: TaskKeyedExperts.expert_features(s, 0, None), lambda: TaskKeyedExperts.query_features(s, None),
               lambda: TaskKeyedExperts.expert_parameters(s, 0)):
        with pytest.raises(NotImplementedError):
            fn()


# -- training ------------------------------------------------------------------------------------------------
def test_each_experience_trains_its_own_expert_and_head_only():
    s, sc = build(lr=0.1)
    assert s.expert_size(0) == 4  # v_0
    opt = {id(p) for g in s.optimizer.param_groups for p in g["params"]}  # before any experience: task 0's
    assert opt == {id(s.model.experts[0].v), id(s.model.heads[0].weight), id(s.model.heads[0].bias)}
    s.before_experience(sc[0])
    assert s.task == 0 and s.model.current == 0 and s.activated == [0]
    opt = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert opt == {id(s.model.experts[0].v), id(s.model.heads[0].weight), id(s.model.heads[0].bias)}
    s.after_experience(sc[0])
    s.before_experience(sc[1])
    assert s.task == 1 and s.model.current == 1 and s.activated[-1] == 1
    opt = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert opt == {id(s.model.experts[1].v), id(s.model.heads[1].weight), id(s.model.heads[1].bias)}
    before = {n: p.detach().clone() for n, p in s.model.named_parameters()}
    s.model.train()
    s.train_step(sc[1].train_x, sc[1].train_y)
    moved = {n for n, p in s.model.named_parameters() if not torch.equal(p.detach(), before[n])}
    assert moved == {"experts.1.v", "heads.1.weight", "heads.1.bias"}
    with pytest.raises(RuntimeError, match="built for 2 tasks"):
        s.before_experience(sc[1])


def test_train_step_marks_the_batch_classes_keeps_batchnorm_statistics_and_the_mode():
    s, sc = build()
    s.before_experience(sc[0])
    s.model.train()
    bn = {k: v.clone() for k, v in s.model.backbone.bn.state_dict().items()}
    s.train_step(sc[0].train_x[:1], sc[0].train_y[:1])  # class 0 only
    assert s.model.head_classes.tolist() == [[True, False, False, False], [False] * 4]
    assert s.model.seen.tolist() == [True, False, False, False]
    assert all(torch.equal(v, s.model.backbone.bn.state_dict()[k]) for k, v in bn.items())
    assert s.model.training and not s.model.backbone.bn.training
    s, sc = build(train_eval_mode=True)
    s.before_experience(sc[0])
    s.model.train()
    s.train_step(sc[0].train_x, sc[0].train_y)
    assert not s.model.training


def test_loss_is_cross_entropy_of_the_tasks_head_over_its_classes():
    s, sc = build()
    train(s, sc[0])
    s.after_experience(sc[0])
    s.before_experience(sc[1])
    s.model.eval()  # BatchNorm on its running statistics (0 / 1): the backbone is the identity
    s.model.head_classes[1, 2] = True  # class 3 not yet marked for head 1: it gets -inf
    with torch.no_grad():
        s.model.experts[1].v.copy_(torch.tensor([0.5, -1.0, 0.0, 2.0]))
    x, y = sc[1].train_x[:4], torch.tensor([2, 2, 2, 2])
    h = x + torch.tensor([0.5, -1.0, 0.0, 2.0])
    z = s.model.heads[1](h)
    want = -(z[:, 2] - torch.logsumexp(z[:, 2:3], dim=1)).mean()  # one class in the head: log-softmax of itself
    assert s.loss(x, y).item() == pytest.approx(want.item(), abs=1e-6) == pytest.approx(0.0, abs=1e-6)
    s.model.head_classes[1, 3] = True
    want = F.cross_entropy(z[:, 2:], y - 2)
    assert s.loss(x, y).item() == pytest.approx(want.item(), rel=1e-5)
    logits = s._forward_task(1, x)
    assert torch.isinf(logits[:, :2]).all() and (logits[:, :2] < 0).all()


# -- keys, identification, prediction --------------------------------------------------------------------
def test_after_experience_keys_on_frozen_features_and_class_mode_marks_every_class_of_the_experience():
    s, sc = build(n_keys=2)
    s.before_experience(sc[0])
    s.model.train()
    s.train_step(sc[0].train_x[:1], sc[0].train_y[:1])
    with torch.no_grad():
        s.model.experts[0].v.fill_(100.0)  # the expert moves far: frozen keys do not see it
    s.after_experience(sc[0])
    assert s.model.head_classes[0].tolist() == [True, True, False, False]  # class 1 never in a batch
    want = TaskKeys(2, "l2", seed=3)
    want.add(0, sc[0].train_x)
    assert torch.allclose(s.keys.keys, want.keys, atol=1e-6) and s.keys.owner.tolist() == [0, 0]
    assert s.n_trained == 1 and s.seen_tests == [(sc[0].test_x, 0)] and s.task_id_history == [1.0]
    assert s.activated[-1] == 0 and s.model.training  # _featurize restores the training mode
    s.before_experience(sc[1])
    s.model.eval()
    s.after_experience(sc[1])
    assert not s.model.training and s.n_trained == 2 and s.keys.owner.tolist() == [0, 0, 1, 1]
    # domain mode: a head scores the classes it was trained on, not the experience's list
    s, sc = build(mode="domain")
    s.before_experience(sc[0])
    s.model.train()
    s.train_step(sc[0].train_x[:1], sc[0].train_y[:1])
    s.after_experience(sc[0])
    assert s.model.head_classes[0].tolist() == [True, False, False, False]


def test_adapted_keys_come_from_the_tasks_expert_and_identify_scores_each_task_with_its_own():
    s, sc = build(keys="adapted", n_keys=1)
    shift = [torch.tensor([0.0, 0.0, 0.0, 9.0]), torch.tensor([0.0, 9.0, 0.0, 0.0])]
    for t in range(2):
        s.before_experience(sc[t])
        with torch.no_grad():
            s.model.experts[t].v.copy_(shift[t])
        s.after_experience(sc[t])
    s.model.eval()
    for t in range(2):  # one key per task: the normalised mean of the adapted normalised features
        f = F.normalize(sc[t].train_x + shift[t], dim=1)
        assert torch.allclose(s.keys.keys[t], f.mean(0), atol=1e-5)
    # a test sample is scored against task t's keys with expert t: a query that matches a key only once
    # shifted by its own task's expert
    x = torch.stack([sc[0].test_x[0], sc[1].test_x[0]])
    tasks, feats = s.identify(x)
    assert tasks.tolist() == [0, 1] and tuple(feats.shape) == (2, 2, 4)
    assert torch.allclose(feats[1], x + shift[1])
    d = torch.stack([torch.cdist(F.normalize(x + shift[t], dim=1), s.keys.keys[t:t + 1]).squeeze(1)
                     for t in range(2)], 1)
    assert torch.equal(tasks, d.argmin(1))
    assert s.task_id_history == [1.0, 1.0]
    out = s.predict(x)
    for i, t in enumerate(tasks.tolist()):
        assert torch.allclose(out[i], s._forward_task(t, x[i:i + 1])[0], atol=1e-5)


def test_frozen_identification_and_grouped_prediction_use_each_samples_task():
    s, sc = build(n_keys=2)
    for t in range(2):
        train(s, sc[t])
        s.after_experience(sc[t])
    with torch.no_grad():
        for t in range(2):
            s.model.experts[t].v.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]) * (t + 1))
    s.model.eval()
    x = torch.cat([sc[1].test_x[:2], sc[0].test_x[:1], sc[1].test_x[2:3]])
    tasks, feats = s.identify(x)
    assert tasks.tolist() == [1, 1, 0, 1] and feats is None
    s.activated = []
    out = s.predict(x)
    assert s.activated[-1] == 1  # the current task's expert is active again after prediction
    for i, t in enumerate([1, 1, 0, 1]):
        assert torch.allclose(out[i], s._forward_task(t, x[i:i + 1])[0], atol=1e-6)
    assert torch.isinf(out[2, 2:]).all() and torch.isinf(out[0, :2]).all()


def test_oracle_task_id_and_the_current_expert_before_any_key():
    s, sc = build(task_id="oracle")
    s.before_experience(sc[0])
    s.model.eval()
    with torch.no_grad():
        for t in range(2):
            s.model.experts[t].v.fill_(t + 1.0)
            s.model.head_classes[t] = True
    x = sc[1].test_x[:3]
    assert s.keys.keys is None
    s.activated = []
    assert torch.allclose(s.predict(x, t=1), s._forward_task(1, x))
    assert s.activated[-1] == 0  # task 0's expert is the active one again after predicting with task 1's
    assert torch.allclose(s.predict(x), s._forward_task(0, x))  # no key yet (online test-then-train)
    assert torch.allclose(s.predict(x, t=1), s._forward_task(1, x))  # the given task id
    assert torch.allclose(s.predict(x, t=torch.tensor(1)), s._forward_task(1, x))
    s.after_experience(sc[0])  # keys of task 0 only: identification says 0 unless the task id is given
    assert torch.allclose(s.predict(x), s._forward_task(0, x))
    assert torch.allclose(s.predict(x, t=1), s._forward_task(1, x))
    s2, sc2 = build()
    s2.before_experience(sc2[0])
    s2.after_experience(sc2[0])
    s2.model.eval()
    with torch.no_grad():
        s2.model.experts[1].v.fill_(2.0)
        s2.model.head_classes[1] = True
    assert torch.allclose(s2.predict(x, t=1), s2._forward_task(0, x))  # task_id=keys ignores the given id
    s3, _ = build()
    s3.model.head_classes[0] = True
    s3.model.eval()
    s3.activated = []
    assert s3.task == -1 and torch.allclose(s3.predict(x), s3._forward_task(0, x))
    assert s3.activated == [0]  # before any experience, task 0's expert is the one left active


def test_task_id_accuracy_is_over_every_seen_test_sample_and_skips_empty_ones():
    s, sc = build(n_keys=1)
    train(s, sc[0])
    s.after_experience(sc[0])
    train(s, sc[1])
    s.after_experience(sc[1])
    assert s.task_id_history == [1.0, 1.0]
    s.seen_tests.append((sc[0].test_x[:2], 1))  # two samples of task 0 labelled task 1: 8 of 10 right
    s.seen_tests.append((sc[0].test_x[:0], 0))  # empty: no sample, no error
    assert s._task_id_accuracy() == pytest.approx(8 / 10)
    assert len(s._frozen_cache) == 3
    s.seen_tests = [(sc[0].test_x[:0], 0)]
    assert math.isnan(s._task_id_accuracy())
    s.seen_tests = [(sc[0].test_x[:0], 0), (sc[1].test_x[:3], 0)]  # an empty one first: the next still counts
    assert s._task_id_accuracy() == 0.0
    cached = TaskKeyedExperts.__new__(Shifted)
    cached.__dict__.update(s.__dict__)
    x = sc[1].test_x
    cached.seen_tests = [(x, 0)]
    cached._frozen_cache = {id(x): torch.zeros(len(x), 4) + torch.tensor([1.0, 0, 0, 0])}  # cached: task 0's axis
    assert cached._task_id_accuracy() == 1.0
    s, sc = build(keys="adapted", n_keys=1)
    for t in range(2):
        s.before_experience(sc[t])
        s.after_experience(sc[t])
    assert s.task_id_history == [1.0, 1.0] and s._frozen_cache == {}


def test_extra_metrics_count_the_head_rows_each_task_uses():
    s, sc = build()
    m = s.extra_metrics()
    assert m == {"params_per_task": 4, "added_params_total": 4} and "task_id_acc" not in m  # no task: 1 expert
    train(s, sc[0])
    s.after_experience(sc[0])
    s.before_experience(sc[1])
    s.model.train()
    s.train_step(sc[1].train_x[:1], sc[1].train_y[:1])  # head 1: class 2 only so far
    m = s.extra_metrics()
    assert m["params_per_task"] == 4 + 5 * 2 and m["added_params_total"] == 4 * 1 + 5 * 2
    s.after_experience(sc[1])
    m = s.extra_metrics()
    assert m["params_per_task"] == 4 + 5 * 2 and m["added_params_total"] == 4 * 2 + 5 * 4
    assert m["task_id_acc"] == 1.0 and m["task_id_acc_per_exp"] == [1.0, 1.0]
    s.task_id_history.append(0.25)
    m = s.extra_metrics()
    assert m["task_id_acc"] == 0.25 and m["task_id_acc_per_exp"] == [1.0, 1.0, 0.25]
    assert m["task_id_acc_per_exp"] is not s.task_id_history


def test_state_round_trip_restores_keys_task_and_history():
    s, sc = build(n_keys=2)
    train(s, sc[0])
    s.after_experience(sc[0])
    st = s.extra_state()
    assert st["task"] == 0 and st["n_trained"] == 1 and st["task_id_history"] == [1.0]
    assert torch.equal(st["keys"]["keys"], s.keys.keys) and st["keys"]["owner"].tolist() == [0, 0]
    t, _ = build(n_keys=2)
    t.activated = []
    t.load_extra_state(st)
    assert t.task == 0 and t.n_trained == 1 and t.task_id_history == [1.0] and t.model.current == 0
    assert torch.equal(t.keys.keys, s.keys.keys) and t.activated == [0]
    st["task"] = 1
    del st["task_id_history"]  # a checkpoint written before the history was kept
    t.load_extra_state(st)
    assert t.model.current == 1 and t.activated[-1] == 1 and t.task_id_history == []
    st["task"] = -1
    t.load_extra_state(st)
    assert t.model.current == 0 and t.activated[-1] == 0


# -- CoLoR (LoRA through peft) and finetune-lora ----------------------------------------------------------
class Mlp(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(4, 6), nn.Linear(6, 5)
        self.out_dim = 5

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


def test_color_one_lora_adapter_per_task_switched_for_training_and_prediction():
    model = CoLoR.build_model(CoLoRConfig(r=2, targets=["fc1"]), Mlp(), scenario())
    assert model.lora.active == "task0"  # the built model runs task 0's adapter (before any strategy exists)
    assert {n for n, p in model.backbone.named_parameters() if p.requires_grad} == \
        {"fc1.lora_A.task0.weight", "fc1.lora_B.task0.weight"}
    s, sc = build(CoLoR, CoLoRConfig, backbone=Mlp(), r=2, alpha=4, lr=0.05, targets=["fc1"])
    lora = s.lora
    assert lora is s.model.lora and lora.names == ["task0", "task1"] and lora.active == "task0"
    assert (lora.r, lora.alpha, lora.targets) == (2, 4, ["fc1"])
    assert s.expert_size(1) == 2 * 4 + 6 * 2  # A (r x 4) and B (6 x r) on fc1 only
    names = {n for n, p in s.model.backbone.named_parameters() if any(p is q for q in s.expert_parameters(1))}
    assert names == {"fc1.lora_A.task1.weight", "fc1.lora_B.task1.weight"}
    x = sc[0].train_x
    base = s.query_features(x)
    train(s, sc[0], steps=3)
    assert lora.active == "task0"
    opt = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert opt == {id(p) for p in s.expert_parameters(0)} | {id(p) for p in s.model.heads[0].parameters()}
    with torch.no_grad():
        adapted = s.expert_features(0, x)
        assert not torch.allclose(adapted, base, atol=1e-4)  # task 0's adapter has moved
        assert torch.allclose(s.query_features(x), base, atol=1e-6)  # adapters off: the frozen backbone
        assert lora.active == "task0"
        assert torch.allclose(s.expert_features(1, x), base, atol=1e-6)  # task 1's adapter: still the identity
        assert lora.active == "task1"
        assert torch.allclose(s.expert_features(0, x), adapted)
    s.after_experience(sc[0])
    assert lora.active == "task0"
    s.before_experience(sc[1])
    assert lora.active == "task1"
    opt = {id(p) for g in s.optimizer.param_groups for p in g["params"]}
    assert opt == {id(p) for p in s.expert_parameters(1)} | {id(p) for p in s.model.heads[1].parameters()}
    s.activate(0)
    assert lora.active == "task0"
    assert s.make_optimizer() is not None and lora.active == "task1"  # the optimiser of the current task
    s.task = -1
    opt = s.make_optimizer()
    assert lora.active == "task0"  # before the first experience: task 0's adapter and head
    assert {id(p) for g in opt.param_groups for p in g["params"]} == \
        {id(p) for p in s.expert_parameters(0)} | {id(p) for p in s.model.heads[0].parameters()}


def test_color_and_finetune_lora_are_registered():
    from cl.core.registry import strategies

    for name, cls in (("color", CoLoR), ("finetune-lora", FinetuneLoRA)):
        e = strategies.get(name)
        assert (e.obj.__module__, e.obj.__qualname__) == ("strategies.color", cls.__qualname__)
        assert e.config.__qualname__ == cls.__qualname__ + "Config"


def test_color_lora_dropout_reaches_peft():
    s, _ = build(CoLoR, CoLoRConfig, backbone=Mlp(), targets=["fc1"], lora_dropout=0.25)
    assert s.lora.dropout == 0.25
    assert s.model.backbone.fc1.lora_dropout["task0"].p == 0.25


def test_finetune_lora_trains_one_shared_adapter_and_a_head_at_its_own_rate():
    torch.manual_seed(0)
    sc = scenario()
    cfg = FinetuneLoRAConfig(r=2, alpha=4, targets=["fc2"], lr=0.01, head_lr=0.2)
    model = FinetuneLoRA.build_model(cfg, Mlp(), sc)
    assert model.lora.names == ["shared"] and model.lora.active == "shared" and model.lora.targets == ["fc2"]
    assert (model.lora.r, model.lora.alpha) == (2, 4)
    s = FinetuneLoRA(cfg, model, RunInfo(4, (4,), torch.device("cpu"), 0))
    groups = s.optimizer.param_groups
    assert [g["lr"] for g in groups] == [0.01, 0.2]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in model.lora.parameters("shared")}
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.head.parameters()}
    x, y = sc[0].train_x, sc[0].train_y
    model.head.observe(y)
    assert s.loss(x, y).item() == pytest.approx(F.cross_entropy(model(x), y).item(), rel=1e-6)
    assert torch.equal(s.predict(x), model(x))
    model.train()
    s.train_step(x, y)
    assert model.training


class Bag(nn.Module):
    """A text encoder whose output depends on the padding it is given: the mean of every position's embedding."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.out_dim = 4

    def forward(self, x):
        return self.emb(x).mean(1)


def test_token_batches_are_trimmed_of_padding_for_the_loss_the_keys_and_prediction():
    sc = scenario()
    sc.preprocess_fn = lambda dev: (lambda v: v)  # token ids stay integers (as a text backbone's preprocess does)
    s, sc = build(sc=sc, backbone=Bag(), n_keys=1, feature_batch=1)
    x = torch.tensor([[3, 4, 0, 0], [5, 0, 0, 0]])
    y = torch.tensor([0, 1])
    bb = s.model.backbone
    s.before_experience(sc[0])
    s.model.head_classes[0, :2] = True
    want = F.cross_entropy(s.model.heads[0](bb(x[:, :2]))[:, :2], y)
    assert s.loss(x, y).item() == pytest.approx(want.item(), rel=1e-6)
    assert s.loss(x, y).item() != pytest.approx(F.cross_entropy(s.model.heads[0](bb(x))[:, :2], y).item(), rel=1e-4)
    s.augment = lambda v: v[:, :1]  # the run's augmentation replaces the trimming
    want = F.cross_entropy(s.model.heads[0](bb(x[:, :1]))[:, :2], y)
    assert s.loss(x, y).item() == pytest.approx(want.item(), rel=1e-6)
    s.augment = None
    # keys from features computed feature_batch (1) samples at a time, each trimmed to its own length
    exp = Experience(x, y, x, y, [0, 1], None, 0)
    s.after_experience(exp)
    per_sample = torch.cat([bb(x[:1, :2]), bb(x[1:, :1])])
    assert torch.allclose(s.keys.keys[0], F.normalize(per_sample, dim=1).mean(0), atol=1e-5)  # one centre: the mean
    whole = F.normalize(torch.cat([bb(x[:, :2])]), dim=1).mean(0)  # the batch trimmed as one
    assert not torch.allclose(s.keys.keys[0], whole, atol=1e-3)
    with torch.no_grad():
        assert torch.allclose(s.predict(x), s._forward_task(0, x[:, :2]), atol=1e-6)
