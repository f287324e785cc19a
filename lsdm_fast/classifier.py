"""A quick digit classifier, trained on the real training set, that judges whether generated
samples show the requested class (`lsdm train`'s accuracy); the experiments' feature net and judge
(lsdm_fast.metrics) are trained with the same loop, `fit_classifier`."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm.auto import trange


class Classifier(nn.Module):
    def __init__(self, data_dim: int, num_classes: int, hidden: int = 512):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(data_dim, hidden), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(0.2),
                                 nn.Linear(hidden, num_classes))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return self.net(y)


def fit_classifier(model: nn.Module, y: torch.Tensor, labels: torch.Tensor, *, steps: int, batch_size: int,
                   lr: float = 1e-3, seed: int = 0, progress: bool = False) -> nn.Module:
    """Cross-entropy, Adam with cosine decay, seeded minibatches and seeded dropout masks; returns
    the model in eval mode. Same seed and data: the same weights (dropout draws from the global
    generator, so training runs inside a forked, seeded one and leaves the caller's untouched)."""
    rng = torch.Generator(device=y.device).manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(steps, 1))
    model.train()
    with torch.random.fork_rng(devices=[y.device] if y.device.type == "cuda" else []):
        torch.manual_seed(seed)
        for _ in trange(steps, desc="classifier", disable=not progress, leave=False):
            idx = torch.randint(len(y), (batch_size,), generator=rng, device=y.device)
            loss = F.cross_entropy(model(y[idx]), labels[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
    return model.eval()


def train_classifier(images: torch.Tensor, labels: torch.Tensor, num_classes: int, *, steps: int = 2000,
                     batch_size: int = 256, lr: float = 1e-3, seed: int = 0, progress: bool = True) -> Classifier:
    y = images.reshape(len(images), -1).float()
    labels = labels.long().to(y.device)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Classifier(y.shape[1], num_classes).to(y.device)
    return fit_classifier(model, y, labels, steps=steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress)


@torch.no_grad()
def predict(model: Classifier, images: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    y = images.reshape(len(images), -1).float()
    return torch.cat([model(y[i:i + batch_size]).argmax(1) for i in range(0, len(y), batch_size)])


def accuracy(model: Classifier, images: torch.Tensor, labels: torch.Tensor) -> float:
    return float((predict(model, images).cpu() == labels.cpu().long()).float().mean())
