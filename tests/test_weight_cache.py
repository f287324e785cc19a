"""The derived-weights cache never serves values built from a tensor that changed or was replaced."""
import gc

import torch

from lsdm_fast.ops._weight_cache import DerivedCache


def _counting():
    calls = []

    def build_for(t):
        def build():
            calls.append(1)
            return t.detach().clone() * 2
        return build
    return calls, build_for


def test_hit_while_unchanged_and_rebuild_after_in_place_update():
    cache, (calls, build_for) = DerivedCache(), _counting()
    w = torch.randn(4, 3)
    a = cache.get([w], "k", build_for(w))
    b = cache.get([w], "k", build_for(w))
    assert a is b and len(calls) == 1
    with torch.no_grad():
        w.add_(1.0)  # what an optimizer step does
    c = cache.get([w], "k", build_for(w))
    assert len(calls) == 2 and torch.equal(c, w * 2)


def test_load_state_dict_invalidates():
    cache, (calls, build_for) = DerivedCache(), _counting()
    lin = torch.nn.Linear(3, 4)
    cache.get([lin.weight], None, build_for(lin.weight))
    lin.load_state_dict({"weight": torch.randn(4, 3), "bias": torch.randn(4)})
    v = cache.get([lin.weight], None, build_for(lin.weight))
    assert len(calls) == 2 and torch.equal(v, lin.weight.detach() * 2)


def test_replacement_at_the_same_address_is_not_served_stale():
    cache, (calls, build_for) = DerivedCache(), _counting()
    w = torch.randn(64, 64)
    cache.get([w], None, build_for(w))
    ident = id(w)
    del w
    gc.collect()
    # a new tensor may reuse the address, the id and even the version (0): identity still differs
    for _ in range(50):
        w2 = torch.randn(64, 64)
        v = cache.get([w2], None, build_for(w2))
        assert torch.equal(v, w2 * 2)
        if id(w2) == ident:
            break
    assert len(calls) >= 2


def test_extra_key_and_eviction():
    cache, (calls, build_for) = DerivedCache(maxsize=2), _counting()
    ws = [torch.randn(2) for _ in range(3)]
    for w in ws:
        cache.get([w], "bf16", build_for(w))
    assert len(cache) == 2
    cache.get([ws[0]], "bf16", build_for(ws[0]))  # evicted: rebuilt
    cache.get([ws[0]], "fp32", build_for(ws[0]))  # another extra key: another entry
    assert len(calls) == 5


def test_inference_mode_tensors_are_built_every_call_not_cached():
    cache, (calls, build_for) = DerivedCache(), _counting()
    with torch.inference_mode():
        w = torch.randn(3)
    cache.get([w], None, build_for(w))
    cache.get([w], None, build_for(w))
    assert len(calls) == 2 and len(cache) == 0
