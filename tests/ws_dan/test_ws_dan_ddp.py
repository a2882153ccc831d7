"""WS-DAN under DDP (2 gloo processes on CPU): the three forwards of a training step share one
backward, and the center update sees the global batch so the centers stay identical."""

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from src.losses.ws_dan import CenterLoss, WSDANLoss
from src.models.ws_dan import WSDAN
from src.tasks.ws_dan import WSDANTask


def features_for(rank):
    g = torch.Generator().manual_seed(rank)
    return F.normalize(torch.randn(4, 6, generator=g, dtype=torch.float64), dim=1)


LABELS = [torch.tensor([0, 1, 1, 2]), torch.tensor([1, 3, 0, 1])]


def initial_centers():
    return torch.randn(4, 6, generator=torch.Generator().manual_seed(9), dtype=torch.float64)


def worker(rank, init_file, out_dir):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.set_num_threads(1)
        crit = CenterLoss(4, 6).double()
        crit.centers.copy_(initial_centers())
        crit(features_for(rank), LABELS[rank])

        torch.manual_seed(0)
        model = WSDAN(3, backbone="resnet18", feature_index=1, num_attentions=2)
        task = WSDANTask(model, WSDANLoss(), {}).train()
        task.net = torch.nn.parallel.DistributedDataParallel(task.net)
        g = torch.Generator().manual_seed(100 + rank)
        batch = {"image": torch.randn(4, 3, 32, 32, generator=g), "label": LABELS[rank] % 3}
        torch.manual_seed(rank)  # different crops/drops per rank
        task.training_step(batch, None)["loss"].backward()
        torch.save(
            {
                "centers": crit.centers,
                "task_centers": task.loss.center.centers,
                "fc_grad": task.net.module.fc.weight.grad,
            },
            f"{out_dir}/rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


def test_ddp_center_update_and_shared_backward(tmp_path):
    mp.spawn(worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    r0, r1 = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    # one process with the global batch of 8 = what every rank applied
    oracle = CenterLoss(4, 6).double()
    oracle.centers.copy_(initial_centers())
    oracle(torch.cat([features_for(0), features_for(1)]), torch.cat(LABELS))
    torch.testing.assert_close(r0["centers"], oracle.centers, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(r1["centers"], oracle.centers, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(r0["task_centers"], r1["task_centers"])
    assert r0["task_centers"].abs().sum() > 0
    torch.testing.assert_close(r0["fc_grad"], r1["fc_grad"])  # gradients all-reduced
    assert r0["fc_grad"].abs().sum() > 0
