import pytest
import torch

from lungseg_train import data as D
from lungseg_train import train as T


def _args(work, *extra):
    a = T.parser().parse_args(["--model", "resnet50-unet-small", "--recipe", "report", "--size", "64",
                               "--batch", "2", "--epoch-samples", "6", "--eval-limit", "4", "--threads", "1",
                               "--minutes", "30", "--work", str(work), "--checkpoint-every-minutes", "1e-9",
                               "--save-checkpoint", *extra])
    a.loaded_data = D.synthetic_phantoms(n_patients=10, crops_per_patient=2, slices_per_patient=1)
    return a


def _weights(work):
    return torch.load(work / "resnet50-unet-small.pt", map_location="cpu")["state_dict"]


def test_resume_after_a_kill_continues_the_same_run(tmp_path, monkeypatch):
    # the report recipe (Adam, constant lr) does not depend on the clock, so a run
    # killed in its second epoch and resumed ends with the very weights of one that ran through
    a = tmp_path / "a"
    full = T.run(_args(a, "--max-epochs", "2"))
    b = tmp_path / "b"
    calls = {"n": 0}
    real_loss = T.loss_fn

    def dying_loss(*x):
        calls["n"] += 1
        if calls["n"] == 5:  # epoch 2 (3 steps per epoch), its second step: a kill
            raise KeyboardInterrupt
        return real_loss(*x)

    monkeypatch.setattr(T, "loss_fn", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        T.run(_args(b, "--max-epochs", "2"))
    ck = torch.load(b / "resnet50-unet-small.resume.pt", map_location="cpu")
    assert ck["epoch"] == 2 and ck["in_epoch"] == 1 and ck["step"] == 4
    monkeypatch.setattr(T, "loss_fn", real_loss)
    resumed = T.run(_args(b, "--max-epochs", "2", "--resume"))
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]
    assert resumed["card"]["training"]["steps"] == full["card"]["training"]["steps"] == 6
    wa, wb = _weights(a), _weights(b)
    for k in wa:
        assert torch.allclose(wa[k].float(), wb[k].float(), atol=1e-6), k
    assert resumed["history"][1]["loss"] == pytest.approx(full["history"][1]["loss"], rel=1e-5)


def test_resume_without_a_checkpoint_is_refused(tmp_path):
    with pytest.raises(SystemExit, match="resume"):
        T.run(_args(tmp_path, "--max-epochs", "1", "--resume"))
