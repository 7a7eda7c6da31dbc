import pytest

from optimlab.errors import OptimlabError
from optimlab.study import axes
from optimlab.study.spec import ExecutorSpec, parse_study

BASE = """
name = "t"
dataset = "mnist-10k"
model = "logreg"
batch_size = 100
epochs = 2
optimizers = ["sgd", "adam(betas=(0.9, 0.99))"]
learning_rates = [0.1, 0.01]
seeds = [0, 1]
"""


def test_the_grid_is_optimizers_by_learning_rates_by_seeds():
    spec = parse_study(BASE)
    assert tuple(tuple(p.values())[:3] for p in spec.grid) == (
        ("sgd", 0.1, 0), ("sgd", 0.1, 1), ("sgd", 0.01, 0), ("sgd", 0.01, 1),
        ("adam(betas=(0.9, 0.99))", 0.1, 0), ("adam(betas=(0.9, 0.99))", 0.1, 1),
        ("adam(betas=(0.9, 0.99))", 0.01, 0), ("adam(betas=(0.9, 0.99))", 0.01, 1))
    assert all(set(tuple(p.values())[3:]) == {None} for p in spec.grid)  # no other axis varies
    configs = spec.configs()
    assert [c.optimizer for c in configs][:2] == ["sgd", "sgd"]
    assert {(c.batch_size, c.epochs, c.model) for c in configs} == {(100, 2, "logreg")}
    assert spec.executor == ExecutorSpec() and spec.executor.unit_kind == "groups"


def test_log_range_and_per_optimizer_learning_rates():
    spec = parse_study(BASE.replace("learning_rates = [0.1, 0.01]",
                                    "learning_rates = { from = 1e-5, to = 1e-1, count = 5 }")
                       .replace('"adam(betas=(0.9, 0.99))"', '{ name = "adam", learning_rates = [1e-3] }'))
    assert sorted({p['lr'] for p in spec.grid if p['optimizer'] == "sgd"}) == [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]
    assert {p['lr'] for p in spec.grid if p['optimizer'] == "adam"} == {1e-3}
    assert len(spec.grid) == 5 * 2 + 2


CONSTRAINED = BASE + """constraints = ["l2norm<=1"]
dual_optimizer = "adam"
dual_learning_rates = { from = 1e-3, to = 1e-1, count = 3 }
"""


def test_a_constrained_study_has_the_dual_learning_rate_as_a_grid_axis():
    spec = parse_study(CONSTRAINED)
    assert len(spec.grid) == 2 * 2 * 3 * 2
    assert [tuple(p.values())[:5] for p in spec.grid[:4]] == [
        ("sgd", 0.1, 0, 1e-3, None), ("sgd", 0.1, 1, 1e-3, None), ("sgd", 0.1, 0, 1e-2, None),
        ("sgd", 0.1, 1, 1e-2, None)]
    configs = spec.configs()
    assert {(tuple(c.constraints), c.dual_optimizer) for c in configs} == {(("l2norm<=1",), "adam")}
    assert [c.dual_lr for c in configs[:6]] == [1e-3, 1e-3, 1e-2, 1e-2, 0.1, 0.1]
    assert "dual_lr" not in spec.shared  # per run, not shared
    # without dual_learning_rates: the default dual lr, one value
    plain = parse_study(BASE + 'constraints = ["l2norm<=1"]\n')
    assert {c.dual_lr for c in plain.configs()} == {1e-3} and len(plain.grid) == 8
    # an unconstrained study's definition keeps the three-part runs of schema-1 stores
    assert '["sgd", 0.1, 0]' in parse_study(BASE).definition()


def test_penalty_coefficients_are_a_grid_axis_of_the_penalty_formulations():
    augmented = parse_study(CONSTRAINED + 'formulation = "augmented_lagrangian"\n'
                                          "penalty_coefficients = [1, 10]\n")
    assert len(augmented.grid) == 2 * 2 * 3 * 2 * 2
    assert [tuple(p.values())[:5] for p in augmented.grid[:2]] == [("sgd", 0.1, 0, 1e-3, 1.0),
                                                               ("sgd", 0.1, 1, 1e-3, 1.0)]
    config = augmented.configs()[2]
    assert (config.formulation, config.penalty, config.dual_lr) == ("augmented_lagrangian", 10.0, 1e-3)
    penalty = parse_study(BASE + 'constraints = ["l2norm<=1"]\nformulation = "quadratic_penalty"\n'
                                 "penalty_coefficients = { from = 1, to = 100, count = 3 }\n")
    assert [tuple(p.values())[3:5] for p in penalty.grid[:6:2]] == [(None, 1.0), (None, 10.0), (None, 100.0)]
    assert not penalty.configs()[0].has_multipliers
    assert '["sgd", 0.1, 0, null, 1.0]' in penalty.definition()


def test_the_definition_ignores_the_executor_but_not_the_grid():
    a = parse_study(BASE)
    b = parse_study(BASE + '\n[executor]\nkind = "processes"\nworkers = 3\n')
    c = parse_study(BASE.replace("seeds = [0, 1]", "seeds = [0, 2]"))
    assert a.definition() == b.definition() != c.definition()
    assert b.executor.kind == "processes" and b.executor.unit_kind == "groups"
    assert parse_study(BASE + '\n[executor]\nkind = "ray"\n').executor.unit_kind == "runs"


@pytest.mark.parametrize(
    "change, message",
    [
        (("", "foo = 1\n"), "unknown field 'foo'; valid fields: name, dataset"),
        (('name = "t"', ""), "missing field 'name'"),
        (("optimizers = [", "optimizers = [[["), "malformed TOML"),
        (('model = "logreg"', "model = \"logreg\"\nmodel = 'mlp'"), "(at line 5"),
        (("batch_size = 100", "batch_size = = 100"), "(at line 5, column 14)"),
        (('["sgd", "adam(betas=(0.9, 0.99))"]', "[]"), "optimizers must be a non-empty list"),
        (('["sgd", "adam(betas=(0.9, 0.99))"]', '["sgd", "adamm"]'), "optimizers[1]: unknown optimizer"),
        (('["sgd", "adam(betas=(0.9, 0.99))"]', '["sgd", "sgd()"]'), "duplicate configurations (4)"),
        (("[0.1, 0.01]", "[0.1, 0.1]"), "duplicate configurations"),
        (("[0.1, 0.01]", "[0.1, -0.01]"), "learning_rates: learning rate must be a finite number > 0"),
        (("[0.1, 0.01]", "[]"), "learning_rates must be a non-empty list"),
        (("[0.1, 0.01]", "{ from = 1, to = 0.1, count = 3 }"), "need from <= to"),
        (("seeds = [0, 1]", "seeds = [0, -1]"), "seeds must be a non-empty list of integers >= 0"),
        (("batch_size = 100", "batch_size = 0"), "batch_size must be an integer >= 1"),
        (("epochs = 2", "epochs = 2\niterations = 5"), "not both"),
        (("", '[executor]\nkind = "gpu-farm"\n'), "executor kind 'gpu-farm' is unknown; valid: sequential"),
        (("", "[executor]\nworkers = 0\n"), "executor workers must be an integer >= 1"),
        (("", "[executor]\nthreads = 2\n"), "executor: unknown field 'threads'"),
        (("", "dual_learning_rates = [0.1]\n"), "dual_learning_rates needs constraints"),
        (("", 'dual_optimizer = "adam"\n'), "dual_optimizer needs constraints"),
        (("", 'constraints = ["l2norm<=1"]\ndual_learning_rates = [0.1, 0]\n'),
         "dual_learning_rates: learning rate must be a finite number > 0"),
        (("", 'constraints = ["l2norm<=1"]\ndual_learning_rates = [0.1, 0.1]\n'),
         "duplicate configurations (8): sgd lr=0.1 dual_lr=0.1 seed=0"),
        (("", 'constraints = ["l2norm<<1"]\n'), "l2norm<<1"),
        (("", 'constraints = "l2norm<=1"\n'), "constraints must be a list"),
        (("", 'constraints = ["l2norm<=1"]\ndual_optimizer = "adamm"\n'), "unknown optimizer 'adamm'"),
        (("", 'formulation = "augmented_lagrangian"\n'), "formulation needs constraints"),
        (("", 'constraints = ["l2norm<=1"]\nformulation = "penalty"\n'),
         "formulation 'penalty' is unknown; valid: lagrangian, augmented_lagrangian, quadratic_penalty"),
        (("", 'constraints = ["l2norm<=1"]\npenalty_coefficients = [1]\n'),
         "penalty_coefficients need formulation = 'augmented_lagrangian' or 'quadratic_penalty'"),
        (("", 'constraints = ["l2norm<=1"]\nformulation = "quadratic_penalty"\ndual_learning_rates = [1]\n'),
         "dual_learning_rates: the quadratic penalty has no multipliers"),
        (("", 'constraints = ["l2norm<=1"]\nformulation = "quadratic_penalty"\npenalty_coefficients = [0]\n'),
         "penalty_coefficients: penalty coefficient must be a finite number > 0; got 0"),
    ],
)
def test_bad_study_files_name_the_field(change, message):
    old, new = change
    text = (BASE + new) if old == "" else BASE.replace(old, new, 1)
    with pytest.raises(OptimlabError) as e:
        parse_study(text, "study.toml")
    assert str(e.value).startswith("study.toml: ") and message in str(e.value)


def test_a_constrained_study_refuses_every_optimizer_that_is_not_torch_optim():
    text = CONSTRAINED.replace('"adam(betas=(0.9, 0.99))"', '"localflow-sgd"')
    with pytest.raises(OptimlabError, match="constraints need a torch.optim optimizer; localflow-sgd"):
        parse_study(text)


def test_the_example_study_files_are_valid():
    from pathlib import Path

    from optimlab.study.spec import load_study

    examples = sorted((Path(__file__).parents[2] / "examples").glob("*.toml"))
    assert len(examples) >= 3
    sizes = {p.stem: len(load_study(p).grid) for p in examples}
    assert sizes["lr_robustness"] == sizes["lr_robustness_fashion"] == 8 * 5 * 3  # seed 004's grid
    assert sizes["optimizers_mlp"] == 7 * 3
    assert sizes["suite"] == 7 * 4 * 6  # tasks x optimizers x learning rates, one seed
    assert sizes["deepobs_quadratic"] == 3 * 36  # DeepOBS's grid of 36 learning rates
    assert load_study(Path(__file__).parents[2] / "examples" / "deepobs_quadratic.toml").grid[1]["lr"] == \
        pytest.approx(10 ** -4.8)  # five a decade from 1e-5


def test_hyperparameters_are_grid_axes_expanded_into_the_optimizers():
    adam = ('{ name = "adam", learning_rates = [1e-3], '
            'hyperparameters = { betas = [[0.9, 0.999], [0.8, 0.99]] } }')
    text = BASE.replace('optimizers = ["sgd", "adam(betas=(0.9, 0.99))"]', f'optimizers = ["sgd", {adam}]')
    spec = parse_study(text + "[hyperparameters]\nweight_decay = [0.0, 1e-4]\n")
    labels = sorted({axes.key(p)[0] for p in spec.grid})
    # labelled without the settings at their defaults (adam's betas (0.9, 0.999), weight decay 0)
    assert labels == ["adam", "adam(betas=(0.8, 0.99))", "adam(betas=(0.8, 0.99), weight_decay=0.0001)",
                      "adam(weight_decay=0.0001)", "sgd", "sgd(weight_decay=0.0001)"]
    assert len(spec.grid) == (2 * 2 + 4 * 1) * 2  # sgd: 2 lrs; adam: its one lr; x 2 seeds
    assert {c.lr for c in spec.configs() if c.optimizer_label.startswith("adam")} == {1e-3}


@pytest.mark.parametrize("table, message", [
    ("momentum = [0.9]", "has no hyperparameter momentum"),  # adam takes no momentum
    ("lr = [0.1]", "the learning rate is the learning_rates axis"),
    ("momentum = []", "hyperparameters.momentum is a non-empty list"),
])
def test_a_hyperparameter_axis_an_optimizer_does_not_take_is_refused(table, message):
    with pytest.raises(OptimlabError, match=message):
        parse_study(BASE + f"[hyperparameters]\n{table}\n")


def test_a_hyperparameter_set_and_an_axis_at_once_is_refused():
    text = BASE.replace('"sgd", "adam(betas=(0.9, 0.99))"', '"adam(betas=(0.9, 0.99))"')
    with pytest.raises(OptimlabError, match="betas is both set and an axis"):
        parse_study(text + "[hyperparameters]\nbetas = [[0.9, 0.9]]\n")
