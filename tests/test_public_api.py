"""The public API is typed: every parameter and return of the functions notebooks, scripts and users call is
annotated (mypy checks the annotations against the code in scripts/test.sh)."""

import importlib
import inspect

import pytest

import edsr_lib

PUBLIC_API = {
    "edsr_lib.images": ["read_image", "write_image"],
    "edsr_lib.imresize": ["imresize"],
    "edsr_lib.inference": ["upscale", "upscale_paths", "forward_tiled"],
    "edsr_lib.model": ["build_model", "count_parameters"],
    "edsr_lib.runtime": [
        "setup_device",
        "resolve_device",
        "precision_plan",
        "configure_precision",
        "init_distributed",
        "setup_summary",
    ],
    "edsr_lib.weights": ["convert", "read_checkpoint", "save_checkpoint"],
    "edsr_lib.loading": ["load_model", "checkpoint_path", "init_from_checkpoint", "choose_scale"],
    "edsr_lib.notebook_helpers": ["default_checkpoint", "find_checkpoints"],
    "edsr_lib.metrics": ["psnr", "ssim", "protocol_for", "quantize", "rgb_to_y", "parse_metrics", "crop_border"],
    "edsr_lib.data": ["open_dataset"],
    "edsr_lib.evaluation": [
        "evaluate",
        "score_image",
        "compare_conventions",
        "dataset_rows",
        "per_image_rows",
        "convention_rows",
        "format_table",
    ],
    "edsr_lib.export": ["export_model", "export_all_scales", "load_exported"],
    "edsr_lib.trainer": [
        "prepare_run",
        "build_parts",
        "build_model_for",
        "Trainer.fit",
        "Trainer.train_epoch",
        "Trainer.validate",
        "Trainer.train_step",
        "Trainer.save",
        "Trainer.summary",
        "Trainer.gather_final_metrics",
    ],
    "edsr_lib.training_step": ["make_loss", "make_optimizer", "make_loss_scaler", "apply_mixed_precision"],
    "edsr_lib.options": [
        "Options.from_namespace",
        "Options.from_dict",
        "Options.for_preset",
        "Options.to_dict",
        "Options.architecture",
        "Options.scales",
        "Options.learning_rate",
        "Options.recipe_fields",
    ],
    "edsr_lib.lpips": ["for_metrics", "cached"],
    "edsr_lib.report": ["build_report"],
    "edsr_lib.figures": ["paper_figure", "save_figure", "crop_box"],
}
# Parameters left untyped on purpose: a model is any network with forward_array/arch (a checkpoint's, an exported
# one, an MDSR's one-scale view), a dataset any object with names/pair(i), a registry a pretrained.Registry or a
# test's stand-in.
DUCK_TYPED = {"model", "dataset", "registry", "fig", "kwargs", "overrides"}


def _functions():
    for module, names in PUBLIC_API.items():
        for name in names:
            yield module, name


@pytest.mark.parametrize("module, name", list(_functions()), ids=lambda v: v)
def test_public_functions_are_annotated(module, name):
    function = importlib.import_module(module)
    for part in name.split("."):
        function = getattr(function, part)
    signature = inspect.signature(function)
    untyped = [
        p
        for p, parameter in signature.parameters.items()
        if p not in ("self", "cls") and p not in DUCK_TYPED and parameter.annotation is inspect.Parameter.empty
    ]
    assert not untyped, f"{module}.{name}: annotate {', '.join(untyped)}"
    assert signature.return_annotation is not inspect.Signature.empty, f"{module}.{name}: annotate its return"


def test_every_package_level_name_is_in_the_typed_api():
    typed = {name.rsplit(".", 1)[-1] for _, name in _functions()}
    assert {n for n in edsr_lib.__all__ if n[0].islower()} <= typed
