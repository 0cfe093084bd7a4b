"""Masked autoencoder: masking, patchify, the loss on masked patches only, encoder on visible tokens only."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from medvit import (
    MaskedAutoencoder,
    VisionTransformer,
    build_vit,
    patchify,
    random_masking,
    sincos_pos_embed,
    unpatchify,
)
from medvit.mae import patch_mask_to_pixels

SIZES = {2: 32, 3: 16}  # 2D images 32^2, 3D volumes 16^3


def tiny_encoder(spatial_dims: int = 2, **kw) -> VisionTransformer:
    torch.manual_seed(0)
    cfg = {"spatial_dims": spatial_dims, "img_size": SIZES[spatial_dims], "patch_size": 8 if spatial_dims == 2 else 4,
           "in_chans": 1, "embed_dim": 32, "depth": 2, "num_heads": 4, "num_classes": 0}
    return build_vit(**{**cfg, **kw})


def tiny_mae(spatial_dims: int = 2, mae_kw: dict | None = None, **kw) -> MaskedAutoencoder:
    enc = tiny_encoder(spatial_dims, **kw)
    torch.manual_seed(1)
    return MaskedAutoencoder(enc, decoder_dim=32, decoder_depth=1, decoder_heads=4, **(mae_kw or {}))


def images(mae: MaskedAutoencoder, batch: int = 3, seed: int = 2) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, mae.in_chans, *mae.encoder.img_size, generator=gen)


# ---- masking -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("num_patches", "ratio", "visible"),
                         [(16, 0.75, 4), (16, 0.5, 8), (64, 0.75, 16), (64, 0.9, 6), (64, 0.0, 64), (8, 0.99, 1)])
def test_random_masking_keeps_the_configured_share_per_sample(num_patches, ratio, visible):
    torch.manual_seed(0)
    ids_keep, mask, ids_restore = random_masking(5, num_patches, ratio)
    assert ids_keep.shape == (5, visible) and mask.shape == (5, num_patches)
    assert torch.equal(mask.sum(dim=1), torch.full((5,), float(num_patches - visible)))
    assert set(mask.unique().tolist()) <= {0.0, 1.0}
    assert (mask.gather(1, ids_keep) == 0).all()  # the kept ids are exactly the unmasked patches
    assert all(len(set(row.tolist())) == visible for row in ids_keep)
    assert torch.equal(ids_restore.sort(dim=1).values, torch.arange(num_patches).expand(5, -1))
    if 1 < visible < num_patches:
        assert len({tuple(row.tolist()) for row in mask}) > 1  # a different mask for each sample


def test_masking_noise_fixes_the_choice_and_bad_ratios_fail():
    noise = torch.tensor([[0.9, 0.1, 0.5, 0.3]])
    ids_keep, mask, _ = random_masking(1, 4, 0.5, noise=noise)
    assert sorted(ids_keep[0].tolist()) == [1, 3]
    assert mask.tolist() == [[1.0, 0.0, 1.0, 0.0]]
    for bad in (1.0, -0.1):
        with pytest.raises(ValueError, match="mask_ratio"):
            random_masking(1, 4, bad)


@pytest.mark.parametrize("spatial_dims", [2, 3])
@pytest.mark.parametrize("ratio", [0.5, 0.75, 0.9])
def test_model_masks_the_configured_share(spatial_dims, ratio):
    mae = tiny_mae(spatial_dims, mae_kw={"mask_ratio": ratio})
    n = mae.encoder.num_patches
    out = mae(images(mae))
    expected_masked = n - max(1, round(n * (1 - ratio)))
    assert torch.equal(out.mask.sum(dim=1), torch.full((3,), float(expected_masked)))
    assert out.pred.shape == (3, n, math.prod(mae.patch_size))
    # mask_ratio passed to forward overrides the default
    assert mae(images(mae), mask_ratio=0.25).mask.sum(dim=1).tolist() == [n - round(0.75 * n)] * 3


# ---- patchify --------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("shape", "patch"), [((2, 3, 32, 48), (8, 16)), ((2, 2, 16, 8, 12), (4, 2, 4))])
def test_patchify_unpatchify_round_trip(shape, patch):
    x = torch.randn(shape)
    grid = [s // p for s, p in zip(shape[2:], patch, strict=True)]
    patches = patchify(x, patch)
    assert patches.shape == (shape[0], math.prod(grid), math.prod(patch) * shape[1])
    assert torch.equal(unpatchify(patches, patch, grid), x)
    # the first patch is the corner block, pixels flattened with channels last
    corner = x[(slice(None), slice(None), *(slice(0, p) for p in patch))]
    assert torch.equal(patches[:, 0], corner.movedim(1, -1).reshape(shape[0], -1))


def test_patchify_matches_unfold_in_2d():
    x = torch.randn(2, 3, 16, 24)
    unfolded = F.unfold(x, kernel_size=4, stride=4).transpose(1, 2)  # (B, N, C*4*4), channels first
    ours = patchify(x, (4, 4)).reshape(2, 24, 4, 4, 3).permute(0, 1, 4, 2, 3).reshape(2, 24, -1)
    assert torch.equal(ours, unfolded)


@pytest.mark.parametrize("spatial_dims", [2, 3])
def test_patch_order_matches_the_encoder_tokens(spatial_dims):
    # PatchEmbed is linear in each patch: token i must equal W @ patchify(x)[i] + b
    enc = tiny_encoder(spatial_dims, in_chans=2)
    x = torch.randn(2, 2, *enc.img_size)
    proj = enc.patch_embed.proj
    w = proj.weight.movedim(1, -1).reshape(enc.embed_dim, -1)  # (D, prod(p) * C), channels last
    with torch.no_grad():
        torch.testing.assert_close(enc.patch_embed(x), patchify(x, enc.patch_size) @ w.T + proj.bias)


def test_pixel_mask_covers_exactly_the_masked_patches():
    mask = torch.tensor([[1.0, 0.0, 0.0, 1.0, 0.0, 1.0]])
    pix = patch_mask_to_pixels(mask, (4, 2), (2, 3))
    assert pix.shape == (1, 1, 8, 6)
    torch.testing.assert_close(patchify(pix, (4, 2)).mean(-1), mask)


# ---- loss ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_loss_only_counts_masked_patches(norm_pix_loss):
    mae = tiny_mae(mae_kw={"norm_pix_loss": norm_pix_loss})
    x = images(mae)
    out = mae(x)
    visible = (1 - out.mask).unsqueeze(-1)
    base = mae.forward_loss(x, out.pred, out.mask)
    torch.testing.assert_close(base, out.loss)
    # changing predictions or pixels of visible patches leaves the loss unchanged
    noise = torch.randn_like(out.pred) * 5
    assert torch.equal(mae.forward_loss(x, out.pred + noise * visible, out.mask), base)
    x_vis = unpatchify(patchify(x, mae.patch_size) + noise * visible, mae.patch_size, mae.encoder.grid_size)
    assert torch.equal(mae.forward_loss(x_vis, out.pred, out.mask), base)
    # changing one masked patch changes it
    b, i = torch.nonzero(out.mask)[0].tolist()
    pred = out.pred.clone()
    pred[b, i] += 1.0
    assert mae.forward_loss(x, pred, out.mask) > base
    x_masked = patchify(x, mae.patch_size)
    x_masked[b, i] += torch.randn(x_masked.shape[-1])  # not affine: norm_pix_loss would undo that
    x_masked = unpatchify(x_masked, mae.patch_size, mae.encoder.grid_size)
    assert not torch.equal(mae.forward_loss(x_masked, out.pred, out.mask), base)


def test_loss_value_is_mse_over_masked_patches():
    mae = tiny_mae(mae_kw={"norm_pix_loss": False})
    x = torch.zeros(1, 1, 32, 32)
    x[..., :8, :8] = 2.0  # patch 0 all 2, all other patches 0
    pred = torch.zeros(1, 16, 64)
    mask = torch.zeros(1, 16)
    mask[0, [0, 5]] = 1.0  # patch 0 (error 4 per pixel) and patch 5 (error 0) masked
    assert mae.forward_loss(x, pred, mask).item() == pytest.approx(2.0)
    mask[0, 0] = 0.0
    assert mae.forward_loss(x, pred, mask).item() == 0.0


def test_norm_pix_target_is_standardised_per_patch():
    mae = tiny_mae()
    target = mae.target(images(mae) * 7 + 3)
    torch.testing.assert_close(target.mean(-1), torch.zeros(target.shape[:2]), atol=1e-5, rtol=0)
    torch.testing.assert_close(target.std(-1), torch.ones(target.shape[:2]), atol=1e-3, rtol=0)


# ---- the encoder sees only visible tokens ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spatial_dims", "kw", "prefix"),
    [(2, {}, 1), (3, {}, 1), (2, {"distilled": True}, 2), (2, {"class_token": False, "global_pool": "avg"}, 0),
     (3, {"stem": "conv", "pos_embed": "sincos"}, 1)],
)
def test_encoder_blocks_see_only_visible_tokens(spatial_dims, kw, prefix):
    mae = tiny_mae(spatial_dims, mae_kw={"mask_ratio": 0.75}, **kw)
    seen: list[int] = []
    hooks = [blk.register_forward_pre_hook(lambda _m, args: seen.append(args[0].shape[1]))
             for blk in mae.encoder.blocks]
    mae(images(mae))
    for h in hooks:
        h.remove()
    visible = round(mae.encoder.num_patches * 0.25)
    assert mae.encoder.num_prefix_tokens == prefix
    assert seen == [prefix + visible] * len(mae.encoder.blocks)


@pytest.mark.parametrize(("spatial_dims", "stem"), [(2, "patch"), (2, "conv"), (3, "conv")])
def test_masked_pixels_cannot_reach_the_encoder(spatial_dims, stem):
    mae = tiny_mae(spatial_dims, stem=stem).eval()
    x = images(mae)
    noise = torch.rand(x.shape[0], mae.encoder.num_patches, generator=torch.Generator().manual_seed(3))
    _, mask, _ = random_masking(x.shape[0], mae.encoder.num_patches, mae.mask_ratio, noise=noise)
    pix = patch_mask_to_pixels(mask, mae.patch_size, mae.encoder.grid_size)
    x_changed = x + 10 * torch.randn_like(x) * pix  # only masked pixels change
    with torch.no_grad():
        latent = mae.forward_encoder(x, mae.mask_ratio, noise)[0]
        torch.testing.assert_close(mae.forward_encoder(x_changed, mae.mask_ratio, noise)[0], latent,
                                   rtol=0, atol=1e-6)
        if stem == "conv":  # without zeroing, the overlapping 3x3 convolutions would leak them
            mae.conv_stem = False
            leaked = mae.forward_encoder(x_changed, mae.mask_ratio, noise)[0]
            assert (leaked - latent).abs().max() > 1e-3


# ---- training ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("spatial_dims", "stem", "norm_pix_loss", "max_ratio"),
    [(2, "patch", False, 0.65), (2, "conv", False, 0.65), (3, "patch", False, 0.65), (3, "conv", False, 0.65),
     (2, "patch", True, 0.8)],
)
def test_a_few_steps_lower_the_loss_on_a_fixed_batch(spatial_dims, stem, norm_pix_loss, max_ratio):
    mae = tiny_mae(spatial_dims, stem=stem, in_chans=2, mae_kw={"norm_pix_loss": norm_pix_loss})
    gen = torch.Generator().manual_seed(4)
    low_res = torch.randn(4, 2, *([4] * spatial_dims), generator=gen)  # smooth images: masked patches are predictable
    x = F.interpolate(low_res, size=mae.encoder.img_size, mode="bilinear" if spatial_dims == 2 else "trilinear")
    noise = torch.rand(4, mae.encoder.num_patches, generator=gen)  # the same mask every step
    opt = torch.optim.AdamW(mae.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = mae(x, noise=noise).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert math.isfinite(losses[0]) and losses[-1] < max_ratio * losses[0]
    stem_grad = next(mae.encoder.patch_embed.parameters()).grad
    assert stem_grad is not None and stem_grad.abs().sum() > 0


def test_grad_checkpointing_gives_the_same_loss_and_gradients():
    mae = tiny_mae(drop_path_rate=0.1).train()
    x = images(mae)
    noise = torch.rand(3, mae.encoder.num_patches, generator=torch.Generator().manual_seed(5))
    results = []
    for enable in (False, True):
        mae.zero_grad()
        mae.encoder.set_grad_checkpointing(enable)
        torch.manual_seed(6)
        loss = mae(x, noise=noise).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in mae.named_parameters() if p.grad is not None}))
    (loss_a, grads_a), (loss_b, grads_b) = results
    torch.testing.assert_close(loss_b, loss_a)
    assert grads_a.keys() == grads_b.keys() and "encoder.blocks.0.attn.qkv.weight" in grads_a
    for name, grad in grads_a.items():
        torch.testing.assert_close(grads_b[name], grad, rtol=1e-5, atol=1e-6, msg=name)


def test_bf16_autocast_on_cpu_trains_and_stays_close_to_fp32():
    mae = tiny_mae(stem="conv")
    x = images(mae)
    noise = torch.rand(3, mae.encoder.num_patches, generator=torch.Generator().manual_seed(7))
    ref = mae(x, noise=noise).loss
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = mae(x, noise=noise)
    assert out.pred.dtype == torch.bfloat16 and out.loss.dtype == torch.float32
    out.loss.backward()
    assert (out.loss - ref).abs() < 0.05 * ref.abs()
    assert all(torch.isfinite(p.grad).all() for p in mae.parameters() if p.grad is not None)


# ---- after training -----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("norm_pix_loss", [True, False])
def test_reconstruct_pastes_visible_patches_and_inverts_the_target(norm_pix_loss):
    mae = tiny_mae(3, mae_kw={"norm_pix_loss": norm_pix_loss})
    x = images(mae)
    out = mae(x)
    recon = mae.reconstruct(x, out)
    assert recon.shape == x.shape
    pix = patch_mask_to_pixels(out.mask, mae.patch_size, mae.encoder.grid_size).bool().expand_as(x)
    assert torch.equal(recon[~pix], x[~pix])
    assert not torch.allclose(recon[pix], x[pix])
    # a perfect prediction of the (normalised) target gives the input back everywhere
    perfect = out._replace(pred=mae.target(x))
    torch.testing.assert_close(mae.reconstruct(x, perfect), x, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize(("kw", "heads"), [({}, ["head.bias", "head.weight"]),
                                           ({"distilled": True, "stem": "conv"},
                                            ["head.bias", "head.weight", "head_dist.bias", "head_dist.weight"])])
def test_encoder_state_dict_loads_into_a_plain_vit(kw, heads):
    mae = tiny_mae(**{**kw, "num_classes": 7})
    mae(images(mae)).loss.backward()  # make sure the encoder is in a trained-like state
    sd = mae.encoder_state_dict()
    fresh = build_vit(**{**mae.encoder.config, "num_classes": 3})
    missing, unexpected = fresh.load_state_dict(sd, strict=False)
    assert sorted(missing) == heads and unexpected == []
    fresh.eval()
    mae.encoder.eval()
    x = images(mae)
    with torch.no_grad():
        torch.testing.assert_close(fresh.forward_features(x), mae.encoder.forward_features(x))


@pytest.mark.parametrize("kw", [{}, {"distilled": True, "pos_embed": "sincos"}])
def test_set_img_size_rebuilds_the_decoder_positions(kw):
    mae = tiny_mae(**kw)
    prefix = mae.encoder.num_prefix_tokens
    mae.set_img_size(48)
    assert mae.encoder.img_size == (48, 48) and mae.decoder_pos_embed.shape == (1, prefix + 36, 32)
    torch.testing.assert_close(mae.decoder_pos_embed, sincos_pos_embed(32, (6, 6), prefix))
    out = mae(torch.randn(2, 1, 48, 48))
    assert out.pred.shape == (2, 36, 64)


def assert_same_buffers(module: torch.nn.Module, before: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    after = dict(module.named_buffers())
    assert set(after) == set(before)
    for name, (buf, values) in before.items():
        assert after[name] is buf and torch.equal(after[name], values), name


def snapshot(module: torch.nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Every buffer: (the tensor object itself, a copy of its values)."""
    return {name: (buf, buf.detach().clone()) for name, buf in module.named_buffers()}


def test_forward_leaves_the_buffers_unchanged():
    mae = tiny_mae(pos_embed="sincos")  # the encoder's table is a buffer too
    before = snapshot(mae)
    assert {"decoder_pos_embed", "encoder.pos_embed"} <= set(before)
    mae(images(mae)).loss.backward()
    assert_same_buffers(mae, before)
    mae.encoder.set_img_size(48)  # the encoder alone: the decoder's table no longer fits, and stays as it is
    before = snapshot(mae)
    with pytest.raises(ValueError, match="MaskedAutoencoder.set_img_size"):
        mae(torch.randn(2, 1, 48, 48))
    assert_same_buffers(mae, before)


def test_no_weight_decay_names_exist():
    mae = tiny_mae()
    names = mae.no_weight_decay()
    assert names <= set(dict(mae.named_parameters()))
    assert {"mask_token", "encoder.cls_token", "encoder.pos_embed"} <= names
