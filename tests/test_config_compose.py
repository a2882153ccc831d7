"""Every config that should compose does, with the right types; incompatible picks and typos
stop with a message naming the valid choices / the bad key."""

from __future__ import annotations

import itertools

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.hydra_config import HydraConfig
from hydra.errors import ConfigCompositionException
from hydra.utils import get_object
from omegaconf import OmegaConf

from src.app import CONF_DIR, check_compatibility, option_kind
from src.config import register_configs
from src.utils.errors import UserError
from src.utils.resolvers import register_resolvers

register_resolvers()
register_configs()


def options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def _compose(*overrides: str):
    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config",
            overrides=["paths.output_dir=/tmp/run", "paths.work_dir=/tmp", *overrides],
            return_hydra_config=True,
        )
    HydraConfig.instance().set_config(cfg)
    return cfg


def _fits(model: str, group: str, option: str) -> bool:
    """What the Task class declares (``accepts``) against the option's ``kind``."""
    task = get_object(OmegaConf.load(CONF_DIR / "model" / f"{model}.yaml")._target_)
    kinds = task.accepts.get(group, ())
    return not kinds or option_kind(group, option) in kinds


# what each trainer takes, written out by hand (an independent statement of the declarations)
EXPECTED = {
    "ws_dan": {"loss": {"center", "ce"}, "dataset": {"cub", "synthetic_cub"}},
    "retinaface": {"loss": {"multibox"}, "dataset": {"widerface", "synthetic_faces"}},
}


@pytest.mark.parametrize("model", sorted(EXPECTED))
def test_declared_kinds_pair_each_model_with_its_losses_and_datasets(model):
    for group, expected in EXPECTED[model].items():
        assert {o for o in options(group) if _fits(model, group, o)} == expected


def _combos() -> list[tuple[str, str, str]]:
    """Every fitting (model, loss, dataset), and every misfit of one group beside a fitting pick
    of the other (the full product grows as models x losses x datasets: thousands of composes
    that test nothing more)."""
    out = []
    for model in options("model"):
        losses = [o for o in options("loss") if _fits(model, "loss", o)]
        datasets = [o for o in options("dataset") if _fits(model, "dataset", o)]
        out += list(itertools.product([model], losses, datasets))
        out += [(model, o, datasets[0]) for o in options("loss") if o not in losses]
        out += [(model, losses[0], o) for o in options("dataset") if o not in datasets]
    return out


COMBOS = _combos()


@pytest.mark.parametrize("model,loss,dataset", COMBOS)
def test_model_loss_dataset_combinations(model, loss, dataset):
    cfg = _compose(f"model={model}", f"loss={loss}", f"dataset={dataset}")
    if _fits(model, "loss", loss) and _fits(model, "dataset", dataset):
        check_compatibility(cfg)
        # everything the builders will read resolves
        for node in (cfg.model, cfg.loss, cfg.dataset, cfg.optimizer, cfg.trainer):
            OmegaConf.to_container(node, resolve=True)
        assert isinstance(cfg.dataset.image_size, int)
    else:
        with pytest.raises(UserError) as e:
            check_compatibility(cfg)
        msg = str(e.value)
        assert "\n" not in msg and f"model={model}" in msg and "valid choices: " in msg
        bad = "loss" if not _fits(model, "loss", loss) else "dataset"
        assert f"{bad}={loss if bad == 'loss' else dataset}" in msg
        valid = [o for o in options(bad) if _fits(model, bad, o)]
        assert all(f"{bad}={o}" in msg for o in valid)


@pytest.mark.parametrize(
    "group", ["optimizer", "scheduler", "trainer", "logger", "paths", "experiment", "debug"]
)
def test_every_option_of_each_group_composes(group):
    for option in options(group):
        cfg = _compose(f"{group}={option}")
        OmegaConf.to_container(cfg.trainer, resolve=True)
        OmegaConf.to_container(cfg.optimizer, resolve=True)


def test_ws_dan_paper_recipe():
    cfg = _compose("experiment=ws_dan_cub")
    assert cfg.model.net.backbone == "inception_v3" and cfg.model.net.num_attentions == 32
    assert cfg.dataset._target_.endswith("build_cub") and cfg.dataset.image_size == 448
    assert cfg.trainer.batch_size == 12 and cfg.trainer.max_epochs == 160
    o, s = cfg.optimizer, cfg.scheduler
    assert (o._target_, o.lr, o.momentum, o.weight_decay) == ("torch.optim.SGD", 1e-3, 0.9, 1e-5)
    assert (s._target_.endswith("StepLR"), s.step_size, s.gamma) == (True, 2, 0.9)
    assert cfg.trainer.channels_last  # measured faster (benchmarks/train_step.py)
    assert cfg.trainer.cpu_conv1x1 == "onednn"


@pytest.mark.parametrize(
    "override,needle",
    [
        ("trainer.max_epoch=3", "max_epoch"),
        ("trainer.batch_size=big", "batch_size"),
        ("optimizer.momentum=fast", "momentum"),
        ("scheduler.step_sise=2", "step_sise"),
        ("logger.projekt=x", "projekt"),
        ("paths.data=x", "data"),
    ],
)
def test_schema_rejects_typos_and_wrong_types(override, needle):
    with pytest.raises(ConfigCompositionException) as e:
        _compose(override)
    assert needle in str(e.value) + str(e.value.__cause__)


RECIPE_OPTIMIZERS = {  # the references' optimizers: what a model trains with unless told
    "pix2pix": ("torch.optim.Adam", 2e-4, [0.5, 0.999], "LinearDecayLR"),
    "cyclegan": ("torch.optim.Adam", 2e-4, [0.5, 0.999], "LinearDecayLR"),
    "pix2pixhd": ("torch.optim.Adam", 2e-4, [0.5, 0.999], "LinearDecayLR"),
    "deblurgan": ("torch.optim.Adam", 1e-4, [0.5, 0.999], "LinearDecayLR"),
    "wgan": ("torch.optim.RMSprop", 5e-5, None, None),
    "wgan_gp": ("torch.optim.Adam", 1e-4, [0.0, 0.9], None),
    "dpe": ("torch.optim.Adam", 1e-5, [0.9, 0.999], None),
    "centernet": ("torch.optim.Adam", 2.5e-4, [0.9, 0.999], "StepLR"),
    "ws_dan": ("torch.optim.SGD", 1e-3, None, "StepLR"),
}


@pytest.mark.parametrize("model", sorted(RECIPE_OPTIMIZERS))
def test_a_model_keeps_its_optimizer_and_schedule_when_a_dataset_is_picked(model):
    """The optimizer and schedule are the model's (conf/optimizer/default/<model>.yaml), not
    the demo dataset file's: picking a dataset by hand keeps them; optimizer=... replaces them."""
    target, lr, betas, sched = RECIPE_OPTIMIZERS[model]
    fitting = [d for d in options("dataset") if _fits(model, "dataset", d)]
    cfg = _compose(f"model={model}", f"dataset={fitting[0]}")
    o, s = cfg.optimizer, cfg.scheduler
    assert (o._target_, o.lr, o.get("betas")) == (target, lr, betas), (model, o)
    assert (s._target_ or "").endswith(sched or "") and (sched is not None) == bool(s._target_)
    assert not o.groups and not s.groups  # one optimizer config for every group
    assert _compose(f"model={model}", "optimizer=sgd").optimizer._target_ == "torch.optim.SGD"
