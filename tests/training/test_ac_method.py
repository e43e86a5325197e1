"""AC method: training step, masked weights through optimiser steps (Adam + weight decay, bf16 autocast), the
loss wiring (iic_seg_loss, identity alignment, all-ones mask), head alternation, inference net, BN
recalibration, config and data errors."""

from __future__ import annotations

import copy

import pytest
import torch

import training.methods.ac.method as ac_module
from training.data.geometric import perform_affine_tf
from training.errors import ConfigError, DataError
from training.methods.ac import AC
from training.methods.ac.masked_attention import MaskedSelfAttention2d
from training.methods.ac.masked_conv import MaskedConv2d
from training.methods.ac.orderings import rewrite_to_plain, use_ordering
from training.methods.base import FitContext, build_method
from training.nets.input_adapter import InputAdapter

CTX = FitContext(device=torch.device("cpu"))
TINY = {"n_clusters": 3, "over_clusters": 5, "width": 4, "n_blocks": 2, "half_T": 2}


def _method(**overrides) -> AC:
    torch.manual_seed(0)
    method = build_method("ac", {**TINY, **overrides})
    assert isinstance(method, AC)
    return method


def _images(n: int = 4, size: int = 24, channels: int = 1) -> torch.Tensor:
    torch.manual_seed(1)
    return torch.rand(n, channels, size, size)


def _train(method: AC, steps: int, images: torch.Tensor, amp: bool = False, lr: float = 1e-2) -> list[float]:
    """The engine's order: step -> backward -> after_backward -> optimiser step -> on_step_end."""
    method.config.lr = lr
    opt = method.configure_optimizer()
    losses = []
    for _ in range(steps):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            out = method.training_step({"image": images}, CTX)
        out["loss"].backward()
        method.after_backward(CTX)
        for conv in method.masked_convs():  # no gradient on taps no allowed ordering shows
            assert (conv.weight.grad[:, :, conv.frozen_taps] == 0).all()
        opt.step()
        opt.zero_grad(set_to_none=True)
        method.on_step_end(CTX)
        losses.append(float(out["loss"].detach()))
    return losses


def test_one_step_finite_loss_and_gradients_where_expected(monkeypatch):
    # Orderings 1 and 9 both hide tap (2, 2) of every 3x3 layer (and (2, 1) of the type-A one).
    monkeypatch.setattr(ac_module, "sample_ordering_pair", lambda ids: (1, 9))
    method = _method()
    out = method.training_step({"image": _images()}, FitContext(device=CTX.device, epoch=1))  # main head
    assert torch.isfinite(out["loss"]) and out["head_over"] == 0.0
    out["loss"].backward()
    method.after_backward(CTX)
    for name, p in method.named_parameters():
        if name.startswith("net.heads.over"):
            assert not p.requires_grad and p.grad is None, name  # the auxiliary head rests in main-head epochs
        else:
            assert p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0, name
    # Taps hidden under both of this step's orderings have an exact zero gradient.
    o1, o2 = int(out["ordering_1"]), int(out["ordering_2"])
    for conv in method.masked_convs():
        hidden = ~conv.keep_mask([o1, o2])
        assert hidden.any() and (conv.weight.grad[:, :, hidden] == 0).all()
        assert conv.weight.grad[:, :, ~hidden].abs().sum() > 0


@pytest.mark.parametrize("amp", [False, True])
def test_taps_hidden_under_every_allowed_ordering_stay_bit_identical(amp):
    """Orderings (1, 2): the first layer's type-A tap (2, 1) is hidden under both; Adam + weight decay would
    move it without the on_step_end write-back. Every other tap must move."""
    method = _method(orderings=(1, 2), weight_decay=0.1, over_clusters=0, attention=False)
    first = method.masked_convs()[0]
    assert first.mask_type == "A" and first.frozen_taps.nonzero().tolist() == [[2, 1]]
    assert all(not c.frozen_taps.any() for c in method.masked_convs()[1:])  # type B: centre kept by both
    before = {id(c): c.weight.detach().clone() for c in method.masked_convs()}
    _train(method, 3, _images(size=16), amp=amp)
    for conv in method.masked_convs():
        w0, w = before[id(conv)], conv.weight.detach()
        assert torch.equal(w[:, :, conv.frozen_taps], w0[:, :, conv.frozen_taps])
        assert (w[:, :, ~conv.frozen_taps] != w0[:, :, ~conv.frozen_taps]).all()


def test_without_the_hooks_weight_decay_would_move_hidden_taps():
    """The write-back is needed: the same run without on_step_end changes the hidden tap."""
    method = _method(orderings=(1, 2), weight_decay=0.1, over_clusters=0, attention=False)
    first = method.masked_convs()[0]
    w0 = first.weight.detach().clone()
    method.on_step_end = lambda ctx: None
    _train(method, 2, _images(size=16))
    assert not torch.equal(first.weight.detach()[:, :, 2, 1], w0[:, :, 2, 1])


def test_with_all_orderings_no_tap_is_frozen():
    method = _method()
    assert all(not c.frozen_taps.any() for c in method.masked_convs())


def test_loss_is_iic_seg_loss_with_identity_alignment_and_no_mask(monkeypatch):
    calls = []
    real = ac_module.iic_seg_loss

    def spy(p1, p2, **kwargs):
        calls.append((p1.detach().clone(), p2.detach().clone(), kwargs))
        return real(p1, p2, **kwargs)

    monkeypatch.setattr(ac_module, "iic_seg_loss", spy)
    method = _method(lamb=1.0, lamb_over=1.3, half_T=3, hflip_p=0.0)
    images = _images()
    out = method.training_step({"image": images}, CTX)  # epoch 0: over head
    (p1, p2, kwargs) = calls[0]
    assert kwargs == {"lamb": 1.3, "half_T": 3, "mask": None, "uncollapsed": True, "reduce": CTX.all_reduce_sum}
    with torch.no_grad():  # the same maps, recomputed: Φ(x; o1) and Φ(x; o2), no warp in between
        for got, key in ((p1, "ordering_1"), (p2, "ordering_2")):
            with use_ordering(method.net, int(out[key])):
                expected = method.net(method.adapter(images), "over")
            torch.testing.assert_close(got, expected)
    assert p1.shape == (4, 5, 24, 24)
    all_ones = torch.ones(4, 24, 24)
    torch.testing.assert_close(out["loss"], real(p1, p2, lamb=1.3, half_T=3, mask=all_ones)[0])


def test_iic_transforms_flip_is_undone_before_the_loss(monkeypatch):
    calls = []
    real = ac_module.iic_seg_loss_with_affine
    monkeypatch.setattr(ac_module, "iic_seg_loss_with_affine",
                        lambda p1, p2, a, **kw: calls.append((p1, p2, a, kw)) or real(p1, p2, a, **kw))
    method = _method(iic_transforms=True, jitter=(0.0, 0.0, 0.0, 0.0), view_flip_p=1.0, hflip_p=0.0)
    images = _images()
    out = method.training_step({"image": images}, CTX)
    _, p2, affine, kwargs = calls[0]
    assert kwargs["uncollapsed"] and kwargs["mask"] is None
    with torch.no_grad(), use_ordering(method.net, int(out["ordering_2"])):
        flipped_view_output = method.net(method.adapter(images.flip(-1)), "over")
    torch.testing.assert_close(p2, flipped_view_output)  # view 2 is the flipped image ...
    torch.testing.assert_close(perform_affine_tf(p2, affine), flipped_view_output.flip(-1))  # ... undone here


def test_label_mask_option_passes_labelled_pixels(monkeypatch):
    seen = {}
    monkeypatch.setattr(ac_module, "iic_seg_loss", lambda p1, p2, **kw: seen.update(kw) or (p1.sum(), p1.sum()))
    method = _method(iic_train_mask=True, hflip_p=0.0)
    labels = torch.zeros(4, 24, 24, dtype=torch.int64)
    labels[:, :5] = 255
    method.training_step({"image": _images(), "label": labels}, CTX)
    torch.testing.assert_close(seen["mask"], (labels != 255).float())
    with pytest.raises(DataError, match="label"):
        method.training_step({"image": _images()}, CTX)


def test_a_few_steps_decrease_the_loss():
    torch.manual_seed(0)
    images = torch.zeros(4, 1, 32, 32)
    images[:, :, :, 16:] = 1.0  # two regions, plus noise
    images = (images * 0.6 + 0.2 + 0.05 * torch.randn_like(images)).clamp(0, 1)
    method = _method(n_clusters=2, over_clusters=0, width=8, attention=False)
    losses = _train(method, 20, images, lr=1e-2)  # MI starts at ~0 (the views are nearly independent at init)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1, losses


def test_same_seed_same_run():
    runs = []
    for _ in range(2):
        method = _method(iic_transforms=True, attention=False)
        torch.manual_seed(7)
        runs.append(_train(method, 2, _images(size=16)))
    assert runs[0] == runs[1]


def test_head_schedules():
    def heads(method: AC, **ctx) -> tuple[str, ...]:
        return method.active_heads(FitContext(device=CTX.device, **ctx))

    method = _method()
    assert [heads(method, epoch=e, step=7) for e in range(4)] == [("over",), ("main",)] * 2
    assert [heads(_method(over_first=False), epoch=e) for e in range(2)] == [("main",), ("over",)]
    assert [heads(_method(head_schedule="step"), epoch=0, step=s) for s in range(2)] == [("over",), ("main",)]
    assert heads(_method(head_schedule="both")) == ("over", "main")
    assert heads(_method(over_clusters=0), epoch=0) == ("main",)


def test_both_heads_sum_their_losses_and_extra_state_round_trips():
    method = _method(head_schedule="both")
    out = method.training_step({"image": _images()}, CTX)
    torch.testing.assert_close(float(out["loss"].detach()), out["loss_over"] + out["loss_main"])
    assert all(p.grad is None and p.requires_grad for p in method.parameters())
    restored = _method(head_schedule="both")
    restored.load_extra_state(method.extra_state())
    assert restored.extra_state() == {"last_heads": ["over", "main"]}
    with pytest.raises(ConfigError, match="head"):
        _method(over_clusters=0).load_extra_state(method.extra_state())


def test_inference_net_is_the_plain_o0_network():
    method = _method()
    assert method.eval_heads() == {"main": 3, "over": 5}
    x = _images(2, 24)
    _train(method, 1, x)
    method.eval()
    net = method.inference_net("main")
    assert isinstance(next(iter(net.children())), InputAdapter)
    with torch.no_grad():
        y = net(x)
        assert y.shape == (2, 3, 24, 24)
        torch.testing.assert_close(y.sum(dim=1), torch.ones(2, 24, 24))
        plain = rewrite_to_plain(copy.deepcopy(net))
        assert not any(isinstance(m, MaskedConv2d | MaskedSelfAttention2d) for m in plain.modules())
        torch.testing.assert_close(plain(x), y, rtol=1e-5, atol=1e-6)
        assert method.predict(x, "over").shape == (2, 24, 24)
    with pytest.raises(ConfigError, match="heads"):
        method.inference_net("aux")


def test_recalibrate_batchnorm_averages_unmasked_passes():
    method = _method()
    method.eval()
    x = _images(4, 24)
    assert method.recalibrate_batchnorm([{"image": x}]) == 1
    assert not method.training  # mode restored
    stem_conv, stem_bn = method.net.stem[0], method.net.stem[1]
    with torch.no_grad():
        feats = stem_conv(method.adapter(x))  # (B, w, H', W')
    torch.testing.assert_close(stem_bn.running_mean, feats.mean(dim=(0, 2, 3)))
    assert stem_bn.momentum == 0.1
    with pytest.raises(DataError, match="no batches"):
        method.recalibrate_batchnorm([])


def test_input_spec():
    spec = _method(channels=3, input={"sobel": "append"}).input_spec()
    assert (spec.channels, spec.color_order, spec.sobel, spec.stride) == (3, "rgb", True, 4)
    assert _method(attention=False).input_spec().stride == 2
    assert _method(channels=4, input={"native_size": 200}).input_spec().native_size == (200, 200)


@pytest.mark.parametrize(("overrides", "match"), [
    ({"attention": False, "orderings": (1, 9)}, "zigzag"),
    ({"orderings": (3,)}, "two distinct"),
    ({"orderings": (1, 17)}, "two distinct"),
    ({"channels": 2}, "channels"),
    ({"mode": "causal"}, "mode"),
    ({"grid_stride": 8}, "grid_stride"),
    ({"over_clusters": 1}, "over_clusters"),
    ({"nope": 1}, "nope"),
    ({"attention_heads": 3}, "attention_heads"),
])
def test_config_errors(overrides, match):
    with pytest.raises(ConfigError, match=match):
        build_method("ac", {**TINY, **overrides})


def test_data_errors():
    method = _method()
    with pytest.raises(DataError, match="channels"):
        method.training_step({"image": _images(channels=3)}, CTX)
    with pytest.raises(DataError, match="float"):
        method.training_step({"image": (_images() * 255).to(torch.uint8)}, CTX)
    with pytest.raises(DataError, match="window"):
        method.training_step({"image": _images(size=4)}, CTX)


def test_plain_inference_net_exports_to_onnx_with_dynamic_size():
    """The rewritten net (nn.Conv2d, unmasked matmul-softmax attention) is ONNX-exportable and size-agnostic."""
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    import io
    import warnings

    method = _method()
    method.eval()
    net = rewrite_to_plain(copy.deepcopy(method.inference_net("main"))).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (_images(1, 32),), buffer, input_names=["image"], output_names=["probs"],
                          dynamic_axes={"image": {2: "h", 3: "w"}}, opset_version=17, dynamo=False)
    session = ort.InferenceSession(buffer.getvalue())
    for shape in [(1, 1, 32, 32), (1, 1, 40, 24)]:
        x = torch.rand(shape)
        (out,) = session.run(None, {"image": x.numpy()})
        with torch.no_grad():
            torch.testing.assert_close(torch.from_numpy(out), net(x), rtol=1e-4, atol=1e-5)
