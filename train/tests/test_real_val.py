import pytest

from lungseg_train import data as D
from lungseg_train import train as T


def _args(work, *extra):
    a = T.parser().parse_args(["--model", "resnet50-unet-small", "--recipe", "report", "--size", "64",
                               "--batch", "2", "--epoch-samples", "4", "--eval-limit", "4", "--threads", "1",
                               "--minutes", "30", "--max-epochs", "2", "--work", str(work), *extra])
    a.loaded_data = D.synthetic_phantoms(n_patients=10, crops_per_patient=2, slices_per_patient=1)
    return a


def test_real_val_patients_are_held_out_and_choose_epoch_and_threshold(tmp_path):
    data = D.synthetic_phantoms(n_patients=10, crops_per_patient=2, slices_per_patient=1)
    tr = D.split_data(data)["train"]
    held = str(tr["slices"].patient[0])
    out = T.run(_args(tmp_path, "--real-val-patients", held, "--select-on", "real"))
    card, hist = out["card"], out["history"]
    assert all("val_real_patients_mean_dice" in h for h in hist)
    assert all(h["selected_mean_dice"] == pytest.approx(h["val_real_patients_mean_dice"]) for h in hist)
    v = card["validation"]
    assert v["real_val_patients"] == [held]
    assert held in v["threshold_selected_on"] and "held out" in v["threshold_selected_on"]
    assert v["val_real_patients"]["n_nonempty"] >= 1
    assert held not in card["training"]["split"]["train"]


def test_real_val_patients_must_be_training_patients_with_slices(tmp_path):
    data = D.synthetic_phantoms(n_patients=10, crops_per_patient=2, slices_per_patient=1)
    val = str(D.split_data(data)["val"]["patients"][0])
    with pytest.raises(SystemExit, match="not a training patient"):
        T.run(_args(tmp_path, "--real-val-patients", val))
    with pytest.raises(SystemExit, match="needs --real-val-patients"):
        T.run(_args(tmp_path, "--select-on", "real"))


def test_a_crop_model_is_tiled_over_the_held_out_real_slices(tmp_path):
    data = D.synthetic_phantoms(n_patients=10, crops_per_patient=2, slices_per_patient=1)
    held = str(D.split_data(data)["train"]["slices"].patient[0])
    out = T.run(_args(tmp_path, "--task", "crop", "--size", "128", "--window-eval-limit", "2",
                      "--real-val-patients", held, "--select-on", "real", "--max-epochs", "1"))
    v = out["card"]["validation"]
    assert v["real_val_patients"] == [held] and v["val_real_patients"]["n_nonempty"] >= 1
    assert out["history"][0]["selected_mean_dice"] == pytest.approx(out["history"][0]["val_real_patients_mean_dice"])
