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


def test_init_from_continues_the_models_that_are_there(tmp_path):
    for name in ("swin-unet-small-crop", "resnet50-unet-small-crop"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "model.onnx").write_bytes(b"x")
    assert run_all.init_args("swin-unet-small-crop", "swin-unet-small", str(tmp_path)) == [
        "--init", str(tmp_path / "swin-unet-small-crop" / "model.onnx")]
    assert run_all.init_args("unetr-small-crop", "unetr-small", str(tmp_path)) == []  # not there
    # a ResNet too: train.load_init fine-tunes it with frozen BatchNorm
    assert run_all.init_args("resnet50-unet-small-crop", "resnet50-unet-small", str(tmp_path))[0] == "--init"
    assert run_all.init_args("swin-unet-small-crop", "swin-unet-small", "") == []


def test_only_keeps_the_named_jobs_and_refuses_unknown_ones():
    import pytest

    jobs = run_all.jobs_for(["crop", "compact"])
    got = run_all.select_jobs(jobs, "swin-unet-small-crop,unetr-small")
    assert [j[0] for j in got] == ["swin-unet-small-crop", "unetr-small"]  # in the sets' order
    assert run_all.select_jobs(jobs, "") == jobs
    with pytest.raises(SystemExit, match="swin-unet-crop"):
        run_all.select_jobs(jobs, "swin-unet-crop")
