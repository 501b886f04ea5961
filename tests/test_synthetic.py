"""The synthetic Gaussian task: exact Bayes posterior, batched training == plain training, the entry point."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
import torch
import torch.nn.functional as F
from torch import nn

from mcmi.cmi import mcmi_loss
from mcmi.kernels import mlp_stack
from mcmi.synthetic import training as synthetic_training
from mcmi.synthetic import (
    DEFAULTS,
    PRESETS,
    TARGETS,
    MLPStack,
    bayes_posterior,
    noise_std,
    scale_of,
    split_sizes,
    resolve_config,
    run_synthetic,
    sample_gaussian,
    seeded_mlp,
    select_kernel,
    task_means,
    train_stack,
)
from synthetic_oracle import train_reference

KERNELS = {"torch": lambda: None, "cpp": mlp_stack}  # the C++ one is built on first use (~1 min)


def _small_task(num_points: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    means, sigma = task_means(4, 5, 1.5, task_seed=3), 2.0
    x, y = sample_gaussian(means, sigma, num_points, seed=3)
    return means, x, y, sigma


def test_bayes_posterior_matches_direct_density_and_is_stable() -> None:
    means, x, _, sigma = _small_task(50)
    log_joint = torch.stack([
        torch.distributions.MultivariateNormal(mu, sigma**2 * torch.eye(5, dtype=torch.float64)).log_prob(
            x.double()) for mu in means], dim=1)
    assert torch.allclose(bayes_posterior(x, means, sigma), torch.softmax(log_joint, dim=1), atol=1e-12)
    far = bayes_posterior(torch.full((1, 5), 1e4), means, sigma)
    assert torch.isfinite(far).all() and float(far.sum()) == pytest.approx(1.0)


def test_bayes_posterior_is_calibrated_on_samples() -> None:
    means, x, y, sigma = _small_task(200_000)
    p_star = bayes_posterior(x, means, sigma)
    frequencies = torch.bincount(y, minlength=4).double() / len(y)
    assert torch.allclose(p_star.mean(0), frequencies, atol=4e-3)
    # Monte-Carlo check of P(y = argmax | x) within bins of max P*: empirical frequency == mean P*.
    confidence, guess = p_star.max(1)
    correct = (guess == y).double()
    bins = torch.bucketize(confidence, torch.linspace(0.3, 1.0, 8))
    for b in bins.unique():
        inside = bins == b
        if inside.sum() > 2000:
            assert float(correct[inside].mean()) == pytest.approx(float(confidence[inside].mean()), abs=0.02)
    # argmax accuracy on samples == the expected Bayes accuracy E[max_y P*(y|x)] (within 4 std errors)
    assert abs(float(correct.mean() - confidence.mean())) < 4 * float(correct.std()) / len(y) ** 0.5


def _params_of(model: nn.Sequential) -> list[torch.Tensor]:
    out = []
    for layer in (m for m in model if isinstance(m, nn.Linear)):
        out += [layer.weight.detach().t(), layer.bias.detach().unsqueeze(0)]
    return out


@pytest.mark.slow
@pytest.mark.parametrize("kernel", sorted(KERNELS))
@pytest.mark.parametrize("optimizer", ["adam", "sgd"])
def test_batched_training_equals_plain_training(optimizer: str, kernel: str) -> None:
    _, x, y, _ = _small_task(150)  # 150 = 4 full batches of 32 and a partial one per epoch
    x = x.double()
    soft = torch.softmax(torch.randn(2, 150, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64), -1)
    models = [seeded_mlp(seed, 5, 8, 4, torch.float64) for seed in (11, 12)]
    stack = MLPStack.from_models(models)
    train_stack(stack, x, soft, [21, 22], epochs=3, batch_size=32, lr=1e-2, optimizer=optimizer,
                kernel=KERNELS[kernel](), log=lambda _: None)
    for member, (model, order_seed) in enumerate(zip(models, (21, 22))):
        train_reference(model, x, soft[member], order_seed, epochs=3, batch_size=32, lr=1e-2, optimizer=optimizer)
        for batched, plain in zip(stack.params, _params_of(model)):
            assert torch.allclose(batched[member], plain, rtol=1e-10, atol=1e-12)


def _mcmi_run(kernel, dtype: torch.dtype, hidden: int = 8) -> tuple[MLPStack, list[dict]]:
    _, x, y, _ = _small_task(150)
    stack = MLPStack.from_models([seeded_mlp(seed, 5, hidden, 4, dtype) for seed in (3, 4, 5)])
    log_q = torch.softmax(torch.randn(3, 4, 4, generator=torch.Generator().manual_seed(2), dtype=dtype), -1).log()
    history = train_stack(stack, x.to(dtype), F.one_hot(y, 4).to(dtype).expand(3, -1, -1), [7, 7, 8], epochs=2,
                          batch_size=32, lr=1e-2, schedule="cosine", lam=torch.tensor([0.0, 0.1, 0.3]),
                          log_centroids=log_q, labels=y, kernel=kernel, log=lambda _: None)
    return stack, history


@pytest.mark.slow   # builds the C++ kernel on first use (about a minute)
def test_cpp_kernel_equals_torch_steps_on_the_mcmi_objective() -> None:
    """Same members, same data order, shared (expanded) targets: the two kernels agree in float64 to
    rounding and in float32 to float32 precision, parameters and per-epoch losses alike."""
    for dtype, tol in ((torch.float64, 1e-12), (torch.float32, 2e-5)):
        (torch_stack, torch_history), (cpp_stack, cpp_history) = (_mcmi_run(None, dtype, hidden=24),
                                                                  _mcmi_run(mlp_stack(), dtype, hidden=24))
        assert torch.allclose(cpp_stack.flat, torch_stack.flat, rtol=tol, atol=tol)
        for ours, theirs in zip(cpp_history, torch_history):
            assert ours["loss_mean"] == pytest.approx(theirs["loss_mean"], rel=tol)


def test_mcmi_gradient_matches_autograd_of_cmi_loss() -> None:
    _, x, y, _ = _small_task(32)
    x = x.double()
    model = seeded_mlp(5, 5, 8, 4, torch.float64)
    stack = MLPStack.from_models([model])
    centroids = torch.softmax(torch.randn(4, 4, generator=torch.Generator().manual_seed(1), dtype=torch.float64), 1)
    lam = 0.3
    loss = stack.step_grads(x.unsqueeze(0), F.one_hot(y, 4).double().unsqueeze(0), torch.tensor([[[lam]]], dtype=torch.float64),
                            centroids.log()[y].unsqueeze(0))
    terms = mcmi_loss(model(x), y, centroids, lam)
    total = terms["ce"] + terms["cmi"]
    total.backward()
    assert float(loss[0]) == pytest.approx(total.item(), rel=1e-12)
    grads = []
    for layer in (m for m in model if isinstance(m, nn.Linear)):
        grads += [layer.weight.grad.t(), layer.bias.grad.unsqueeze(0)]
    for batched, plain in zip(stack.grads, grads):
        assert torch.allclose(batched[0], plain, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_non_finite_loss_raises(kernel: str) -> None:
    _, x, y, _ = _small_task(64)
    x[5, 0] = float("nan")
    stack = MLPStack.from_models([seeded_mlp(0, 5, 8, 4)])
    with pytest.raises(RuntimeError, match="stage 'nan-check' at epoch 1"):
        train_stack(stack, x, F.one_hot(y, 4).float().unsqueeze(0), [0], epochs=2, batch_size=32, lr=1e-3,
                    stage="nan-check", kernel=KERNELS[kernel](), log=lambda _: None)


def test_kernel_choice_falls_back_only_when_allowed(monkeypatch) -> None:
    def broken() -> None:
        raise RuntimeError("could not build the C++ MLP kernel (no compiler)")

    monkeypatch.setattr(synthetic_training, "mlp_stack", broken)
    messages: list[str] = []
    assert select_kernel("auto", log=messages.append) is None
    assert "no compiler" in messages[0] and "torch" in messages[0]
    with pytest.raises(RuntimeError, match="no compiler"):
        select_kernel("cpp")
    assert select_kernel("torch") is None
    with pytest.raises(ValueError, match="kernel must be one of"):
        resolve_config({"kernel": "cuda"})


@pytest.mark.slow
def test_run_synthetic_tiny_config_writes_all_records(tmp_path) -> None:
    config = {"num_points": 1000, "epochs": 2, "mcmi_epochs": 1, "seeds": [0, 1], "hidden": 16,
              "lambda_grid": [0.1, 0.2], "threads": 1, "log_every": 1}
    out = tmp_path / "synthetic.json"
    run_synthetic(config, 1.0, str(out))
    metrics = json.loads(out.read_text())
    final = metrics["final"]
    assert metrics["run"] == {"stage": "synthetic", "delta_mu": 1.0, "preset": "as_written", "scale": "reduced"}
    assert {(r["target"], r["seed"]) for r in final["records"]} == {(t, s) for t in TARGETS for s in (0, 1)}
    assert all(r["pdist_l2"] == 0 and r["pdist_mean"] == 0 for r in final["records"] if r["target"] == "GroundTruth")
    assert all(r["pdist_l2"] > 0 for r in final["records"] if r["target"] != "GroundTruth")
    assert {(t["variant"], t["seed"]) for t in final["teachers"]} == {(v, s) for v in ("MLL", "MCMI") for s in (0, 1)}
    assert final["lambda_selected"] in final["lambda_grid"] and set(final["lambda_scores"]) == {"0.1", "0.2"}
    assert metrics["provenance"]["config"]["epochs"] == 2 and metrics["history"]
    assert final["kernel"] == "cpp"  # "auto" builds and uses the C++ kernel where a compiler exists


def test_stale_build_lock_is_removed_and_a_live_one_kept(tmp_path) -> None:
    import os
    import time

    from mcmi.kernels import _remove_stale_lock

    lock = tmp_path / "lock"
    lock.touch()
    _remove_stale_lock(lock, max_age_s=600)
    assert lock.exists()  # a build in progress holds it
    old = time.time() - 3600
    os.utime(lock, (old, old))
    _remove_stale_lock(lock, max_age_s=600)
    assert not lock.exists()
    _remove_stale_lock(lock, max_age_s=600)  # nothing there: no error


def test_a_finished_build_is_imported_without_asking_ninja(monkeypatch) -> None:
    from torch.utils import cpp_extension

    from mcmi import kernels

    built = mlp_stack()  # built once per machine (or imported)
    library = Path(built.__file__)
    assert (library.parent / kernels.READY_FILE).read_text().strip() == library.name

    def no_rebuild(**_: object) -> None:
        raise AssertionError("a finished build was compiled again")

    monkeypatch.setattr(cpp_extension, "load", no_rebuild)
    again = kernels.mlp_stack.__wrapped__()
    assert Path(again.__file__) == library and callable(again.train_epoch)


def test_a_damaged_or_unfinished_build_is_not_imported(tmp_path) -> None:
    from mcmi.kernels import READY_FILE, _import_built

    assert _import_built("mcmi_mlp_stack_x", tmp_path) is None            # no ready file: never finished
    (tmp_path / READY_FILE).write_text("mcmi_mlp_stack_x.so\n")
    assert _import_built("mcmi_mlp_stack_x", tmp_path) is None            # ready file, library gone
    (tmp_path / "mcmi_mlp_stack_x.so").write_bytes(b"not a shared library")
    assert _import_built("mcmi_mlp_stack_x", tmp_path) is None            # damaged: rebuilt by the caller


# ------------------------------------------------------------------------------------------- presets
def test_presets_set_their_conventions_and_user_keys_override() -> None:
    written, authors = resolve_config({}), resolve_config({}, "authors_code")
    assert written == DEFAULTS                                   # as_written is today's behaviour
    assert {k: authors[k] for k in PRESETS["authors_code"]} == PRESETS["authors_code"]
    assert (authors["noise_param"], authors["optimizer"], authors["model_selection"], authors["pdist_split"]) == (
        "variance", "sgd", "best_val_acc", "train")
    assert resolve_config({"optimizer": "adam"}, "authors_code")["optimizer"] == "adam"
    with pytest.raises(ValueError, match="unknown preset"):
        resolve_config({}, "as_remembered")
    with pytest.raises(ValueError, match="lambda_grid"):
        resolve_config({"lambda_grid": [0.1, -0.1]})
    with pytest.raises(ValueError, match="split"):
        resolve_config({"split": [0.5, 0.2, 0.2]})
    assert scale_of(written) == scale_of(authors) == "paper"
    assert scale_of({**written, "num_points": 3000}) == scale_of({**written, "seeds": [0, 1]}) == "reduced"


def test_schema_names_every_synthetic_key() -> None:
    schema = yaml.safe_load((Path(__file__).resolve().parents[1] / "workflow/schemas/config.schema.yaml").read_text())
    table5 = schema["properties"]["experiments"]["properties"]["table5"]["properties"]
    assert set(table5["synthetic"]["properties"]) == set(DEFAULTS)
    assert set(table5["presets"]["items"]["enum"]) == set(PRESETS)


@pytest.mark.parametrize("preset, std", [("as_written", 4.0), ("authors_code", 2.0)])
def test_preset_data_generator_reads_sigma_as_std_or_variance(preset: str, std: float) -> None:
    cfg = resolve_config({}, preset)
    assert noise_std(cfg["sigma"], cfg["noise_param"]) == std
    means = task_means(10, 30, 1.0, task_seed=0)
    x, y = sample_gaussian(means, std, 20_000, seed=0)
    residual = x.double() - means[y]
    assert float(residual.std()) == pytest.approx(std, rel=0.01)
    # P* = softmax(-||x - mu||^2 / (2 * variance)) with the same reading
    variance = cfg["sigma"] if cfg["noise_param"] == "variance" else cfg["sigma"] ** 2
    direct = torch.softmax(-torch.cdist(x[:50].double(), means).square() / (2 * variance), dim=1)
    assert torch.allclose(bayes_posterior(x[:50], means, std), direct, atol=1e-12)


def test_preset_split_sizes() -> None:
    assert split_sizes(100_000, PRESETS["as_written"]["split"]) == (90_000, 5_000, 5_000)
    assert split_sizes(100_000, PRESETS["authors_code"]["split"]) == (5_000, 5_000, 90_000)


@pytest.mark.slow
@pytest.mark.parametrize("kernel", sorted(KERNELS))
def test_best_validation_selection_keeps_each_members_best_epoch(kernel: str) -> None:
    """Each member ends with exactly the weights it had after its (first) best validation epoch."""
    means, x, y, _ = _small_task(400)
    x_tr, y_tr, x_va, y_va = x[:200], y[:200], x[200:], y[200:]
    targets = F.one_hot(y_tr, 4).float().expand(3, -1, -1)
    seeds, orders = (31, 32, 33), [41, 42, 43]

    def fresh() -> MLPStack:
        return MLPStack.from_models([seeded_mlp(s, 5, 8, 4) for s in seeds])

    kw = {"batch_size": 32, "lr": 0.05, "optimizer": "sgd", "momentum": 0.9, "kernel": KERNELS[kernel](),
          "log": lambda _: None}
    stack = fresh()
    history = train_stack(stack, x_tr, targets, orders, epochs=8, val_data=(x_va, y_va), **kw)
    best_epochs = history[-1]["best_epochs"]
    per_epoch = torch.tensor([h["val_acc"] for h in history])            # (epochs, members)
    for member, best in enumerate(best_epochs):
        column = per_epoch[:, member]
        assert best == int(torch.argmax(column)) + 1                      # argmax returns the first maximum
        replay = fresh()
        train_stack(replay, x_tr, targets, orders, epochs=best, **kw)
        for ours, theirs in zip(stack.params, replay.params):
            assert torch.equal(ours[member], theirs[member])
    assert len(set(best_epochs)) > 1 or best_epochs[0] < 8                # the selection did something here


def _tiny_run(tmp_path: Path, preset: str) -> dict:
    config = {"num_points": 2000, "epochs": 3, "mcmi_epochs": 1, "seeds": [0, 1], "hidden": 16,
              "lambda_grid": [0.1], "threads": 1, "log_every": 5}
    out = tmp_path / f"{preset}.json"
    run_synthetic(config, 2.0, str(out), preset)
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("preset, split", [("as_written", "test"), ("authors_code", "train")])
def test_pdist_is_taken_over_the_presets_split(tmp_path: Path, preset: str, split: str) -> None:
    metrics = _tiny_run(tmp_path, preset)
    final = metrics["final"]
    assert metrics["run"]["preset"] == preset and final["pdist_norm"] == f"frobenius over the {split} set"
    sizes = final["split_sizes"]
    assert sizes == ({"train": 1800, "val": 100, "test": 100} if preset == "as_written"
                     else {"train": 100, "val": 100, "test": 1800})
    # the one-hot Pdist recomputed from the task on that split
    cfg = resolve_config({}, preset)
    std = noise_std(cfg["sigma"], cfg["noise_param"])
    means = task_means(10, 30, 2.0, task_seed=0)
    x, y = sample_gaussian(means, std, 2000, seed=0)
    part = slice(0, sizes["train"]) if split == "train" else slice(2000 - sizes["test"], 2000)
    expected = float(torch.linalg.norm(bayes_posterior(x[part], means, std) - F.one_hot(y[part], 10).double()))
    onehot = [r for r in final["records"] if r["target"] == "OneHot"]
    assert all(r["pdist_l2"] == pytest.approx(expected, rel=1e-9) for r in onehot)
    assert all(r["pdist_l2"] == 0 for r in final["records"] if r["target"] == "GroundTruth")
    has_best = all("best_epoch" in r and 1 <= r["best_epoch"] <= 3 for r in final["records"])
    assert has_best == (preset == "authors_code")
    assert all(math.isfinite(r["test_acc"]) for r in final["records"])
