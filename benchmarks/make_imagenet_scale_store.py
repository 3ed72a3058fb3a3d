"""A synthetic oodbench store with ImageNet shapes, for speed benchmarks (not for accuracy claims).

Writes a real store (the same HDF5 layout and writers as ``oodbench extract``) under ``--out``:

  <out>/synth-vitb16-<fp>/model.h5           visual proj (768 x 512), ln_post, logit_scale 100,
                                             a linear head on penultimate (1000 x 768, OpenOOD-like)
  <out>/synth-vitb16-<fp>/text/*.h5          class bank (T=1, 1000 x 512) and every other bank a
                                             registered scorer names by default (negatives, ...)
  <out>/synth-vitb16-<fp>/features/*.h5      penultimate (768) + image_embeds (512) + labels + ids
  <out>/imagenet-synth.yaml                  the benchmark (``-b imagenet-synth --benchmarks ...``)

Splits (defaults = ImageNet-1k shapes): ID train 128,000 (``--full``: 1,281,167), ID val 5,000,
ID test 50,000, four OoD sets of 10,000. ID test and OoD sets also carry ``local_embeds``
(``--local-patches`` patches, float16) so that GL-MCM runs.

Generative model (seeded). Penultimate features h (768-d):
  h = mu0 + S_g(c) + O_c + A z + noise, with 100 superclass centroids S_g, 10 classes per
  superclass (offsets O_c), a 32-d nuisance ("style") subspace A, isotropic noise, a per-sample
  norm jitter; image_embeds = h @ proj (exactly, as ``pooled @ visual.proj``). Text embeddings of
  a concept are normalise(a * its centred image-space direction + b * a shared modality-gap
  vector + c * noise), so zero-shot logits have CLIP-like cosine scales (~0.2-0.35).
OoD sets: ``synth-near-siblings`` (new classes inside the ID superclasses, near),
``synth-near-shifted`` (ID class means shifted off the class manifold, near),
``synth-far-textures`` (new superclasses with a different, stronger nuisance subspace, far),
``synth-far-noise`` (no class structure: mu0 + wide isotropic noise, far). The negative-label
banks contain the text embeddings of the near/far OoD concepts among random concepts.

    python benchmarks/make_imagenet_scale_store.py --out /tmp/oodbench-imagenet-synth
    oodbench score -b imagenet-synth --benchmarks /tmp/oodbench-imagenet-synth/imagenet-synth.yaml \\
        --store /tmp/oodbench-imagenet-synth -m all
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

import numpy as np

from oodbench.store import STR, FeatureWriter, Store, write_h5_atomic
from oodbench.text import resolve_classes

BENCHMARK = "imagenet-synth"
D_PEN, D_EMB, N_CLASSES, N_SUPER, D_STYLE = 768, 512, 1000, 100, 32
OOD_SETS = {
    "synth-near-siblings": "near",
    "synth-near-shifted": "near",
    "synth-far-textures": "far",
    "synth-far-noise": "far",
}
FULL_TRAIN = 1_281_167
GEN_ROWS = 8192  # rows generated and appended per step (bounded memory at any train size)


class World:
    """Every fixed parameter of the generative model (class means, projections, text space)."""

    def __init__(self, seed: int):
        rng = np.random.default_rng(seed)
        self.seed = seed
        self.mu0 = _sphere(rng, 1, D_PEN)[0] * 18.0
        supers = _sphere(rng, N_SUPER, D_PEN) * 9.0
        self.super_of = np.repeat(np.arange(N_SUPER), N_CLASSES // N_SUPER)
        self.means = self.mu0 + supers[self.super_of] + _sphere(rng, N_CLASSES, D_PEN) * 3.6
        self.style = _basis(rng, D_PEN, D_STYLE) * 3.0
        self.proj = rng.standard_normal((D_PEN, D_EMB)) / np.sqrt(D_PEN)
        self.ln_w = 1.0 + 0.1 * rng.standard_normal(D_PEN)
        self.ln_b = 0.02 * rng.standard_normal(D_PEN)
        self.gap = _sphere(rng, 1, D_EMB)[0]
        # OoD concepts
        self.sib_means = self.mu0 + supers[rng.integers(0, N_SUPER, 200)] + _sphere(rng, 200, D_PEN) * 3.6
        self.shift = _sphere(rng, N_CLASSES, D_PEN) * 6.0
        self.tex_means = self.mu0 + _sphere(rng, 50, D_PEN) * 10.0
        self.tex_style = _basis(rng, D_PEN, D_STYLE) * 6.0
        # linear head on penultimate (an OpenOOD-style fc): scaled centred class means
        centred = self.means - self.means.mean(0)
        self.head_w = (centred / np.linalg.norm(centred, axis=1, keepdims=True) * 1.2).astype(np.float32)
        self.head_b = (0.1 * rng.standard_normal(N_CLASSES)).astype(np.float32)
        self.rng_text = np.random.default_rng(seed + 1)
        self.ref_proj = (self.proj + 0.3 * rng.standard_normal((D_PEN, D_EMB)) / np.sqrt(D_PEN)).astype(np.float32)

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(f"oodbench-synth-v1-{self.seed}".encode()).hexdigest()

    @property
    def ref_fingerprint(self) -> str:
        return hashlib.sha256(f"oodbench-synth-base-v1-{self.seed}".encode()).hexdigest()

    def text(self, means_pen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(K, 512) unnormalised 'text embeddings' of concepts whose image mean is ``means_pen``."""
        u = means_pen @ self.proj
        u /= np.linalg.norm(u, axis=1, keepdims=True)
        xi = _sphere(rng, u.shape[0], D_EMB)
        return (0.7 * u + 0.7 * self.gap + 0.05 * xi).astype(np.float32) * 7.0

    def sample(self, kind: str, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(n, 768) float32 penultimate features and (n,) labels (-1 for OoD) of one split kind."""
        noise = rng.standard_normal((n, D_PEN), dtype=np.float32)
        z = rng.standard_normal((n, D_STYLE), dtype=np.float32)
        labels = np.full(n, -1, np.int64)
        if kind == "id":
            labels = rng.integers(0, N_CLASSES, n)
            h = self.means[labels] + z @ self.style.T + noise
        elif kind == "synth-near-siblings":
            h = self.sib_means[rng.integers(0, len(self.sib_means), n)] + z @ self.style.T + noise
        elif kind == "synth-near-shifted":
            c = rng.integers(0, N_CLASSES, n)
            h = self.means[c] + self.shift[c] + z @ self.style.T + noise
        elif kind == "synth-far-textures":
            h = self.tex_means[rng.integers(0, len(self.tex_means), n)] + z @ self.tex_style.T + noise
        elif kind == "synth-far-noise":
            h = self.mu0 + 1.6 * noise + 0.5 * (z @ self.style.T)
        else:
            raise ValueError(kind)
        scale = np.exp(0.1 * rng.standard_normal((n, 1)))
        return (h * scale).astype(np.float32), labels


def _sphere(rng: np.random.Generator, n: int, d: int) -> np.ndarray:
    x = rng.standard_normal((n, d))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _basis(rng: np.random.Generator, d: int, k: int) -> np.ndarray:
    """(d, k) orthonormal columns."""
    return np.linalg.qr(rng.standard_normal((d, k)))[0]


def _bank_names() -> dict[str, set[str]]:
    """Text banks that registered scorers read by default: name -> roles (id / negative / outlier)."""
    from oodbench.scorers import get_scorer, scorer_names

    banks: dict[str, set[str]] = {}
    for name in scorer_names():
        cls = get_scorer(name)
        for key, role in (("bank", "negative"), ("id_bank", "id"), ("outlier_bank", "outlier")):
            p = cls.params.get(key)
            if p is not None and isinstance(p.default, str):
                for b in p.default.split("+"):
                    if b and b != "classes":
                        banks.setdefault(b, set()).add(role)
    return banks


def write_features(world: World, store: Store, key: str, dataset: str, kind: str, n: int, seed: int,
                   local_patches: int, layers: list[int], reference: bool = False) -> Path:
    """One split's feature file. ``reference``: the zero-shot base model's view of the same
    samples (image_embeds only, from a perturbed projection); else the main model's."""
    path = store.features_path(key, dataset)
    if path.exists():
        path.unlink()
    rng = np.random.default_rng([world.seed, seed])
    if reference:
        layout = {"image_embeds": ((D_EMB,), np.float32), "labels": ((), np.int64), "ids": ((), STR)}
        local_patches, layers = 0, []
    else:
        layout = {"image_embeds": ((D_EMB,), np.float32), "penultimate": ((D_PEN,), np.float32),
                  "labels": ((), np.int64), "ids": ((), STR)}
    if local_patches:
        layout["local_embeds"] = ((local_patches, D_EMB), np.float16)
    if layers:
        layout["layers/cls"] = ((len(layers), D_PEN), np.float32)
    identity = {"model_fingerprint": world.ref_fingerprint if reference else world.fingerprint,
                "sample_fingerprint": hashlib.sha256(f"{dataset}-{n}-{seed}".encode()).hexdigest(),
                "opt_dtype": "float32", "opt_layers": None, "opt_local": bool(local_patches),
                "opt_precision": "None"}
    attrs = {"kind": "features", "dataset": dataset, "source": {"source": "synthetic", "kind": kind, "n": n},
             "model_name": "synth-vitb16", "pretrained": "synthetic", "ckpt": None, "model_key": key,
             "layer_indices": list(layers), "architecture": "synthetic"}
    writer = FeatureWriter(path, layout, identity, attrs, total=n, chunk_rows=64)
    writer.open()
    try:
        for s in range(0, n, GEN_ROWS):
            m = min(GEN_ROWS, n - s)
            h, labels = world.sample(kind, m, rng)
            ids = np.array([f"{dataset}/{i:07d}" for i in range(s, s + m)], dtype=object)
            if reference:
                emb = h @ world.ref_proj + 0.5 * rng.standard_normal((m, D_EMB), dtype=np.float32)
                writer.append({"image_embeds": emb, "labels": labels, "ids": ids}, n_processed=s + m)
                continue
            emb = h @ world.proj.astype(np.float32)
            arrays = {"penultimate": h, "image_embeds": emb, "labels": labels, "ids": ids}
            if layers:  # pre-ln_post CLS tokens: noisier the earlier the block
                last = max(layers)
                arrays["layers/cls"] = np.stack(
                    [h + (0.6 * (1 + last - k)) * rng.standard_normal((m, D_PEN), dtype=np.float32) for k in layers], 1)
            if local_patches:
                # patch embeddings: the image embedding plus strong patch-specific noise
                e = emb / np.linalg.norm(emb, axis=1, keepdims=True)
                patches = e[:, None, :] + 0.08 * rng.standard_normal((m, local_patches, D_EMB), dtype=np.float32)
                arrays["local_embeds"] = patches.astype(np.float16)
            writer.append(arrays, n_processed=s + m)
        writer.finalize()
    finally:
        writer.close()
    return path


def write_model_and_text(world: World, store: Store, key: str, sizes: dict[str, int]) -> None:
    write_h5_atomic(store.model_path(key), {
        "visual/proj": world.proj.astype(np.float32),
        "visual/ln_post_weight": world.ln_w.astype(np.float32),
        "visual/ln_post_bias": world.ln_b.astype(np.float32),
        "heads/linear/weight": world.head_w, "heads/linear/bias": world.head_b,
    }, {"kind": "model", "model_name": "synth-vitb16", "pretrained": "synthetic", "ckpt": None,
        "fingerprint": world.fingerprint, "model_key": key, "label": "synthetic", "logit_scale": 100.0,
        "ln_eps": 1e-5, "linear_head_input": "penultimate",
        "info": {"generator": "benchmarks/make_imagenet_scale_store.py", "seed": world.seed}})
    rng = world.rng_text
    classes = resolve_classes("imagenet")

    def bank(name: str, names: list[str], templates: list[str], emb: np.ndarray) -> None:
        write_h5_atomic(store.text_path(key, f"{BENCHMARK}-{name}"), {"embeds": emb},
                        {"kind": "text", "bank": name, "names": names, "templates": templates,
                         "fingerprint": world.fingerprint})

    bank("classes", classes, ["a photo of a {}."], world.text(world.means, rng)[None])
    ood_concepts = np.concatenate([world.sib_means, world.tex_means, world.means + world.shift][:2])
    for name, roles in sorted(_bank_names().items()):
        if "id" in roles:  # ID labels under other prompts: same concepts, other text noise
            emb = np.stack([world.text(world.means, rng) for _ in range(2)])
            bank(name, classes, ["the nice {}", "a photo of the {}."], emb)
            continue
        m = sizes["outliers"] if "outlier" in roles else sizes["negatives"]
        # random concepts around the ID manifold plus (a few) OoD concepts
        k_ood = min(len(ood_concepts), m // 10)
        rand = world.mu0 + _sphere(rng, m - k_ood, D_PEN) * 10.0
        means = np.concatenate([rand, ood_concepts[rng.permutation(len(ood_concepts))[:k_ood]]])
        emb = np.stack([world.text(means, rng) for _ in range(2)])
        bank(name, [f"{name}-{i}" for i in range(m)], ["a photo of a {}.", "a {} object"], emb)


def write_reference_model(world: World, store: Store, key: str) -> None:
    """A second model (the 'zero-shot base' of the main one) for scorers that compare two checkpoints."""
    write_h5_atomic(store.model_path(key), {"visual/proj": world.ref_proj}, {
        "kind": "model", "model_name": "synth-vitb16", "pretrained": "synthetic-base", "ckpt": None,
        "fingerprint": world.ref_fingerprint, "model_key": key, "label": "synthetic-base",
        "logit_scale": 100.0, "ln_eps": 1e-5, "linear_head_input": None,
        "info": {"generator": "benchmarks/make_imagenet_scale_store.py", "seed": world.seed}})
    rng = np.random.default_rng(world.seed + 2)
    emb = world.text(world.means, rng)[None]
    write_h5_atomic(store.text_path(key, f"{BENCHMARK}-classes"), {"embeds": emb},
                    {"kind": "text", "bank": "classes", "names": resolve_classes("imagenet"),
                     "templates": ["a photo of a {}."], "fingerprint": world.ref_fingerprint})


def write_yaml(out: Path) -> Path:
    splits = {"synth-id-train": "id", "synth-id-val": "id", "synth-id-test": "id", **OOD_SETS}
    lines = [
        "# Synthetic ImageNet-shaped benchmark written by benchmarks/make_imagenet_scale_store.py.",
        "# Its features exist only in the generated store: `oodbench extract` cannot rebuild them.",
        "version: 1", "datasets:",
        *[f"  {d}: {{source: synthetic, kind: {k}, generator: benchmarks/make_imagenet_scale_store.py}}"
          for d, k in splits.items()],
        "benchmarks:", f"  {BENCHMARK}:",
        "    description: >",
        "      Synthetic store with ImageNet-1k shapes (ViT-B/16-like: penultimate 768, embeddings 512,",
        "      1000 classes) for speed benchmarks; class structure makes scores non-trivial.",
        "    model: {name: synth-vitb16, pretrained: synthetic}",
        "    classes: imagenet", "    templates: single",
        "    id: {train: synth-id-train, val: synth-id-val, test: synth-id-test}",
        "    ood:",
        f"      near: [{', '.join(d for d, g in OOD_SETS.items() if g == 'near')}]",
        f"      far: [{', '.join(d for d, g in OOD_SETS.items() if g == 'far')}]",
    ]
    path = out / f"{BENCHMARK}.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=Path("/tmp/oodbench-imagenet-synth"))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--train", type=int, default=128_000, help="ID train rows (ImageNet's 10%%)")
    ap.add_argument("--full", action="store_true", help=f"full ImageNet train bank ({FULL_TRAIN:,} rows)")
    ap.add_argument("--val", type=int, default=5_000)
    ap.add_argument("--test", type=int, default=50_000)
    ap.add_argument("--ood", type=int, default=10_000, help="rows of each of the four OoD sets")
    ap.add_argument("--local-patches", type=int, default=16,
                    help="patches of local_embeds on test/OoD splits for GL-MCM (ViT-B/16 has 196; 0: none)")
    ap.add_argument("--negatives", type=int, default=10_000, help="candidates per negative-label bank")
    ap.add_argument("--outliers", type=int, default=1_000, help="EOE outlier labels")
    ap.add_argument("--layers", default="8,9,10,11",
                    help="blocks whose CLS tokens (layers/cls) val/test/OoD splits carry ('': none)")
    ap.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                    help="also write a second 'zero-shot base' model (for --reference scorers)")
    ap.add_argument("--only-train", action="store_true", help="(re)write only the train split")
    args = ap.parse_args(argv)
    n_train = FULL_TRAIN if args.full else args.train
    world = World(args.seed)
    store = Store(args.out)
    key = f"synth-vitb16-synthetic-{world.fingerprint[:10]}"
    ref_key = f"synth-vitb16-base-{world.ref_fingerprint[:10]}"
    layers = [int(b) for b in args.layers.split(",") if b.strip()]
    t0 = time.time()
    if not args.only_train:
        write_model_and_text(world, store, key, {"negatives": args.negatives, "outliers": args.outliers})
        if args.reference:
            write_reference_model(world, store, ref_key)
    splits = [("synth-id-train", "id", n_train, 1, 0, [])]
    if not args.only_train:
        splits += [("synth-id-val", "id", args.val, 2, 0, layers),
                   ("synth-id-test", "id", args.test, 3, args.local_patches, layers)]
        splits += [(d, d, args.ood, 10 + i, args.local_patches, layers) for i, d in enumerate(OOD_SETS)]
    for dataset, kind, n, seed, local, lay in splits:
        t = time.time()
        write_features(world, store, key, dataset, kind, n, seed, local, lay)
        if args.reference:
            write_features(world, store, ref_key, dataset, kind, n, seed, 0, [], reference=True)
        print(f"{dataset:22s} {n:>9,} rows  {time.time() - t:6.1f} s", flush=True)
    yaml_path = write_yaml(args.out)
    (args.out / "synth.json").write_text(json.dumps(
        {"model_key": key, "reference_key": ref_key if args.reference else None, "train": n_train, "val": args.val, "test": args.test, "ood": args.ood,
         "local_patches": args.local_patches, "seed": args.seed}, indent=2))
    print(f"store {args.out} (model {key}) in {time.time() - t0:.0f} s; benchmarks YAML {yaml_path}")


if __name__ == "__main__":
    main()
