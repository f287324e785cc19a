"""One CUDA-graph capture helper for the benchmarks."""
from __future__ import annotations

import torch


def cuda_graph(fn, warmup: int = 3):
    """fn warmed up on a side stream (kernels compiled, lazy optimiser state created), then captured once;
    returns a callable that replays the graph and returns fn's captured output (the same tensor each time)."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(warmup):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()

    def replay():
        graph.replay()
        return out
    return replay
