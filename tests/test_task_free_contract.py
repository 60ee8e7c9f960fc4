"""Task-free streams hide their boundaries from the learner (scenario.boundaries hidden, blurry, gradual).

Before this contract the engine handed every strategy the whole experience at each hidden boundary, and the
checks of ten strategies (FeCAM, RanPAC, SLCA, InfLoRA, LAE, DualPrompt, CODA-Prompt, HiDe-Prompt, APER, EASE)
compared ``boundaries`` with "none", a value that does not exist, so they, and EWC, SI, MAS, RWalk, L2P, SSIAT,
PRD, CoLoR, CL2R, S-Prompts and the linear probe, which had no check, learned at the boundaries a task-free
stream is meant to hide.  Now the boundary hooks get a ``HiddenBoundary`` (the
evaluation point's index only) and a strategy that overrides a boundary hook without declaring ``task_free``
is refused with a ConfigError naming ``scenario.boundaries``."""
from __future__ import annotations

import dataclasses

import pytest

from cl.core.config import resolve
from cl.core.registry import ConfigError, scenarios, strategies
from cl.core.strategy import Strategy, register
from cl.core.streams import Experience, HiddenBoundary
from cl.data import task_free
from cl.train.engine import Run

from test_reliability_state import _configs, _project_strategies

#: strategies that read an experience at its boundary (teacher, per-task memory, importance, class mask,
#: per-task parameters or statistics): each must refuse a task-free stream
LEARN_AT_BOUNDARIES = {"ewc", "si", "mas", "rwalk", "lwf", "lwf-mc", "icarl", "lucir", "podnet", "bic", "gem", "xder",
                       "cl2r", "l2p", "l2l", "linear-probe", "sprompts", "prd", "color", "ssiat", "fecam",
                       "ranpac", "slca", "inflora", "lae", "dualprompt", "coda-prompt", "hide-prompt", "aper",
                       "ease", "ocm", "joint", "packnet", "hat", "rmn", "pnn", "hnet", "hnet-rnn"}
#: strategies that run on task-free streams with their default settings
TASK_FREE = {"finetune", "er", "er-ace", "er-aml", "uer", "der", "derpp", "mir", "gss", "aser", "rar", "scr",
             "pcr", "onpro", "gdumb", "ncm", "slda", "kalman", "recency"}


def _task_free_variant(base: str) -> str:
    """``tf-<base>``: the tiny scenario ``base`` with a ``boundaries`` field, made task-free by cl/data/task_free.py."""
    name = f"tf-{base}"
    if name not in scenarios.names():
        entry = scenarios.get(base)
        Cfg = dataclasses.make_dataclass(f"TaskFree{entry.config.__name__}", [("boundaries", str, "hidden")],
                                         bases=(entry.config,))

        def build(cfg, seed):
            fields = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(entry.config)}
            sc = entry.obj(entry.config(**fields), seed)
            kind = cfg.boundaries
            return (sc if kind == "visible" else task_free.hide_boundaries(sc) if kind == "hidden"
                    else task_free.blurry(sc, 0.5, 0.2) if kind == "blurry" else task_free.gradual(sc, 0.5))

        scenarios.register(name, Cfg)(build)
    return name


def _hidden(raw: dict) -> dict:
    return {**raw, "scenario": {**raw["scenario"], "name": _task_free_variant(raw["scenario"]["name"]),
                                "boundaries": "hidden"},
            "protocol": {"name": "online", "batch_size": 8}, "wandb": "off"}


@pytest.mark.parametrize("name", _project_strategies())
def test_every_strategy_on_a_hidden_stream_runs_without_boundaries_or_refuses(tmp_path, name):
    """Each registered strategy, on a stream with hidden boundaries: it refuses (ConfigError naming
    scenario.boundaries), or it runs to the end with hooks that never read the hidden experience."""
    refused, errors = None, []
    for i, raw in enumerate(_configs(name)):
        try:
            cfg = resolve(_hidden(raw))
            res = Run(cfg, progress=False, out_dir=tmp_path / str(i)).execute()
        except ConfigError as e:
            if "scenario.boundaries" in str(e) or "needs task ids" in str(e):  # task-free streams have none
                refused = str(e)
                break
            errors.append(str(e))  # a configuration this strategy cannot build (backbone, task ids...)
            continue
        assert res["status"] == "finished", f"{name}: {res.get('error')}"  # AttributeError: hidden experience
        assert strategies.get(name).obj.runs_task_free(), name
        break
    else:
        pytest.fail(f"{name}: no tiny configuration builds: {errors}")
    if name in LEARN_AT_BOUNDARIES:
        assert refused, f"{name} learns at boundaries but ran on a hidden-boundary stream"
        assert "valid choice: scenario.boundaries=visible" in refused or "needs task ids" in refused, refused
    if name in TASK_FREE:
        assert refused is None, f"{name} is task-free but refused: {refused}"


class Spy(Strategy):
    """Records what its boundary hooks receive."""

    task_free = True
    transient_attrs = ("seen",)

    def setup(self):
        self.seen = []

    def before_experience(self, exp):
        self.seen.append(("before", exp))

    def after_experience(self, exp):
        self.seen.append(("after", exp))


class Leaky(Strategy):
    """Overrides a boundary hook without declaring task_free."""

    def after_experience(self, exp):
        self.classes = list(exp.classes)


register("test-taskfree-spy")(Spy)
register("test-taskfree-leaky")(Leaky)


def _raw(name, boundaries):
    return {"strategy": {"name": name}, "seed": 0, "wandb": "off", "backbone": {"name": "mlp", "hidden": 8},
            "scenario": {"name": _task_free_variant("gaussian"), "n_tasks": 3, "n_classes": 6, "train_per_class": 4,
                         "test_per_class": 2, "boundaries": boundaries},
            "protocol": {"name": "online", "batch_size": 4}}


@pytest.mark.parametrize("boundaries", ["visible", "hidden", "blurry", "gradual"])
def test_boundary_hooks_see_the_experience_only_when_boundaries_are_visible(tmp_path, boundaries):
    r = Run(resolve(_raw("test-taskfree-spy", boundaries)), progress=False, out_dir=tmp_path)
    assert r.execute()["status"] == "finished"
    seen = r.strategy.seen
    assert [(w, e.index) for w, e in seen] == [(w, i) for i in range(3) for w in ("before", "after")]
    if boundaries == "visible":
        assert all(isinstance(e, Experience) for _, e in seen)
        assert seen[0][1].classes == r.scenario.experiences[0].classes
        return
    for _, e in seen:
        assert isinstance(e, HiddenBoundary) and e.task_id is None and e.boundaries == boundaries
        for field in ("classes", "train_x", "train_y", "test_y"):
            with pytest.raises(AttributeError, match=rf"experience.{field} is hidden.*{boundaries}"):
                getattr(e, field)


def test_a_strategy_with_boundary_hooks_must_declare_it_is_task_free(tmp_path):
    with pytest.raises(ConfigError, match=r"'test-taskfree-leaky'.*after_experience.*scenario.boundaries='blurry'"
                                          r".*valid choice: scenario.boundaries=visible"):
        Run(resolve(_raw("test-taskfree-leaky", "blurry")), progress=False, out_dir=tmp_path / "a").execute()
    r = Run(resolve(_raw("test-taskfree-leaky", "visible")), progress=False, out_dir=tmp_path / "b")
    assert r.execute()["status"] == "finished" and r.strategy.classes == r.scenario.experiences[-1].classes
    assert not Leaky.runs_task_free() and Spy.runs_task_free() and Strategy.runs_task_free()
    assert Leaky.boundary_hooks() == ["after_experience"] and Strategy.boundary_hooks() == []


def test_a_task_free_declaration_covers_only_the_hooks_of_the_class_that_makes_it():
    """A subclass of a declared task-free strategy that overrides a boundary hook again must declare again;
    one that overrides nothing, or another hook kind, inherits the declaration (ER declares it for its
    exclude_current bookkeeping; ER-ACE inherits it)."""
    from strategies.er import ER
    from strategies.er_ace import ERACE

    class Again(Spy):
        def after_experience(self, exp):
            self.classes = list(exp.classes)

    class Plain(Spy):
        def loss(self, x, y, t=None):
            return super().loss(x, y, t)

    class Declared(Again):
        task_free = True

    class Refused(Spy):
        task_free = False

    class Below(Refused):
        pass

    assert Spy.runs_task_free() and Plain.runs_task_free() and Declared.runs_task_free()
    assert not Again.runs_task_free() and not Refused.runs_task_free() and not Below.runs_task_free()
    assert ER.runs_task_free() and ERACE.runs_task_free()

    class Patched(ERACE):  # a hook set to the function it inherits (a test's patch, undone) overrides nothing
        pass

    Patched.before_experience = ER.before_experience
    assert Patched.runs_task_free()


@pytest.mark.parametrize("name,field,fix", [("pec", "lr_decay", "strategy.lr_decay=false"),
                                            ("agem", "memory", "strategy.memory=reservoir"),
                                            ("center-loss", "freeze", "strategy.freeze=false")])
def test_boundary_options_refuse_task_free_streams_and_name_the_alternative(tmp_path, name, field, fix):
    with pytest.raises(ConfigError, match=rf"scenario.boundaries='hidden'.*{fix}"):
        Run(resolve(_raw(name, "hidden")), progress=False, out_dir=tmp_path / "a").execute()
    value = {"lr_decay": False, "memory": "reservoir", "freeze": False}[field]
    raw = _raw(name, "hidden")
    raw["strategy"][field] = value
    assert Run(resolve(raw), progress=False, out_dir=tmp_path / "b").execute()["status"] == "finished"


def test_hidden_boundary_is_what_a_strategy_may_know():
    b = HiddenBoundary(2, "gradual")
    assert b.index == 2 and b.task_id is None
    with pytest.raises(AttributeError, match="only .index is known"):
        b.train_x  # noqa: B018
    assert not hasattr(b, "classes")
