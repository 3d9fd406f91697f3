import timm

from trainer.config import ServiceLink, TrainConfig
from trainer.iterate import IterateConfig, _sizes, parameter_count
from trainer.report import format_table


def _teacher(architecture: str) -> dict:
    return {"architecture": architecture, "class_names": list("abc"), "channels": 1, "model_kwargs": {}}


def test_parameter_count_is_the_timm_models_own():
    model = timm.create_model("resnet10t", num_classes=3, in_chans=1)
    assert parameter_count("resnet10t", 3, 1) == sum(p.numel() for p in model.parameters())


def test_iterate_warns_when_a_student_is_smaller_than_its_teacher(capsys):
    cfg = IterateConfig(1, 2, train=TrainConfig(ServiceLink(manifest_id="")))
    cfg.train.recipe.channels = 1
    smaller = _sizes(cfg, _teacher("resnet18"), "resnet10t")
    assert smaller["student_params"] < smaller["teacher_params"]
    assert "warning: student resnet10t" in capsys.readouterr().out
    larger = _sizes(cfg, _teacher("resnet10t"), "resnet18")
    assert larger["student_params"] > larger["teacher_params"]
    assert "warning" not in capsys.readouterr().out
    table = format_table([{"generation": 1, **larger, "probe_precision": 0.9, "mce": 95.2}])
    assert "student params" in table and str(larger["student_params"]) in table and "95.2" in table
