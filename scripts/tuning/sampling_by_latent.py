"""One-step sampling and encoding speed of the default (patch) model at latent sizes 32, 64 and 128 (what
AutoencoderConfig.grow_latent can choose), one thread, thread CPU time, cpp backend, random weights, 4,096
MNIST-sized rows, median of 5 (bench/bench_encode_generate.py measures latent 32 with pytest-benchmark).

    OMP_NUM_THREADS=1 python scripts/tuning/sampling_by_latent.py
"""
import time

import torch

from lsdm_fast import LSDM, LSDMConfig


def model(latent: int) -> LSDM:
    torch.manual_seed(0)
    config = LSDMConfig()
    config.autoencoder.latent_dim = latent
    m = LSDM(config)
    m._build(784, 10, (28, 28))
    m.meta.update(cond_kind="onehot", num_classes=10, cond_dim=10, data_dim=784, image_shape=(28, 28))
    for mod in m.modules():
        mod.eval()
    return m


def median_thread_time(fn, reps: int = 5) -> float:
    fn()
    times = []
    for _ in range(reps):
        t = time.thread_time()
        fn()
        times.append(time.thread_time() - t)
    return sorted(times)[reps // 2]


def main() -> None:
    torch.set_num_threads(1)
    rows = 4096
    labels, images = torch.arange(rows) % 10, torch.rand(rows, 784)
    with torch.no_grad():
        for latent in (32, 64, 128):
            m = model(latent)
            g = median_thread_time(lambda: m.sample(labels, seed=1, backend="cpp"))
            e = median_thread_time(lambda: m.encode(images, backend="cpp", batch_size=rows))
            print(f"latent {latent}: generate {rows / g:,.0f} images/s, encode {rows / e:,.0f} images/s", flush=True)


if __name__ == "__main__":
    main()
