"""What a batch run trains: the data the ModelZoo scripts name, and the schedule. One source of defaults: the
published recipe is `Options`' defaults (the fields declared `recipe=True`); the training notebook's parameters cell
holds only the demo values, which a run on the built-in sample photos keeps."""

from pathlib import Path

from ..errors import KitError
from .notebooks import notebook_defaults


def train_data_parameters(train_data):
    """The ModelZoo EDSR scripts' TRAIN_DATA_DIR as options: `sample`, a DIV2K root (validating on DIV2K), or an
    HR folder."""
    text = str(train_data)
    if text.lower() == "sample":
        return {"data_train": "sample"}
    path = Path(text)
    if not path.is_dir():
        raise KitError(f"{path}: TRAIN_DATA_DIR is not a folder (use a DIV2K root, an HR image folder or 'sample')")
    if (path / "DIV2K_train_HR").is_dir() or (path / "DIV2K" / "DIV2K_train_HR").is_dir():
        return {"data_train": "DIV2K", "data_test": "DIV2K", "dir_data": str(path)}
    return {"data_train": str(path)}


# What the launchers take from a notebook's parameters are data and run placement; the schedule of a batch run on
# DIV2K or a user's folder is the published recipe (the Options defaults), whatever the notebook's demo values.
RECIPE_GLOBAL_BATCH = 16


def batch_run_parameters(train_data, given, world=1):
    """Parameters for a headless run: the built-in sample data keeps the notebook's short schedule; any other data
    gets the published recipe for every option not given, with the recipe's global batch of 16 split over the ranks
    (2 per card on 8 cards, as the ModelZoo's 8-card script passes)."""
    params = {**train_data_parameters(train_data), **given}
    if str(train_data).lower() == "sample":
        return params
    from ..options import Options

    recipe = Options(scale=int(params.get("scale", 2)))
    defaults = notebook_defaults()
    for name in Options.recipe_fields():
        if name in params or name not in defaults:
            continue
        value = getattr(recipe, name)
        if name == "batch_size":
            value = RECIPE_GLOBAL_BATCH // world if RECIPE_GLOBAL_BATCH % world == 0 else value
        if defaults[name] != value:
            params[name] = value
    return params


def describe_schedule(params, world):
    """One line: what the job will train, in the recipe's terms."""
    from ..options import Options

    values = {**notebook_defaults(), **params}
    opts = Options.from_dict({k: v for k, v in values.items() if k in Options.__dataclass_fields__}, strict=False)
    return (
        f"schedule: {opts.epochs} epochs x {opts.test_every} iterations, lr {opts.lr:g} x {opts.gamma:g} after "
        f"epoch(s) {opts.decay}, HR patch {opts.patch_size}, batch {opts.batch_size} per device x {world} "
        f"rank(s) = global batch {opts.batch_size * world}; model {opts.n_resblocks} blocks, {opts.n_feats} "
        f"features"
    )
