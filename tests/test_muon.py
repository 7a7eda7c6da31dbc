import copy
import inspect
import io

import pytest
import torch
from torch import nn

from optimlab.muon import MuonWithAdamW

pytestmark = pytest.mark.skipif(not hasattr(torch.optim, "Muon"), reason="torch without torch.optim.Muon")

CUSTOM = {"lr": 0.02, "weight_decay": 0.05, "momentum": 0.9, "nesterov": False, "ns_steps": 4,
          "ns_eps": 1e-6, "adjust_lr_fn": "original", "betas": (0.8, 0.99), "eps": 1e-6, "amsgrad": True}


def mlp(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)


def batches(n, dtype=torch.float32, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [(torch.randn(16, 4, generator=gen, dtype=dtype), torch.randn(16, 3, generator=gen, dtype=dtype))
            for _ in range(n)]


def train_step(model, opts, x, y):
    for opt in opts:
        opt.zero_grad()
    nn.functional.mse_loss(model(x), y).backward()
    for opt in opts:
        opt.step()


def by_hand(model, hp):
    """torch.optim.Muon on the matrices and torch.optim.AdamW on the rest, with ``hp`` (ours' names)."""
    hp = {**{k: p.default for k, p in inspect.signature(MuonWithAdamW).parameters.items() if k != "params"},
          **hp}
    matrices = [p for p in model.parameters() if p.ndim == 2]
    rest = [p for p in model.parameters() if p.ndim != 2]
    muon = torch.optim.Muon(matrices, lr=hp["lr"], weight_decay=hp["weight_decay"], momentum=hp["momentum"],
                            nesterov=hp["nesterov"], ns_coefficients=hp["ns_coefficients"], eps=hp["ns_eps"],
                            ns_steps=hp["ns_steps"], adjust_lr_fn=hp["adjust_lr_fn"]) if matrices else None
    adamw = torch.optim.AdamW(rest, lr=hp["lr"], betas=hp["betas"], eps=hp["eps"],
                              weight_decay=hp["weight_decay"], amsgrad=hp["amsgrad"]) if rest else None
    return [opt for opt in (muon, adamw) if opt is not None]


def assert_same_params(a, b):
    for (name, pa), pb in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(pa, pb, atol=0, rtol=0, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("hp", [{}, CUSTOM], ids=["defaults", "custom"])
def test_equals_muon_and_adamw_by_hand(hp):
    model = mlp()
    ref = copy.deepcopy(model)
    opt = MuonWithAdamW(model.parameters(), **hp)
    ref_opts = by_hand(ref, hp)
    assert [g["use_muon"] for g in opt.param_groups] == [True, False]
    for x, y in batches(5):
        train_step(model, [opt], x, y)
        train_step(ref, ref_opts, x, y)
        assert_same_params(model, ref)
    # optimizer.state[p] is torch's per-parameter state of the side p is on
    ref_state = {**ref_opts[0].state, **ref_opts[1].state}
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert set(opt.state[p]) == set(ref_state[q])
        assert ("momentum_buffer" in opt.state[p]) == (p.ndim == 2)
        for key in opt.state[p]:
            torch.testing.assert_close(opt.state[p][key], ref_state[q][key], atol=0, rtol=0)


def test_state_dict_round_trip():
    data = batches(6)
    model = mlp()
    opt = MuonWithAdamW(model.parameters(), **CUSTOM)
    for x, y in data[:3]:
        train_step(model, [opt], x, y)
    buffer = io.BytesIO()
    torch.save(opt.state_dict(), buffer)
    resumed = copy.deepcopy(model)
    for x, y in data[3:]:
        train_step(model, [opt], x, y)

    buffer.seek(0)
    fresh = MuonWithAdamW(resumed.parameters(), **CUSTOM)
    fresh.load_state_dict(torch.load(buffer, weights_only=True))
    assert [g["use_muon"] for g in fresh.param_groups] == [True, False]
    assert fresh.muon.param_groups[0] is fresh.param_groups[0]
    assert fresh.adamw.param_groups[0] is fresh.param_groups[1]
    assert fresh.muon.state is fresh.state and fresh.adamw.state is fresh.state
    for x, y in data[3:]:
        train_step(resumed, [fresh], x, y)
    assert_same_params(resumed, model)


def test_load_state_dict_rejects_swapped_sides():
    model = mlp()
    opt = MuonWithAdamW(model.parameters())
    saved = opt.state_dict()
    saved["param_groups"][0]["use_muon"] = False
    with pytest.raises(ValueError, match="Muon"):
        opt.load_state_dict(saved)


@pytest.mark.parametrize("make", [
    lambda opt: torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5),
    lambda opt: torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 0.5 ** epoch),
], ids=["StepLR", "LambdaLR"])
def test_lr_scheduler_changes_both_lrs(make):
    model = mlp()
    opt = MuonWithAdamW(model.parameters(), lr=0.01)
    scheduler = make(opt)
    for epoch in range(1, 4):
        x, y = batches(1, seed=epoch)[0]
        train_step(model, [opt], x, y)
        scheduler.step()
        assert opt.muon.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** epoch)
        assert opt.adamw.param_groups[0]["lr"] == pytest.approx(0.01 * 0.5 ** epoch)


def test_lr_scheduler_lr_reaches_both_updates():
    model = mlp()
    opt = MuonWithAdamW(model.parameters(), lr=0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda epoch: 1.0 if epoch == 0 else 0.0)
    x, y = batches(1)[0]
    train_step(model, [opt], x, y)
    scheduler.step()  # lr -> 0: neither Muon nor AdamW (nor the weight decay) may move anything
    before = copy.deepcopy(model)
    train_step(model, [opt], x, y)
    assert_same_params(model, before)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("adjust_lr_fn", ["match_rms_adamw", "original"])
def test_update_is_linear_in_lr(weight_decay, adjust_lr_fn):
    """Same gradient history, lr a and b: each step is p -= lr * (weight_decay * p + d), d lr-free."""
    a, b = 1e-3, 0.03
    gen = torch.Generator().manual_seed(0)
    base = mlp(torch.float64)
    grads = [[torch.randn(p.shape, generator=gen, dtype=torch.float64) for p in base.parameters()]
             for _ in range(5)]
    models = {lr: copy.deepcopy(base) for lr in (a, b)}
    opts = {lr: MuonWithAdamW(m.parameters(), lr=lr, weight_decay=weight_decay, adjust_lr_fn=adjust_lr_fn)
            for lr, m in models.items()}
    p0 = [p.detach().clone() for p in base.parameters()]
    prev = {lr: [p.clone() for p in p0] for lr in (a, b)}
    for k, step_grads in enumerate(grads, start=1):
        for lr, model in models.items():
            for p, g in zip(model.parameters(), step_grads, strict=True):
                p.grad = g.clone()
            opts[lr].step()
        pa, pb = list(models[a].parameters()), list(models[b].parameters())
        for i in range(len(p0)):
            # the per-step direction without the decay is the same for both lrs ...
            da = (prev[a][i] - pa[i].detach()) / a - weight_decay * prev[a][i]
            db = (prev[b][i] - pb[i].detach()) / b - weight_decay * prev[b][i]
            torch.testing.assert_close(da, db, rtol=1e-9, atol=1e-10)
            # ... so without decay the whole displacement is linear in lr; with decay only the first step
            linear = torch.allclose((pa[i] - p0[i]) / a, (pb[i] - p0[i]) / b, rtol=1e-9, atol=1e-10)
            assert linear == (weight_decay == 0 or k == 1), (k, i)
        prev = {lr: [p.detach().clone() for p in models[lr].parameters()] for lr in (a, b)}


def test_model_without_matrices_is_adamw():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.Flatten(), nn.LayerNorm(8))  # 4-D kernel, 1-D rest
    ref = copy.deepcopy(model)
    opt = MuonWithAdamW(model.parameters(), lr=0.01)
    ref_opts = by_hand(ref, {"lr": 0.01})
    assert opt.muon is None and len(ref_opts) == 1 and isinstance(ref_opts[0], torch.optim.AdamW)
    gen = torch.Generator().manual_seed(1)
    for _ in range(3):
        x, y = torch.randn(5, 1, 4, 4, generator=gen), torch.randn(5, 8, generator=gen)
        train_step(model, [opt], x, y)
        train_step(ref, ref_opts, x, y)
        assert_same_params(model, ref)
    fresh = MuonWithAdamW(copy.deepcopy(model).parameters(), lr=0.01)
    fresh.load_state_dict(opt.state_dict())


def test_model_with_only_matrices_is_muon():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8, bias=False), nn.Tanh(), nn.Linear(8, 3, bias=False))
    ref = copy.deepcopy(model)
    opt = MuonWithAdamW(model.parameters(), lr=0.01)
    ref_opts = by_hand(ref, {"lr": 0.01})
    assert opt.adamw is None and len(ref_opts) == 1 and isinstance(ref_opts[0], torch.optim.Muon)
    for x, y in batches(3):
        train_step(model, [opt], x, y)
        train_step(ref, ref_opts, x, y)
        assert_same_params(model, ref)
    fresh = MuonWithAdamW(copy.deepcopy(model).parameters(), lr=0.01)
    fresh.load_state_dict(opt.state_dict())


def test_param_groups_are_split():
    model = mlp()
    first, last = model[0], model[4]
    opt = MuonWithAdamW(
        [{"params": first.parameters(), "lr": 0.1, "weight_decay": 0.0, "momentum": 0.5, "betas": (0.5, 0.9)},
         {"params": last.parameters(), "use_muon": False},
         {"params": model[2].parameters()}],
        lr=0.01,
    )
    groups = opt.param_groups
    assert [g["use_muon"] for g in groups] == [True, False, False, True, False]
    assert [g["lr"] for g in groups] == [0.1, 0.1, 0.01, 0.01, 0.01]
    assert groups[0]["momentum"] == 0.5 and "betas" not in groups[0]
    assert groups[1]["betas"] == (0.5, 0.9) and "momentum" not in groups[1]
    assert groups[0]["weight_decay"] == groups[1]["weight_decay"] == 0.0 and groups[2]["weight_decay"] == 0.1
    assert groups[2]["params"] == [last.weight, last.bias]
    assert opt.muon.param_groups == [groups[0], groups[3]]
    assert opt.adamw.param_groups == [groups[1], groups[2], groups[4]]
    x, y = batches(1)[0]
    train_step(model, [opt], x, y)


def test_named_parameters():
    model = mlp()
    opt = MuonWithAdamW(model.named_parameters())
    saved = opt.state_dict()
    assert saved["param_groups"][0]["param_names"] == ["0.weight", "2.weight", "4.weight"]
    assert saved["param_groups"][1]["param_names"] == ["0.bias", "2.bias", "4.bias"]
    MuonWithAdamW(copy.deepcopy(model).named_parameters()).load_state_dict(saved)


def test_from_module_puts_embeddings_on_adamw():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Embedding(10, 4), nn.Linear(4, 3))
    opt = MuonWithAdamW.from_module(model)
    assert opt.muon.param_groups[0]["params"] == [model[1].weight]
    assert opt.adamw.param_groups[0]["params"] == [model[1].bias]
    assert opt.adamw.param_groups[1]["params"] == [model[0].weight]
    nn.functional.mse_loss(model(torch.tensor([1, 2, 3])), torch.zeros(3, 3)).backward()
    opt.step()
    assert "exp_avg" in opt.state[model[0].weight]


def test_errors():
    weight, bias = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))
    with pytest.raises(ValueError, match="empty parameter list"):
        MuonWithAdamW([])
    with pytest.raises(ValueError, match="no parameters"):
        MuonWithAdamW([{"params": []}])
    with pytest.raises(ValueError, match="cannot split"):
        MuonWithAdamW([weight, {"params": [bias]}])
    with pytest.raises(ValueError, match="'params' entry"):
        MuonWithAdamW([{"params": [weight]}, bias])
    with pytest.raises(ValueError, match="2-D parameters only"):
        MuonWithAdamW([{"params": [bias], "use_muon": True}])
    with pytest.raises(ValueError, match="more than one"):
        MuonWithAdamW([{"params": [weight]}, {"params": [weight], "use_muon": False}])
    with pytest.raises(ValueError):  # torch.optim.Muon's own check, though no parameter is 2-D
        MuonWithAdamW([bias], momentum=-1.0)


def test_defaults_follow_torch():
    ours = {k: p.default for k, p in inspect.signature(MuonWithAdamW).parameters.items()}
    muon = {k: p.default for k, p in inspect.signature(torch.optim.Muon).parameters.items()}
    adamw = {k: p.default for k, p in inspect.signature(torch.optim.AdamW).parameters.items()}
    for key in ("lr", "weight_decay", "momentum", "nesterov", "ns_coefficients", "ns_steps"):
        assert ours[key] == muon[key], key
    assert ours["ns_eps"] == muon["eps"]
    for key in ("lr", "betas", "eps", "amsgrad", "foreach", "fused"):
        assert ours[key] == adamw[key], key
    assert ours["adjust_lr_fn"] == "match_rms_adamw"


def test_closure_and_zero_grad_and_deepcopy():
    model = mlp()
    opt = MuonWithAdamW(model.parameters())
    x, y = batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = nn.functional.mse_loss(model(x), y)
        loss.backward()
        return loss

    assert isinstance(opt.step(closure), torch.Tensor)
    opt.zero_grad(set_to_none=True)
    assert all(p.grad is None for p in model.parameters())
    twin = copy.deepcopy(opt)
    assert twin.muon.state is twin.state and twin.muon.param_groups[0] is twin.param_groups[0]
