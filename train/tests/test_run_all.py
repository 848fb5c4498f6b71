import run_all


def test_crop_set_trains_each_compact_model_as_a_crop_model():
    jobs = run_all.jobs_for(["crop"])
    assert [j[0] for j in jobs] == [m + "-crop" for m in run_all.COMPACT]
    for name, model, recipe, folder, args in jobs:
        assert args[:2] == ["--task", "crop"] and folder == "models" and recipe == "dicebce"
    swin = [j for j in jobs if j[1] == "swin-unet-small"][0]
    assert swin[4][2:] == ["--lr", "1e-3"]


def test_unknown_set_is_refused():
    import pytest

    with pytest.raises(SystemExit):
        run_all.jobs_for(["nope"])
