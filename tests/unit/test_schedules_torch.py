"""The torch LRScheduler adapter, the Trainer factory and Accelerate, on tiny models built here."""

from __future__ import annotations

import io
import math

import pytest
import torch

from warmstart.errors import SpecError
from warmstart.schedules import parse
from warmstart.schedules.lr_scheduler import ScheduleLR

SPEC = "peak=1e-3; warmup:linear:50 > stable:100 > decay:cosine:150:0.1"
TOTAL = 300


def tiny_model(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))


def batch(step: int):
    g = torch.Generator().manual_seed(1000 + step)
    x = torch.randn(4, 6, generator=g)
    return x, x.sum(dim=1, keepdim=True)


def two_group_adamw(model, lrs=(1e-3, 1e-4)):
    return torch.optim.AdamW(
        [
            {"params": model[0].parameters(), "lr": lrs[0]},
            {"params": model[2].parameters(), "lr": lrs[1]},
        ]
    )


def train(model, opt, sched, start: int, stop: int) -> list[list[float]]:
    """Run updates start..stop-1; return the lrs each update used."""
    used = []
    for step in range(start, stop):
        used.append([g["lr"] for g in opt.param_groups])
        x, y = batch(step)
        loss = torch.nn.functional.mse_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
    return used


def test_lrs_follow_the_closed_form_per_group():
    model = tiny_model()
    opt = two_group_adamw(model)
    sched = ScheduleLR(opt, SPEC)
    used = train(model, opt, sched, 0, TOTAL)
    s = parse(SPEC)
    # group 0 has the larger lr, so it gets the spec's peak; group 1 keeps its 1/10 ratio
    assert sched.peak_lrs == [1e-3, 1e-3 * (1e-4 / 1e-3)]
    for step, (a, b) in enumerate(used):
        assert a == 1e-3 * s.multiplier(step)
        assert b == sched.peak_lrs[1] * s.multiplier(step)
    # boundaries by hand: first warmup step, last warmup step, last step
    assert used[0][0] == pytest.approx(1e-3 / 50, rel=1e-12)
    assert used[49][0] == 1e-3
    assert used[TOTAL - 1][0] == pytest.approx(1e-4, rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4, rel=1e-12)  # past the end: held


def test_without_peak_the_configured_lrs_are_the_peaks():
    model = tiny_model()
    opt = two_group_adamw(model, (0.02, 0.005))
    sched = ScheduleLR(opt, "warmup:linear:4 > decay:linear:4")
    used = train(model, opt, sched, 0, 8)
    assert [u[0] for u in used[:4]] == [0.02 * 0.25, 0.02 * 0.5, 0.02 * 0.75, 0.02]
    assert [u[1] for u in used[:4]] == [0.005 * 0.25, 0.005 * 0.5, 0.005 * 0.75, 0.005]
    assert used[7] == [0.0, 0.0]


def test_never_compounds():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = ScheduleLR(opt, "peak=0.1; warmup:linear:10 > stable:10")
    for _ in range(5):
        opt.step()
        sched.step()
    opt.param_groups[0]["lr"] = 123.0  # someone scribbles on the lr
    opt.step()
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.1 * 7 / 10, rel=1e-12)
    assert opt.param_groups[0]["lr"] == parse("peak=0.1; warmup:linear:10").lr(6)


def test_resume_at_137_is_exact():
    s = parse(SPEC)
    # uninterrupted
    model_a = tiny_model()
    opt_a = two_group_adamw(model_a)
    sched_a = ScheduleLR(opt_a, s)
    used_a = train(model_a, opt_a, sched_a, 0, TOTAL)

    # interrupted at 137: save everything, rebuild fresh objects, load, continue
    model_b = tiny_model()
    opt_b = two_group_adamw(model_b)
    sched_b = ScheduleLR(opt_b, s)
    used_b = train(model_b, opt_b, sched_b, 0, 137)
    buf = io.BytesIO()
    torch.save({"model": model_b.state_dict(), "opt": opt_b.state_dict(), "sched": sched_b.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)  # plain values only
    assert saved["sched"]["spec"] == s.to_string() and saved["sched"]["step"] == 137

    model_c = tiny_model(seed=99)
    model_c.load_state_dict(saved["model"])
    opt_c = two_group_adamw(model_c, (0.5, 0.5))  # wrong lrs on purpose: the state must win
    sched_c = ScheduleLR(opt_c, "stable:1")  # a different spec on purpose
    opt_c.load_state_dict(saved["opt"])
    sched_c.load_state_dict(saved["sched"])
    used_c = train(model_c, opt_c, sched_c, 137, TOTAL)

    assert used_b + used_c == used_a  # exact equality of every lr
    assert sched_c.schedule == s and sched_c.last_epoch == sched_a.last_epoch == TOTAL
    for p, q in zip(model_a.parameters(), model_c.parameters()):
        assert torch.equal(p, q)


def test_rewarm_ignores_stale_initial_lr():
    # an "old run": cosine to 1e-5 with torch's own scheduler; its optimizer keeps initial_lr=1e-3
    model = tiny_model()
    old_opt = two_group_adamw(model, (1e-3, 1e-4))
    old = torch.optim.lr_scheduler.CosineAnnealingLR(old_opt, T_max=10, eta_min=1e-5)
    train(model, old_opt, old, 0, 10)
    old_state = old_opt.state_dict()
    assert old_state["param_groups"][0]["initial_lr"] == 1e-3

    def loaded_optimizer():
        opt = two_group_adamw(model, (7.0, 7.0))
        opt.load_state_dict(old_state)
        return opt

    # the hazard: a torch scheduler built on the loaded optimizer keeps the stale initial_lr
    stale = torch.optim.lr_scheduler.LambdaLR(loaded_optimizer(), lambda step: 1.0)
    assert stale.base_lrs[0] == 1e-3

    opt = loaded_optimizer()
    sched = ScheduleLR(opt, "peak=3e-4; rewarm:linear:10:0.1 > decay:cosine:90")
    assert [g["initial_lr"] for g in opt.param_groups] == sched.peak_lrs
    assert sched.peak_lrs[0] == 3e-4
    # the groups keep the old run's configured ratio 10 : 1, although its
    # cosine left both at the same absolute eta_min
    assert [g["lr"] for g in old_state["param_groups"]] == [1e-5, 1e-5]
    assert sched.peak_lrs[1] == pytest.approx(3e-5, rel=1e-12)
    used = train(model, opt, sched, 0, 12)
    assert used[0][0] == pytest.approx(3e-4 * (0.1 + 0.9 * 0.1), rel=1e-12)
    assert used[9][0] == 3e-4  # the new peak, not 1e-3
    assert used[10][0] == pytest.approx(3e-4 * 0.5 * (1 + math.cos(math.pi / 90)), rel=1e-12)


def test_explicit_peak_lrs_and_bad_state():
    model = tiny_model()
    opt = two_group_adamw(model)
    sched = ScheduleLR(opt, "stable:3", peak_lrs=[0.3, 0.2])
    assert [g["lr"] for g in opt.param_groups] == [0.3, 0.2]
    with pytest.raises(SpecError):
        ScheduleLR(opt, "stable:3", peak_lrs=[0.3])
    with pytest.raises(SpecError):
        sched.load_state_dict({"step": 3})
    with pytest.raises(SpecError):
        ScheduleLR(opt, "stable:3", count="sometimes")


def test_count_optimizer_ignores_extra_and_missing_step_calls():
    model = tiny_model()
    opt = torch.optim.SGD(model.parameters(), lr=1.0)
    sched = ScheduleLR(opt, "peak=1.0; warmup:linear:4 > decay:linear:4", count="optimizer")
    s = parse("warmup:linear:4 > decay:linear:4")
    seen = []
    for step in range(8):
        seen.append(opt.param_groups[0]["lr"])
        x, y = batch(step)
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()
        for _ in range(step % 3):  # 0, 1 or 2 scheduler calls per update
            sched.step()
    assert seen == [s.multiplier(i) for i in range(8)]
    state = sched.state_dict()
    assert state["optimizer_steps"] == 8 and state["count"] == "optimizer"


def test_accelerate_steps_by_optimizer_steps(monkeypatch):
    import accelerate.scheduler
    from accelerate import Accelerator

    class TwoProcesses:  # what AcceleratedScheduler sees on a 2-process run
        num_processes = 2

    monkeypatch.setattr(accelerate.scheduler, "AcceleratorState", TwoProcesses)
    spec = "peak=0.01; warmup:linear:4 > decay:linear:8"
    s = parse(spec)

    def run(count):
        accelerator = Accelerator(cpu=True)
        model = tiny_model()
        opt = torch.optim.SGD(model.parameters(), lr=0.01)
        sched = ScheduleLR(opt, spec, count=count)
        model, opt, sched = accelerator.prepare(model, opt, sched)
        used = []
        for step in range(12):
            used.append(opt.param_groups[0]["lr"])
            x, y = batch(step)
            loss = torch.nn.functional.mse_loss(model(x), y)
            accelerator.backward(loss)
            opt.step()
            sched.step()  # AcceleratedScheduler: steps the inner scheduler twice
            opt.zero_grad()
        return used

    expected = [0.01 * s.multiplier(i) for i in range(12)]
    assert run("optimizer") == expected
    assert run("calls") != expected  # the default contract runs twice as fast here


@pytest.fixture(scope="module")
def trainer_parts():
    transformers = pytest.importorskip("transformers")

    class Regressor(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 1)

        def forward(self, x, y):
            return {"loss": torch.nn.functional.mse_loss(self.lin(x).squeeze(-1), y)}

    class Data(torch.utils.data.Dataset):
        def __len__(self):
            return 64

        def __getitem__(self, i):
            x = torch.randn(4, generator=torch.Generator().manual_seed(i))
            return {"x": x, "y": x.sum()}

    return transformers, Regressor, Data


def test_trainer_runs_the_schedule_and_resumes(tmp_path, trainer_parts):
    transformers, Regressor, Data = trainer_parts
    from warmstart.schedules.hf_trainer import schedule_check_callback, trainer_optimizers

    spec = "peak=0.01; warmup:linear:3 > stable:4 > decay:cosine:5:0.1"
    s = parse(spec)

    def make(max_steps, out):
        torch.manual_seed(0)
        model = Regressor()
        opt, sched = trainer_optimizers(model, spec)
        args = transformers.TrainingArguments(
            output_dir=str(out), max_steps=max_steps, per_device_train_batch_size=4, logging_steps=1,
            report_to=[], save_strategy="steps", save_steps=5, use_cpu=True, disable_tqdm=True,
        )
        return transformers.Trainer(
            model=model, args=args, train_dataset=Data(), optimizers=(opt, sched),
            callbacks=[schedule_check_callback()],
        )

    def logged(trainer):
        return {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}

    full = make(14, tmp_path / "a")
    full.train()
    lrs = logged(full)
    # Trainer logs the lr the update used; step k (1-based) used multiplier(k - 1)
    assert lrs == {k: 0.01 * s.multiplier(k - 1) for k in range(1, 15)}

    resumed = make(14, tmp_path / "b")
    first = make(5, tmp_path / "b")
    first.train()
    resumed.train(resume_from_checkpoint=str(tmp_path / "b" / "checkpoint-5"))
    after = logged(resumed)
    assert {k: v for k, v in after.items() if k > 5} == {k: lrs[k] for k in range(6, 15)}


def test_trainer_factory_needs_a_peak():
    from warmstart.schedules.hf_trainer import trainer_optimizers, trainer_scheduler

    with pytest.raises(SpecError, match="peak"):
        trainer_optimizers(tiny_model(), "stable:3")
    opt, sched = trainer_optimizers(tiny_model(), "stable:3", lr=0.5)
    assert opt.param_groups[0]["lr"] == 0.5
    sched = trainer_scheduler(torch.optim.SGD(tiny_model().parameters(), lr=0.1), "cosine", total=10)
    assert sched.schedule.length == 10
