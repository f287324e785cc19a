import os

import torch

# Without a GPU the Triton kernels run under the interpreter (a smoke run, not a timing); it must be set
# before anything imports a @triton.jit kernel, so here, before any benchmark module is collected.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
