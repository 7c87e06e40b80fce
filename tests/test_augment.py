"""Augmentations: shapes, identity at zero strength, per-example randomness, vmap, semantics."""

import functools

import dm_pix as pix
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cifar_jax.core import augment
from cifar_jax.errors import ConfigError
from configs import default


def augment_config(**overrides):
    cfg = default.get_config().augment
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


B, H, W = 6, 11, 11  # odd size: the centre pixel is a fixed point of every rotation
# numpy inputs: eager JAX ops at import time would each compile (seconds on 2 cores).
IMAGES = np.random.default_rng(0).uniform(0.05, 0.95, (B, H, W, 3)).astype(np.float32)
SAME = np.broadcast_to(IMAGES[:1], IMAGES.shape)  # identical images: outputs must still differ
BATCH = np.concatenate([SAME, IMAGES])  # one batch for both kinds of check
KEY = jax.random.key(42)
KEYS = jax.random.split(KEY, 2)

# name -> f(key, images, strength); strength 0 must be the identity. All run in one compiled
# program (`all_outputs`), vmapped over two keys.
OPS = {
    "crop_zero": lambda k, x, s: augment.random_crop(k, x, 3),
    "crop_reflect": lambda k, x, s: augment.random_crop(k, x, 3, "reflect"),
    "flip": lambda k, x, s: augment.random_flip(k, x, 0.5 * s),
    "rotation": lambda k, x, s: augment.random_rotation(k, x, 45.0 * s),
    "rotation_bilinear": lambda k, x, s: augment.random_rotation(k, x, 45.0 * s, order=1),
    "brightness": lambda k, x, s: augment.color_jitter(k, x, brightness=0.4 * s),
    "contrast": lambda k, x, s: augment.color_jitter(k, x, contrast=0.4 * s),
    "saturation": lambda k, x, s: augment.color_jitter(k, x, saturation=0.4 * s),
    "hue": lambda k, x, s: augment.color_jitter(k, x, hue=0.2 * s),
    "cutout": lambda k, x, s: augment.cutout(k, x, 4 * s),
}
CROPS = {"crop_zero": (3, "zero"), "crop_reflect": (3, "reflect")}  # padding is a static shape


@functools.cache
def all_outputs():
    """name -> (augmented [2 keys, 2B, H, W, C], strength-0 output, same shape) as numpy.

    One compiled program for all ops (compiles dominate the runtime on a 2-core machine); the
    strength is traced, so strength 0 runs the same program through the `jnp.where` path.
    """
    traced = {n: op for n, op in OPS.items() if n not in CROPS}

    @jax.jit
    def run(s):
        return {n: jax.vmap(op, in_axes=(0, None, None))(KEYS, BATCH, s) for n, op in OPS.items()}

    on = jax.tree.map(np.asarray, run(jnp.float32(1.0)))
    off = jax.tree.map(np.asarray, run(jnp.float32(0.0)))
    result = {n: (on[n], off[n]) for n in traced}
    for n in CROPS:  # padding 0 is a different (static) shape: the trivial path
        result[n] = (on[n], np.stack([np.asarray(augment.random_crop(k, BATCH, 0)) for k in KEYS]))
    return result


def outputs(name):
    return all_outputs()[name]


@pytest.mark.parametrize("name", sorted(OPS))
def test_op_shapes_identity_per_example_and_vmap(name):
    on, off = outputs(name)
    assert on.shape == (2,) + BATCH.shape and on.dtype == BATCH.dtype
    for k in range(2):
        np.testing.assert_array_equal(off[k], BATCH)  # bit-exact identity at zero strength
    # Per example: identical inputs give different outputs.
    assert len({row.tobytes() for row in on[0, :B]}) > 1
    # Under vmap over keys: different keys, different batches.
    assert not np.array_equal(on[0], on[1])


def test_concrete_zero_strengths_skip_the_op():
    for fn in [
        lambda: augment.random_flip(KEY, IMAGES, 0.0),
        lambda: augment.random_rotation(KEY, IMAGES, 0),
        lambda: augment.color_jitter(KEY, IMAGES),
        lambda: augment.cutout(KEY, IMAGES, 0),
        lambda: augment.mixup(KEY, IMAGES, np.eye(B, dtype=np.float32), 0.0)[0],
    ]:
        assert fn() is IMAGES  # returned as is: nothing traced or compiled


@pytest.mark.parametrize("name, np_mode", [("crop_zero", "constant"), ("crop_reflect", "reflect")])
def test_crop_is_a_window_of_the_padded_image(name, np_mode):
    p, _ = CROPS[name]
    out = outputs(name)[0][0, B:]
    padded = np.pad(np.asarray(IMAGES), ((0, 0), (p, p), (p, p), (0, 0)), mode=np_mode)
    offsets = set()
    for i in range(B):
        found = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if np.array_equal(out[i], padded[i, dy : dy + H, dx : dx + W])
        ]
        assert found, f"image {i} is not a crop of its padded image"
        offsets.add(found[0])
    assert len(offsets) > 1


def test_flip_is_left_right_or_nothing():
    out = outputs("flip")[0].reshape(-1, H, W, 3)
    x = np.concatenate([np.asarray(BATCH)] * 2)
    flipped = [np.array_equal(o, xi[:, ::-1]) for o, xi in zip(out, x)]
    kept = [np.array_equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or k for f, k in zip(flipped, kept)) and any(flipped) and any(kept)


@pytest.mark.parametrize("name", ["rotation", "rotation_bilinear"])
def test_rotation_keeps_the_centre_and_fills_with_zero(name):
    out = outputs(name)[0]
    centre = np.asarray(BATCH)[:, H // 2, W // 2]
    np.testing.assert_allclose(
        out[:, :, H // 2, W // 2], np.broadcast_to(centre, out.shape[:2] + (3,)), atol=1e-6
    )
    assert (out == 0).any()  # zero fill where the rotated image leaves the frame (angles to 45 deg)


def test_rotate_matches_dm_pix():
    angles = jnp.linspace(-0.8, 0.8, B)
    pix_rotate = lambda order: jax.vmap(  # noqa: E731
        lambda im, a: pix.rotate(im, a, order=order, mode="constant", cval=0.0)
    )(IMAGES, angles)
    ours0, ref0, ours1, ref1 = jax.jit(
        lambda: (
            augment.rotate(IMAGES, angles),
            pix_rotate(0),
            augment.rotate(IMAGES, angles, order=1),
            pix_rotate(1),
        )
    )()
    np.testing.assert_array_equal(ours0, ref0)  # nearest: identical
    # Bilinear: identical where the source lies inside the image; at the border dm-pix zeroes the
    # pixel, while ours blends with zero (grid_sample-like).
    inside = np.asarray(ref1) != 0
    np.testing.assert_allclose(np.asarray(ours1)[inside], np.asarray(ref1)[inside], atol=1e-5)
    assert inside.mean() > 0.5


def test_brightness_scales_each_image_by_one_factor_in_range():
    out, x = outputs("brightness")[0][0], np.asarray(BATCH)
    for o, xi in zip(out, x):
        unclipped = o < 1.0
        ratio = o[unclipped] / xi[unclipped]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)
        assert 0.6 - 1e-6 <= ratio[0] <= 1.4 + 1e-6


def test_saturation_keeps_the_grey_level():
    # Saturation blends with the ITU-R 601 grey image, so unclipped pixels keep their grey level.
    out, x = outputs("saturation")[0][0], np.asarray(BATCH)
    grey = lambda im: im @ np.array([0.2989, 0.587, 0.114])  # noqa: E731
    unclipped = np.all((out > 0) & (out < 1), axis=-1)
    # atol: the weights sum to 0.9999 (in torchvision too), so the grey level moves by <= 1e-4.
    np.testing.assert_allclose(grey(out)[unclipped], grey(x)[unclipped], atol=1e-4)
    assert not np.allclose(out, x)


def test_color_jitter_on_grey_images():
    grey = IMAGES[..., :1]
    s = jnp.float32(0.3)
    out = jax.jit(lambda s: augment.color_jitter(KEY, grey, s, s, s, s))(s)
    assert out.shape == grey.shape and out.dtype == grey.dtype and not np.array_equal(out, grey)
    # Saturation and hue leave single-channel images alone (as torchvision does).
    assert augment.color_jitter(KEY, grey, 0, 0, 0.5, 0.2) is grey


def test_cutout_zeroes_one_clipped_square_per_image():
    size = 4
    out, x = outputs("cutout")[0][0], np.asarray(BATCH)
    for i in range(2 * B):
        changed = np.any(out[i] != x[i], axis=-1)
        assert np.all(out[i][changed] == 0)
        rows, cols = np.nonzero(changed)
        assert 0 < changed.sum() <= size * size
        # A (clipped) rectangle: its bounding box is filled.
        assert changed.sum() == (np.ptp(rows) + 1) * (np.ptp(cols) + 1)
        assert np.ptp(rows) < size and np.ptp(cols) < size


# ---- Mixup.

NUM_CLASSES = 10
LABELS = np.arange(B)  # distinct labels: the mixing partner can be read off the targets
TARGETS = np.eye(NUM_CLASSES, dtype=np.float32)[LABELS]


def test_mix_with_fixed_lambda_is_exact():
    perm = np.array([2, 0, 1, 5, 3, 4])
    x, y = IMAGES, TARGETS
    mix = jax.jit(augment.mix)
    for lam in [np.float32(0.3), np.linspace(0.0, 1.0, B, dtype=np.float32)]:  # batch, per image
        images, targets = mix(x, y, lam, perm)
        li, lt = np.reshape(lam, (-1, 1, 1, 1)), np.reshape(lam, (-1, 1))
        # elementwise mixing: no sums whose order could differ, so a few ulps
        np.testing.assert_allclose(images, li * x + (1 - li) * x[perm], rtol=1e-6, atol=1e-7)
        np.testing.assert_allclose(targets, lt * y + (1 - lt) * y[perm], rtol=1e-6, atol=1e-7)


@functools.cache
def mixup_outputs():
    """Mixup vmapped over 400 (key, alpha) pairs: alpha 0, then 1.0 and 0.2 alternating."""
    n = 400
    alphas = jnp.concatenate([jnp.zeros(1), jnp.tile(jnp.array([1.0, 0.2]), n // 2)[: n - 1]])
    keys = jax.random.split(KEY, n)
    images, targets = jax.jit(jax.vmap(lambda k, a: augment.mixup(k, IMAGES, TARGETS, a)))(
        keys, alphas
    )
    return np.asarray(alphas), np.asarray(images), np.asarray(targets)


def test_mixup_mixes_labels_consistently_with_images():
    alphas, images, targets = mixup_outputs()
    np.testing.assert_array_equal(images[0], IMAGES)  # traced alpha 0: off, bit for bit
    np.testing.assert_array_equal(targets[0], TARGETS)
    np.testing.assert_allclose(targets.sum(-1), 1.0, rtol=1e-6)  # 10 terms: <= 10 ulps in any order
    assert np.all(targets >= 0)
    x = np.asarray(IMAGES)
    mixed = 0
    for j in range(1, len(alphas)):
        y = targets[j]
        own = y[np.arange(B), LABELS]  # lam, or 1 where an image is paired with itself
        partner = np.argmax(np.where(np.eye(NUM_CLASSES)[LABELS] > 0, -1.0, y), axis=-1)
        partner = np.where(own < 1.0, partner, np.arange(B))  # labels are the image indices
        expected = own[:, None, None, None] * x + (1 - own[:, None, None, None]) * x[partner]
        np.testing.assert_allclose(images[j], expected, rtol=1e-5, atol=1e-6)
        lam = own[own < 1.0]  # one lambda per batch
        assert len(lam) == 0 or np.ptp(lam) < 1e-6
        mixed += len(lam) > 0
    assert mixed > len(alphas) // 2


def test_mixup_lambda_follows_beta():
    # Beta(alpha, alpha) has mean 1/2; Beta(0.2, 0.2) puts most of its mass near 0 and 1, Beta(1, 1)
    # is uniform. lam is read off the targets of images that were mixed with another one.
    alphas, _, targets = mixup_outputs()
    for alpha, extreme_range in [(1.0, (0.1, 0.3)), (0.2, (0.55, 0.9))]:
        lams = []
        for j in np.nonzero(alphas == alpha)[0]:
            own = targets[j][np.arange(B), LABELS]
            if (own < 1.0).any():
                lams.append(own[own < 1.0][0])
        lams = np.array(lams)
        extreme = np.mean((lams < 0.1) | (lams > 0.9))
        assert extreme_range[0] < extreme < extreme_range[1], (alpha, extreme)
        assert abs(lams.mean() - 0.5) < 0.08, (alpha, lams.mean())


def test_sample_mixup_shapes():
    # Shapes only (eval_shape: the Beta sampler takes seconds to compile); `mix` with one lambda
    # per example is checked exactly above.
    for per_example, shape in [(False, ()), (True, (B,))]:
        lam, perm = jax.eval_shape(
            lambda k: augment.sample_mixup(k, B, 1.0, per_example=per_example), KEY
        )
        assert lam.shape == shape and perm.shape == (B,)


# ---- The configured pipeline.


def test_augment_batch_is_identity_when_all_off():
    cfg = augment_config()
    assert augment.augment_batch(cfg, KEY, IMAGES) is IMAGES


def test_augment_batch_all_on_vmapped_over_seeds_and_traced_strengths():
    cfg = augment_config(
        crop_padding=2,
        flip=True,
        rotation_degrees=10.0,
        brightness=0.2,
        contrast=0.2,
        saturation=0.2,
        hue=0.05,
        cutout_size=3,
    )
    grid = {  # seed 0: every traceable strength 0; seed 1: the config's values
        name: jnp.array([0.0, getattr(cfg, name)]) for name in augment.TRACEABLE_STRENGTHS
    }
    fn = jax.jit(jax.vmap(lambda k, hp: augment.augment_batch(cfg, k, IMAGES, hp)))
    out = np.asarray(fn(KEYS, grid))
    assert out.shape == (2,) + IMAGES.shape and out.dtype == IMAGES.dtype
    assert out.min() >= 0.0 and out.max() <= 1.0
    # Seed 0 equals a separate, unbatched run of the ops that have no traced strength (each op
    # has its own sub-key, whichever others are on; traced zeros are exact identities).
    geometric = augment_config(crop_padding=2, flip=True, cutout_size=3)
    alone = np.asarray(jax.jit(lambda k: augment.augment_batch(geometric, k, IMAGES))(KEYS[0]))
    np.testing.assert_array_equal(out[0], alone)
    assert not np.array_equal(alone, IMAGES)
    assert not np.array_equal(out[1], out[0])


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(crop_mode="edge"), "crop_mode"),
        (dict(crop_padding=-1), "crop_padding"),
        (dict(brightness=-0.1), "brightness"),
        (dict(hue=0.6), "hue"),
        (dict(rotation_degrees=float("nan")), "rotation_degrees"),
        (dict(crop_padding=11, crop_mode="reflect"), "crop_padding"),
    ],
)
def test_bad_config_raises_config_error(overrides, field):
    with pytest.raises(ConfigError, match=f"^augment\\.{field}="):
        augment.augment_batch(augment_config(**overrides), KEY, IMAGES)
