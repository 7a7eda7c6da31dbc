"""A study whose runs cannot be built is refused before its store is written."""

import pytest

from optimlab.errors import OptimlabError
from optimlab.study import parse_study, run_study

STUDY = """name = "refused"
dataset = "mnist-10k:0,1"
model = "mlp"
batch_size = 100
iterations = 4
seeds = [0]
learning_rates = [0.1]
optimizers = ["sgd"]
"""


@pytest.mark.parametrize("change, message", [
    (("batch_size = 100", "batch_size = 100000"), "batch size 100000 is larger than the training set"),
    (('optimizers = ["sgd"]', 'optimizers = ["sgd"]\n[model_options]\nwidth = 3'),
     "model 'mlp' has no option width"),
    (('model = "mlp"', 'model = "linear"'), "for regression"),
    (('optimizers = ["sgd"]', 'optimizers = ["exact-flow"]'), "ExactFlow needs a linear model"),
])
def test_nothing_is_written_for_a_run_that_cannot_be_built(tmp_path, change, message):
    spec = parse_study(STUDY.replace(*change))
    with pytest.raises(OptimlabError, match=message):
        run_study(spec, out=tmp_path / "study", progress=False)
    assert not (tmp_path / "study").exists()


@pytest.mark.parametrize("kind", ["processes", "ray"])
def test_objects_without_an_import_path_are_refused_for_other_processes(tmp_path, kind):
    import torch.nn.functional as F

    from optimlab.study import build_study

    spec = build_study(name="lambda", dataset="mnist-10k:0,1", model="logreg", batch_size=100,
                       iterations=4, seeds=[0], learning_rates=[0.1], optimizers=["sgd"],
                       loss=lambda out, y: F.cross_entropy(out, y))
    with pytest.raises(OptimlabError, match=f"the {kind} executor trains in other processes, which cannot "
                                            "receive Python objects without an import path \\(loss: "
                                            "<python: .*<lambda>>"):
        run_study(spec, out=tmp_path / "study", executor=kind, progress=False)
    assert not (tmp_path / "study").exists()
    # the same study runs here
    assert run_study(spec, out=tmp_path / "here", executor="sequential", progress=False).completed == 1
