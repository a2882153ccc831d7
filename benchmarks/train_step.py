"""Training-step benchmark: images/s of the engine's step (to device, forward, loss, backward,
optimizer step, the finite-loss check) for ``experiment=retinaface_mnet`` (MobileNet-0.25,
batch 8 at 640) and ``experiment=ws_dan_cub`` (Inception-v3, batch 12 at 448), plain vs each
speed option of ``trainer`` / ``optimizer``:

    reference      the reference's own loop, written plainly: the same network and weights (with
                   its code where ours differs only in speed: RetinaFace's SSH), its
                   loss formulation (RetinaFace: the per-image matching port the tests use as
                   oracle, tests/retinaface/reference.py; WS-DAN: per-sample np.random.choice
                   of the two maps and the per-sample crop / drop loops, tests/ws_dan/oracles.py,
                   the center loss and update as its train.py writes them), torch.optim.SGD
                   with its per-parameter loop, zero_grad / backward / step and the .item()
                   reads of the losses it logs every step
    loop           the engine with the old defaults: optimizer.foreach=false, no compile,
                   contiguous memory, trainer.host_allocator=system (glibc's defaults)
    foreach        optimizer.foreach=true (torch's multi-tensor path)
    fused          optimizer.fused=true, the engine's default for SGD / Adam / AdamW
    keep           + trainer.host_allocator=keep: the engine's defaults (freed CPU memory
                   stays in the process; src/engine/host_memory.py), contiguous memory
    channels_last  + trainer.channels_last=true, both recipes' default (on the CPU its 1x1
                   convolutions then run oneDNN's kernels: trainer.cpu_conv1x1=onednn,
                   src/engine/pointwise_conv.py)
    aten_1x1       channels_last with trainer.cpu_conv1x1=aten (ATen's one-thread GEMM path)
    compile        + trainer.compile=true (inductor; warm-up steps include the compilation)
    all            keep + channels_last + compile

The reference, loop, foreach, fused and keep rows run contiguous (NCHW), whatever the recipe
says. The reference, loop, foreach and fused rows run with glibc's own allocator settings, as
the reference repos do, the others with ``keep``: two worker processes, one per setting (it is
process-wide; benchmarks/_workers.py), driven round-robin by this one, one step at a time.

    python benchmarks/train_step.py [--models retinaface,ws_dan] [--batch N] [--size N]
        [--steps 5] [--warmup 2] [--options reference,loop,foreach,fused,keep,...]
        [--ws-backbone inception_v3] [--threads 1] [--device cpu|cuda]

``--batch`` / ``--size`` replace both models' defaults (for a quick check:
``--batch 2 --size 128 --steps 2``). Each step is the engine's own ``Trainer._train_batch`` on a
fixed synthetic batch (random faces with landmarks / random images and labels), so the data
pipeline is not timed. Rows of one model are measured round-robin, one step each per round (a
shared machine's load then weighs on every row alike); the table shows the median step time,
images/s, the ratio to ``reference``, the minor page faults of a step (memory the kernel had to
hand in again) and the loss of the first step (the same batch and weights in every row: it
shows the options compute the same thing). Default one intra-op thread.
"""

from __future__ import annotations

import argparse
import functools
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from hydra import compose, initialize_config_dir  # noqa: E402
from hydra.utils import instantiate  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from benchmarks._workers import Workers, serve  # noqa: E402
from benchmarks.retinaface import make_targets  # noqa: E402
from src.config import register_configs  # noqa: E402
from src.data.base import SampleDataset  # noqa: E402
from src.engine.host_memory import minor_page_faults  # noqa: E402
from src.engine.seed import seed_everything  # noqa: E402
from src.engine.trainer import Trainer  # noqa: E402
from src.logging import RunLogger  # noqa: E402
from src.utils.resolvers import register_resolvers  # noqa: E402

EXPERIMENTS = {
    "retinaface": ("retinaface_mnet", 8, 640),
    "ws_dan": ("ws_dan_cub", 12, 448),
}
OPTIONS = {  # each row's overrides; trainer.host_allocator picks the process it runs in
    # every row sets the memory layout itself: the recipes' own (channels_last in both) would
    # otherwise leak into the rows meant to run without it, the reference's included
    "reference": {
        "foreach": False,
        "trainer.host_allocator": "system",
        "trainer.channels_last": False,
    },
    "loop": {"foreach": False, "trainer.host_allocator": "system", "trainer.channels_last": False},
    "foreach": {
        "foreach": True,
        "trainer.host_allocator": "system",
        "trainer.channels_last": False,
    },
    "fused": {"trainer.host_allocator": "system", "trainer.channels_last": False},
    "keep": {"trainer.channels_last": False},  # the engine's defaults: fused + keep
    "channels_last": {"trainer.channels_last": True},
    "aten_1x1": {"trainer.channels_last": True, "trainer.cpu_conv1x1": "aten"},
    "compile": {"trainer.channels_last": False, "trainer.compile": True},
    "all": {"trainer.channels_last": True, "trainer.compile": True},
}


def allocator_of(option: str) -> str:
    return OPTIONS[option].get("trainer.host_allocator", "keep")


class FixedSamples(SampleDataset):
    """The same prepared samples every epoch (the data pipeline is not what is timed)."""

    def __init__(self, samples: list):
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, index, rng):
        return self.samples[index]


def face_samples(batch: int, size: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    out = []
    for i, t in enumerate(make_targets(batch, size, faces=10, seed=1)):
        out.append(
            {
                "image": torch.randn(3, size, size, generator=g) * 50,
                "boxes": t[:, :4],
                "landmarks": t[:, 4:14],
                "labels": t[:, 14].long(),
                "orig_size": (size, size),
                "scale": 1.0,
                "path": f"bench/{i}.jpg",
            }
        )
    return out


def bird_samples(batch: int, size: int, num_classes: int) -> list[dict]:
    g = torch.Generator().manual_seed(0)
    return [
        {
            "image": torch.randn(3, size, size, generator=g),
            "label": int(torch.randint(num_classes, (1,), generator=g)),
        }
        for _ in range(batch)
    ]


def compose_experiment(name: str, overrides: list[str]):
    register_resolvers()
    register_configs()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose("config", overrides=[f"experiment={name}", *overrides])


def build_trainer(model: str, option: str, args, run_dir: Path) -> Trainer:
    experiment, batch, size = EXPERIMENTS[model]
    batch, size = args.batch or batch, args.size or size
    extra = [f"paths.output_dir={run_dir}"]  # (resolved without a Hydra run)
    if model == "ws_dan":
        extra.append(f"model.net.backbone={args.ws_backbone}")
    cfg = compose_experiment(experiment, extra)
    opt_cfg = OmegaConf.to_container(cfg.optimizer, resolve=True)
    trainer_cfg = OmegaConf.merge(
        cfg.trainer,
        {
            "batch_size": batch,
            "num_workers": 0,
            "progress_bar": False,
            "accelerator": args.device,
            "eval_every_n_epochs": 0,
            "save_last": False,
        },
    )
    for key, value in OPTIONS[option].items():
        if key.startswith("trainer."):
            trainer_cfg[key.split(".", 1)[1]] = value
        else:
            opt_cfg[key] = value
    if model == "retinaface":
        samples = face_samples(batch, size)
    else:
        samples = bird_samples(batch, size, int(cfg.dataset.num_classes))
    seed_everything(0)
    factory = instantiate(cfg.model, _partial_=True, _convert_="all")
    task = factory(
        loss=instantiate(cfg.loss, _convert_="all"), data={"train": FixedSamples(samples)}
    )
    trainer = Trainer(
        task,
        trainer_cfg,
        run_dir,
        RunLogger(run_dir, None),
        seed=0,
        optimizer_cfg=OmegaConf.create(opt_cfg),
    )
    trainer.bench_kernels = trainer.cpu_kernels()  # what fit() runs in, kept for its steps
    trainer.bench_kernels.__enter__()
    trainer._setup_fit(None)
    trainer.task.train()
    trainer.bench_batch = task.collate(samples)
    trainer.bench_images = batch
    if option == "reference":
        trainer.bench_step = (
            reference_face_step(trainer, samples, opt_cfg)
            if model == "retinaface"
            else reference_bird_step(trainer, opt_cfg)
        )
    return trainer


def _reference_sgd(params, opt_cfg: dict) -> torch.optim.SGD:
    return torch.optim.SGD(
        params,
        lr=opt_cfg["lr"],
        momentum=opt_cfg["momentum"],
        weight_decay=opt_cfg["weight_decay"],
        foreach=False,
    )


def reference_face_step(trainer: Trainer, samples: list[dict], opt_cfg: dict):
    """Pytorch_Retinaface train.py's iteration: forward, MultiBoxLoss (per-image matching),
    ``loss = 2 * loss_l + loss_c + loss_landm``, zero_grad, backward, SGD step, and the printed
    loss values (three host reads) it logs every iteration."""
    from src.models.retinaface.layers import SSH
    from tests.retinaface import reference as R

    net = trainer.task.net
    for module in net.modules():  # its network code: SSH's ReLU over the concat
        if isinstance(module, SSH):
            module.forward = functools.partial(R.reference_ssh_forward, module)
    opt = _reference_sgd(net.parameters(), opt_cfg)
    images = trainer.bench_batch["image"]
    targets = [
        torch.cat([s["boxes"], s["landmarks"], s["labels"][:, None].float()], dim=1)
        for s in samples
    ]
    priors = trainer.task.priors(images)

    def go():
        out = net(images.to(trainer.device))
        found = R.reference_loss(out, priors, [t.to(trainer.device) for t in targets])
        opt.zero_grad()
        found["loss"].backward()
        opt.step()
        [float(found[k].detach()) for k in ("loc", "cls", "landm")]  # its per-iteration print
        return found["loss"]

    return go


def reference_bird_step(trainer: Trainer, opt_cfg: dict):
    """WS-DAN.PyTorch train.py's iteration: forward; centers normalised and updated in place;
    per sample two maps by np.random.choice ~ sqrt(sum A), a crop box / drop mask from each
    (the per-sample loops, thresholds drawn per sample); forward of crops and drops; the three
    cross-entropies / 3 plus the center loss; zero_grad, backward, SGD step; loss.item()."""
    import numpy as np
    import torch.nn.functional as F

    from tests.ws_dan.oracles import crop_loop, drop_loop

    task = trainer.task
    net = task.net
    opt = _reference_sgd(net.parameters(), opt_cfg)
    images = trainer.bench_batch["image"].to(trainer.device)
    labels = trainer.bench_batch["label"].to(trainer.device)
    centers = torch.zeros(net.num_classes, net.feature_dim, device=trainer.device)
    beta = float(getattr(getattr(task.loss, "center", None), "beta", 0.05))
    rng = np.random.default_rng(0)

    def pick(maps):  # WSDAN.forward in training: a Python loop over the batch
        weights = torch.sqrt(maps.sum(dim=(2, 3)).detach() + 1e-12)
        weights = F.normalize(weights, p=1, dim=1).cpu().numpy().astype(np.float64)
        out = []
        for i in range(maps.shape[0]):
            w = weights[i] / weights[i].sum()
            k = rng.choice(maps.shape[1], 2, p=w)
            out.append(maps[i, k])
        return torch.stack(out)

    def go():
        logits_raw, features, maps = net(images)
        picked = pick(maps)
        center_batch = F.normalize(centers[labels], dim=-1)
        centers[labels] += beta * (features.detach() - center_batch)
        with torch.no_grad():
            thetas = torch.from_numpy(rng.uniform(0.4, 0.6, len(images))).float()
            crops, _ = crop_loop(images, picked[:, :1], thetas, 0.1)
        logits_crop = net(crops)[0]
        with torch.no_grad():
            thetas = torch.from_numpy(rng.uniform(0.2, 0.5, len(images))).float()
            drops = drop_loop(images, picked[:, 1:], thetas)
        logits_drop = net(drops)[0]
        loss = (
            F.cross_entropy(logits_raw, labels) / 3
            + F.cross_entropy(logits_crop, labels) / 3
            + F.cross_entropy(logits_drop, labels) / 3
            + torch.sum((features - center_batch) ** 2) / features.shape[0]
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
        loss.item()
        return loss

    return go


def step(trainer: Trainer) -> tuple[float, float]:
    """One engine step; (seconds, loss)."""
    sync = torch.cuda.synchronize if trainer.device.type == "cuda" else (lambda: None)
    sync()
    t0 = time.perf_counter()
    if hasattr(trainer, "bench_step"):
        loss = trainer.bench_step()
    else:
        loss = trainer._train_batch(trainer.bench_batch)[0]["loss"]
    sync()
    return time.perf_counter() - t0, float(loss.detach())


def worker(model: str, mode: str, args) -> None:
    """One process per allocator mode (benchmarks/_workers.py): builds rows and times steps
    as the parent asks."""
    if args.threads:
        torch.set_num_threads(args.threads)
    tmp = Path(tempfile.mkdtemp(prefix=f"train_step_{mode}_"))
    trainers = {}

    def handle(words: list[str]) -> dict:
        command, option = words
        if command == "build":
            # every row starts from the same weights and sees the same batch: its first loss
            # is comparable; its warm-up steps (compilation for compile rows) are not timed
            trainers[option] = build_trainer(model, option, args, tmp / option)
            t0 = time.perf_counter()
            loss = [step(trainers[option])[1] for _ in range(args.warmup)][0]
            return {"loss": loss, "warmup_s": time.perf_counter() - t0}
        faults = minor_page_faults()
        seconds, _ = step(trainers[option])
        return {"seconds": seconds, "faults": minor_page_faults() - faults}

    serve(mode, handle)


def bench_model(model: str, args) -> list[tuple]:
    """Rows measured round-robin, one step each per round, each row in the worker process of
    its allocator mode (only one process computes at a time)."""
    modes = sorted({allocator_of(o) for o in args.options})
    argv = [sys.executable, __file__, "--worker", model, "--models", model]
    argv += ["--batch", str(args.batch), "--size", str(args.size), "--warmup", str(args.warmup)]
    argv += ["--ws-backbone", args.ws_backbone, "--threads", str(args.threads)]
    argv += ["--device", args.device]
    with Workers(argv, modes) as workers:

        def ask(option: str, command: str) -> dict:
            return workers.ask(allocator_of(option), command, option)

        built = {option: ask(option, "build") for option in args.options}
        times: dict[str, list[float]] = {o: [] for o in args.options}
        faults: dict[str, list[int]] = {o: [] for o in args.options}
        for _ in range(args.steps):
            for option in args.options:
                answer = ask(option, "step")
                times[option].append(answer["seconds"])
                faults[option].append(answer["faults"])
    rows = []
    base = statistics.median(times["reference" if "reference" in times else args.options[0]])
    images = args.batch or EXPERIMENTS[model][1]
    for option in args.options:
        med = statistics.median(times[option])
        rows.append(
            (
                model,
                option,
                med * 1e3,
                images / med,
                base / med,
                statistics.median(faults[option]),
                built[option]["loss"],
                built[option]["warmup_s"],
            )
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="retinaface,ws_dan")
    ap.add_argument("--batch", type=int, default=0, help="0 = the experiment's (8 / 12)")
    ap.add_argument("--size", type=int, default=0, help="0 = the experiment's (640 / 448)")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per row")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps (compilation) per row")
    ap.add_argument("--options", default=",".join(OPTIONS))
    ap.add_argument("--ws-backbone", default="inception_v3")
    ap.add_argument("--threads", type=int, default=1, help="0 = torch's default")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--worker", help=argparse.SUPPRESS)  # internal: bench_model's processes
    ap.add_argument("--allocator", default="keep", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker(args.worker, args.allocator, args)
    args.options = [o for o in args.options.split(",") if o]
    unknown = [o for o in args.options if o not in OPTIONS]
    if unknown:
        ap.error(f"unknown option {unknown[0]!r}; choose from {', '.join(OPTIONS)}")
    if args.warmup < 1:
        ap.error("--warmup must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), device {args.device}, "
        f"{args.steps} timed steps after {args.warmup} warm-up"
    )
    header = (
        "model",
        "option",
        "ms/step",
        "img/s",
        "x reference",
        "page faults/step",
        "loss (step 1)",
        "warm-up s",
    )
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for model in args.models.split(","):
        experiment, batch, size = EXPERIMENTS[model]
        label = f"{model} b{args.batch or batch} @{args.size or size}"
        for row in bench_model(model, args):
            _, option, ms, ips, ratio, faults, loss, warm = row
            print(
                f"| {label} | {option} | {ms:.1f} | {ips:.2f} | {ratio:.2f} | {faults:,.0f} | "
                f"{loss:.5f} | {warm:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
