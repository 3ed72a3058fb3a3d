"""The extraction engine: images -> one forward pass -> every feature a scorer could need.

One pass of the vision tower yields, per image: the projected embedding (``image_embeds``),
the pooled feature before the projection (``penultimate``), optionally the CLS token after
each block (``layers/cls``, pre-``ln_post``) and the projected local (patch) embeddings of the
last block's value path (``local_embeds``, GL-MCM). Written to the store by
:class:`~oodbench.store.FeatureWriter` (resumable, atomic finish).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from .console import info, progress, rate_text, warn
from .errors import OodbenchError
from .store import STR, FeatureFile, FeatureWriter, Store, exclusive, read_attrs, write_h5_atomic
from .text import encode_text_bank
from .verify import spec_text

DTYPES = {"float32": np.float32, "float16": np.float16}


@dataclass
class ExtractOptions:
    """Knobs of one extraction (they are recorded in every file)."""

    batch_size: int = 64
    workers: int = 0
    device: str = "auto"  # auto | cpu | cuda[:N]
    precision: str = "auto"  # auto | fp32 | fp16 | bf16 (autocast; auto = fp16 on CUDA, fp32 on CPU)
    dtype: str = "float32"  # storage dtype of image_embeds / penultimate / layers
    layers: str | None = None  # None, "all" or comma-separated block indices
    local: bool = False  # projected patch embeddings (float16)
    overwrite: bool = False
    decode: str = "pil"  # pil (Pillow in the workers) | device (JPEGs decoded on --device)

    def autocast_dtype(self) -> torch.dtype | None:
        p = self.precision
        if p == "auto":
            p = "fp16" if self.device.startswith("cuda") else "fp32"
        return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[p]

    def identity(self) -> dict:
        """Options that change the stored numbers (and so must match to resume or reuse)."""
        out = {"dtype": self.dtype, "layers": self.layers, "local": self.local,
               "precision": str(self.autocast_dtype())}
        if self.decode != "pil":  # absent for the default, so older stores keep their identity
            out["decode"] = self.decode
        return out


def check_local_block(block: torch.nn.Module) -> None:
    """The local (value-path) embeddings re-run the last block by hand: only open_clip's plain
    ``ResidualAttentionBlock`` with a packed-projection ``nn.MultiheadAttention`` is known to
    compute what that re-run assumes; refuse anything else instead of returning wrong tokens."""
    from open_clip.transformer import ResidualAttentionBlock

    attn = getattr(block, "attn", None)
    ok = (
        type(block) is ResidualAttentionBlock
        and type(attn) is torch.nn.MultiheadAttention
        and getattr(attn, "in_proj_weight", None) is not None
        and not hasattr(block, "ln_1_kv")
    )
    if not ok:
        raise OodbenchError(
            f"--local supports only open_clip's plain ResidualAttentionBlock with nn.MultiheadAttention; this "
            f"model's last block is {type(block).__name__} (attention {type(attn).__name__}): extract without "
            "--local (GL-MCM needs it), or merge adapters such as LoRA into the weights first."
        )


class VisualFeatures(torch.nn.Module):
    """Wraps an open_clip ``VisionTransformer`` to return all features in one forward pass."""

    def __init__(self, visual: torch.nn.Module, layers: list[int] | None, local: bool):
        super().__init__()
        self.visual = visual
        self.layers = layers or []
        self.local = local
        self.batch_first = getattr(visual.transformer, "batch_first", True)
        if local:
            check_local_block(visual.transformer.resblocks[-1])

    @property
    def n_blocks(self) -> int:
        return len(self.visual.transformer.resblocks)

    def layout(self, dtype) -> dict[str, tuple[tuple[int, ...], Any]]:
        """Per-sample shapes and storage dtypes of everything ``forward`` returns."""
        v = self.visual
        width = v.transformer.width
        embed_dim = v.proj.shape[1] if v.proj is not None else width
        out = {"image_embeds": ((embed_dim,), dtype), "penultimate": ((width,), dtype)}
        if self.layers:
            out["layers/cls"] = ((len(self.layers), width), dtype)
        if self.local:
            out["local_embeds"] = ((int(np.prod(v.grid_size)), embed_dim), np.float16)
        return out

    def _block_outputs(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        blocks = self.visual.transformer.resblocks
        if not self.batch_first:
            x = x.transpose(0, 1)
        cls, last_in = [], x
        for i, block in enumerate(blocks):
            if i == len(blocks) - 1:
                last_in = x
            x = block(x)
            if i in self.layers:
                cls.append((x[:, 0] if self.batch_first else x[0]).float())
        if not self.batch_first:
            x, last_in = x.transpose(0, 1), last_in.transpose(0, 1)
        return x, cls, last_in

    def _local(self, x: torch.Tensor) -> torch.Tensor:
        """Last block with each token attending only to itself (value path), then ln_post + proj."""
        block = self.visual.transformer.resblocks[-1]
        attn = block.attn
        w = attn.embed_dim
        v = F.linear(block.ln_1(x), attn.in_proj_weight[2 * w :], attn.in_proj_bias[2 * w :])
        y = x + block.ls_1(attn.out_proj(v))
        y = y + block.ls_2(block.mlp(block.ln_2(y)))
        tokens = self.visual.ln_post(y[:, 1:])
        return tokens @ self.visual.proj

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        v = self.visual
        x = v._embeds(images)
        x, cls, last_in = self._block_outputs(x)
        pooled, _ = v._pool(x)
        embeds = pooled @ v.proj if v.proj is not None else pooled
        out = {"image_embeds": embeds.float(), "penultimate": pooled.float()}
        if self.layers:
            out["layers/cls"] = torch.stack(cls, 1)
        if self.local:
            out["local_embeds"] = self._local(last_in).float()
        return out


class ResNetFeatures(torch.nn.Module):
    """Wraps an open_clip ``ModifiedResNet`` (RN50, RN101, ...).

    ``penultimate`` is the attention-pool input, average-pooled over space (N, C4);
    ``layers/stageK`` (K = 1..4, with --layers) are the globally average-pooled outputs of
    each residual stage. There is no CLS token, ``ln_post`` or local value path.
    """

    def __init__(self, visual: torch.nn.Module, layers: list[int] | None, local: bool):
        super().__init__()
        if local:
            raise OodbenchError("--local needs a ViT tower: ResNet towers have no patch tokens of the joint space.")
        self.visual = visual
        self.layers = layers or []

    n_blocks = 4

    def layout(self, dtype) -> dict[str, tuple[tuple[int, ...], Any]]:
        v = self.visual
        widths = [getattr(v, f"layer{k + 1}")[-1].conv3.out_channels for k in range(4)]
        out = {"image_embeds": ((v.output_dim,), dtype), "penultimate": ((widths[-1],), dtype)}
        for k in self.layers:
            out[f"layers/stage{k}"] = ((widths[k],), dtype)
        return out

    def forward(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        v = self.visual
        x = v.stem(images.to(v.conv1.weight.dtype))
        out: dict[str, torch.Tensor] = {}
        for k in range(4):
            x = getattr(v, f"layer{k + 1}")(x)
            if k in self.layers:
                out[f"layers/stage{k}"] = x.float().mean((2, 3))
        out["penultimate"] = x.float().mean((2, 3))
        out["image_embeds"] = v.attnpool(x).float()
        return out


def feature_net(visual: torch.nn.Module, layers: str | None, local: bool) -> torch.nn.Module:
    """The feature module for a vision tower (ViT or ModifiedResNet), or a clear refusal."""
    if hasattr(visual, "transformer") and hasattr(visual, "_pool"):
        cls = VisualFeatures
        n = len(visual.transformer.resblocks)
    elif hasattr(visual, "attnpool") and hasattr(visual, "layer4"):
        cls, n = ResNetFeatures, 4
    else:
        raise OodbenchError(
            f"Vision tower {type(visual).__name__} is not supported (ViT and ModifiedResNet are): "
            "see the README's architecture table."
        )
    return cls(visual, parse_layers(layers, n), local).eval()


def parse_layers(spec: str | None, n_blocks: int) -> list[int]:
    if not spec:
        return []
    if spec == "all":
        return list(range(n_blocks))
    try:
        idx = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise OodbenchError(f"--layers must be 'all' or comma-separated block indices, got {spec!r}.") from None
    idx = sorted({i % n_blocks if -n_blocks <= i < 0 else i for i in idx})
    if any(not 0 <= i < n_blocks for i in idx):
        raise OodbenchError(f"--layers {spec!r}: this vision tower has blocks 0..{n_blocks - 1}.")
    return idx


class _Images(torch.utils.data.Dataset):
    """Source -> (preprocessed tensor, index, ok); unreadable images come back with ok=False."""

    def __init__(self, source, preprocess, start: int, image_size: int):
        self.source, self.preprocess, self.start = source, preprocess, start
        self.blank = torch.zeros(3, image_size, image_size)

    def __len__(self) -> int:
        return len(self.source) - self.start

    def __getitem__(self, j: int):
        from .data import UnreadableImage

        i = self.start + j
        try:
            return self.preprocess(self.source.load(i)), i, True
        except UnreadableImage:
            return self.blank, i, False


def _image_size(visual) -> int:
    size = getattr(visual, "image_size", 224)
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def _reusable(path: Path, identity: dict, spec: dict | None, dataset: str) -> bool:
    """True when ``path`` is a complete feature file of this identity (reuse it); False when
    there is none. Refuses an unreadable, unfinished or different file: ``--overwrite`` replaces it."""
    if not path.exists():
        return False
    try:
        with h5py.File(path, "r") as f:
            done = read_attrs(f)
    except OSError:
        raise OodbenchError(
            f"{path} is not a readable HDF5 file (truncated or damaged): pass --overwrite to re-extract it."
        ) from None
    if not done.get("complete"):
        raise OodbenchError(f"{path} is not marked complete: pass --overwrite to re-extract it.")
    same = all(done.get(k) == v for k, v in identity.items()) and done.get("dataset", dataset) == dataset
    if same and spec is not None and "catalogue_spec" in done:
        same = done["catalogue_spec"] == json.loads(spec_text(spec))
    if same:
        return True
    raise OodbenchError(
        f"{path} exists but was extracted with other data or options (sample list, dataset definition or "
        "--layers/--local/--dtype differ): pass --overwrite to replace it."
    )


def check_labels(source, n_classes: int, benchmark: str) -> None:
    """Refuse ID labels outside 0..n_classes-1 (-1 marks OoD); names the list line when known.

    Raises:
        OodbenchError: the first out-of-range label, where it is and the class count.
    """
    labels = np.asarray(source.labels())
    bad = np.flatnonzero((labels >= n_classes) | (labels < -1))
    if not len(bad):
        return
    i = int(bad[0])
    where = source.where(i) if hasattr(source, "where") else f"dataset {source.name!r}, sample {source.ids()[i]!r}"
    raise OodbenchError(
        f"{where}: label {int(labels[i])} is out of range for benchmark {benchmark!r}, which has "
        f"{n_classes} classes (labels 0..{n_classes - 1}, -1 for OoD; {len(bad)} such sample(s)): "
        "fix the labels or the benchmark's classes."
    )


def extract_dataset(bundle, source, path: Path, options: ExtractOptions, dataset: str,
                    spec: dict | None = None) -> Path:
    """Extract one dataset split into ``path`` (resuming a partial file); returns the path.

    ``spec``: the dataset's catalogue entry, recorded (``catalogue_spec``) so that ``score``
    and ``verify`` can tell when the benchmarks file has changed it since. With
    ``options.overwrite`` any existing file (complete, unfinished or unreadable) and any
    partial file are replaced by a fresh extraction; the old file stays until the new one is
    complete.

    Under ``torchrun`` (WORLD_SIZE > 1) each rank extracts a contiguous shard into its own
    resumable file; rank 0 then merges the shards, in order, into ``path``. Ranks sum their
    readable rows first: a dataset with none is an error on every rank and no file is kept.
    """
    from .distributed import barrier, dist_info, merge_shards, shard_path, shard_source

    net = feature_net(bundle.model.visual, options.layers, options.local)
    identity = {"model_fingerprint": bundle.fingerprint, "sample_fingerprint": source.fingerprint(),
                **{f"opt_{k}": v for k, v in options.identity().items()}}
    if not options.overwrite and _reusable(path, identity, spec, dataset):
        info(f"[dim]cached[/] {dataset}: {path}")
        return path
    layout = {**net.layout(DTYPES[options.dtype]), "labels": ((), np.int64), "ids": ((), STR)}
    attrs = {
        "kind": "features", "dataset": dataset, "source": source.describe(),
        "model_name": bundle.name, "pretrained": bundle.pretrained, "ckpt": bundle.ckpt,
        "model_key": bundle.key, "layer_indices": net.layers, "preprocess": repr(bundle.preprocess),
        "options": asdict(options), "torch_version": torch.__version__, "architecture": type(net.visual).__name__,
        **({"catalogue_spec": spec_text(spec)} if spec is not None else {}),
    }
    rank, world = dist_info()
    target, part = path, source
    if world > 1:
        target, part = shard_path(path, rank, world), shard_source(source, rank, world)
        identity = {**identity, "shard": f"{rank}/{world}"}
    if options.overwrite or not (target.exists() and FeatureFile(target).attrs.get("shard") == identity.get("shard")):
        writer = FeatureWriter(target, layout, identity, attrs, total=len(part),
                               chunk_rows=max(options.batch_size, 64))
        with exclusive(target):
            writer.open(fresh=options.overwrite)
            try:
                _run(net, part, bundle.preprocess, writer, options, dataset, _image_size(net.visual))
                if world == 1 and len(part) and int(writer.f.attrs["n_rows"]) == 0:
                    writer.close()
                    writer.partial.unlink(missing_ok=True)
                    raise _nothing_readable(part, dataset)
                writer.finalize()
            finally:
                writer.close()
    if world > 1:
        if len(source) and _readable_on_all_ranks(target, options.device) == 0:  # every rank agrees: none hangs
            barrier()
            for gone in (target, target.with_name(target.name + ".lock")):
                gone.unlink(missing_ok=True)
            raise _nothing_readable(source, dataset)
        barrier()
        if rank == 0:
            merge_shards([shard_path(path, r, world) for r in range(world)], path,
                         {**attrs, **{k: v for k, v in identity.items() if k != "shard"}})
        barrier()
    return path


def _readable_on_all_ranks(shard: Path, device: str) -> int:
    """Rows of this rank's complete shard, summed over all ranks (an all_reduce every rank joins).

    ``device``: this rank's device (``cuda:LOCAL_RANK`` under NCCL, which reduces on the GPU).
    """
    import torch.distributed as dist

    n = torch.tensor([len(FeatureFile(shard))], dtype=torch.int64)
    if dist.get_backend() == "nccl":
        n = n.to(device)
    dist.all_reduce(n)
    return int(n.item())


class _BackgroundWriter:
    """Feeds FeatureWriter.append from a bounded queue on a thread; re-raises its errors."""

    def __init__(self, writer: FeatureWriter, depth: int = 4):
        import queue
        import threading

        self.writer, self.q = writer, queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while (item := self.q.get()) is not None:
            if self.error is None:
                try:
                    self.writer.append(item[0], n_processed=item[1], skipped=item[2])
                except BaseException as exc:  # noqa: BLE001 - handed to the main thread
                    self.error = exc

    def put(self, arrays: dict, n_processed: int, skipped: list[str]) -> None:
        if self.error is not None:
            raise self.error
        self.q.put((arrays, n_processed, skipped))

    def __enter__(self) -> _BackgroundWriter:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.q.put(None)
        self.thread.join()
        if self.error is not None and exc[0] is None:
            raise self.error


def _run(net, source, preprocess, writer: FeatureWriter, options: ExtractOptions, dataset: str,
         image_size: int) -> None:
    start = writer.resumed_from
    if start:
        info(f"resuming {dataset} at sample {start}/{len(source)}")
    ids, labels = source.ids(), source.labels()
    device = options.device
    cuda = device.startswith("cuda")
    if options.decode == "device":
        from .decode import EncodedImages, TensorPreprocess, collate, decode_batch

        tp = TensorPreprocess.from_transform(preprocess)
        dataset_ = EncodedImages(source, preprocess, start, image_size)
        extra = {"collate_fn": collate}

        def to_device(images, ok, idx):
            return decode_batch(images, ok, idx, dataset_, tp, device)
    else:
        dataset_, extra = _Images(source, preprocess, start, image_size), {}

        def to_device(images, ok, idx):
            return images.to(device, non_blocking=True), ok
    loader = torch.utils.data.DataLoader(
        dataset_, batch_size=options.batch_size, num_workers=options.workers,
        pin_memory=cuda and options.decode == "pil", persistent_workers=options.workers > 0,
        shuffle=False, **extra,
    )
    amp = options.autocast_dtype()
    store_dtype = torch.float16 if options.dtype == "float16" else torch.float32
    skipped_rows: list[int] = []
    t0, done = time.time(), 0
    with progress() as bar, _BackgroundWriter(writer) as bg:
        task = bar.add_task(f"extract {dataset}", total=len(source), completed=start, rate="")
        for images, idx, ok in loader:
            images, ok = to_device(images, ok, idx)
            with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=amp or torch.float32,
                                                 enabled=amp is not None):
                feats = net(images)
            keep = ok.numpy()
            rows = idx.numpy()[keep]
            sel = torch.as_tensor(keep, device=images.device)
            # cast on the device before the copy: half the bytes over PCIe for float16 storage
            arrays = {k: v[sel].to(torch.float16 if k == "local_embeds" else store_dtype).cpu().numpy()
                      for k, v in feats.items()}
            arrays["labels"] = labels[rows]
            arrays["ids"] = np.array([ids[i] for i in rows], dtype=object)
            skipped = [ids[i] for i in idx.numpy()[~keep]]
            skipped_rows += idx.numpy()[~keep].tolist()
            bg.put(arrays, int(idx[-1]) + 1, skipped)  # HDF5 writes overlap the next forward pass
            done += len(idx)
            bar.update(task, advance=len(idx), rate=rate_text(done, time.time() - t0))
    if skipped_rows:
        warn(f"{dataset}: {unreadable_summary(source, skipped_rows)}; their ids are in 'skipped_ids' of the file.")


def _missing(source, i: int) -> bool:
    path = source.file(i)
    return path is not None and not Path(path).exists()


def unreadable_summary(source, rows: list[int], show: int = 3) -> str:
    """'skipped K of N image(s): M missing, C corrupt (first: ...)' for the skipped sample indices."""
    missing = [i for i in rows if _missing(source, i)]
    gone = set(missing)
    corrupt = [i for i in rows if i not in gone]
    parts = []
    for what, idx in (("missing", missing), ("corrupt or not an image", corrupt)):
        if idx:
            names = ", ".join(str(source.file(i) or source.ids()[i]) for i in idx[:show])
            parts.append(f"{len(idx)} {what} (first: {names}{', ...' if len(idx) > show else ''})")
    return f"skipped {len(rows)} of {len(source)} image(s): " + "; ".join(parts)


def _nothing_readable(source, dataset: str) -> OodbenchError:
    """No image of the dataset could be read: the error names where it looked and what it tried."""
    where = getattr(source, "root", None)
    tried = ", ".join(str(source.file(i) or source.ids()[i]) for i in range(min(3, len(source))))
    n_missing = sum(_missing(source, i) for i in range(len(source)))
    return OodbenchError(
        f"Dataset {dataset!r}: none of its {len(source)} images could be read ({n_missing} missing, "
        f"{len(source) - n_missing} undecodable){f' under {where}' if where else ''}; tried {tried}: check "
        "--data-root and the dataset's root in the benchmarks file (nothing was written)."
    )


def extraction_summary(paths: dict[str, Path], sources: dict) -> list[str]:
    """Warnings for the extracted files of one run: unreadable images (loud when most of a set is
    unreadable) and row counts that differ from the catalogue's ``expected_rows``. Returns them."""
    notes = []
    for d, path in paths.items():
        a = FeatureFile(path).attrs
        rows, total, expected = int(a.get("n_rows", 0)), int(a.get("n_total", 0)), sources[d].expected_rows
        if total and rows < total:
            loud = "MOST IMAGES UNREADABLE: " if rows * 2 < total else ""
            notes.append(f"{loud}{d}: only {rows:,} of {total:,} images were readable ({path}).")
        if expected is not None and rows != expected:
            notes.append(f"{d}: {rows:,} rows extracted, the benchmarks file expects {expected:,} (the list has "
                         f"{total:,} entries): a sample or another version of the data, or unreadable images.")
    for note in notes:
        warn(note)
    return notes


def write_model_info(bundle, store: Store) -> Path:
    """model.h5: what scorers need from the network itself (projection, ln_post, scale, heads)."""
    path = store.model_path(bundle.key)
    v = bundle.model.visual
    arrays: dict[str, np.ndarray] = {}
    if getattr(v, "proj", None) is not None:
        arrays["visual/proj"] = v.proj.detach().float().cpu().numpy()
    if hasattr(v, "ln_post"):
        arrays["visual/ln_post_weight"] = v.ln_post.weight.detach().float().cpu().numpy()
        arrays["visual/ln_post_bias"] = v.ln_post.bias.detach().float().cpu().numpy()
    head = bundle.head
    if head is not None:
        arrays["heads/linear/weight"] = head.head_weight.float().numpy()
        arrays["heads/linear/bias"] = (head.head_bias if head.head_bias is not None
                                       else torch.zeros(head.head_weight.shape[0])).float().numpy()
    attrs = {
        "kind": "model", "model_name": bundle.name, "pretrained": bundle.pretrained, "ckpt": bundle.ckpt,
        "fingerprint": bundle.fingerprint, "model_key": bundle.key, "label": bundle.label,
        "logit_scale": float(bundle.model.logit_scale.exp().item()),
        "ln_eps": float(getattr(getattr(v, "ln_post", None), "eps", 1e-5)),
        "linear_head_input": head.head_input if head is not None else None,
        "info": bundle.info,
    }
    write_h5_atomic(path, arrays, attrs)
    return path


def write_text_bank(bundle, store: Store, bank: str, names: list[str], templates: list[str],
                    device: str = "cpu", reduce: bool | str = False) -> Path:
    """text/<bank>.h5: (T, C, D) embeddings of every template x name; reused when unchanged.

    ``reduce``: store only the template ensemble (T = 1) to save space for large banks embedded
    under many prompts; ``True``: mean of the per-prompt normalised embeddings (CLIP's
    ensemble), ``"raw"``: mean of the raw embeddings (CSP's code: averaged, then normalised at
    use); ``templates`` then records all prompts.
    """
    path = store.text_path(bundle.key, bank)
    label = "raw-mean ensemble" if reduce == "raw" else "ensemble"
    stored_templates = [f"{label} of {len(templates)}: " + " | ".join(templates)] if reduce else list(templates)
    if path.exists():
        from .store import read_h5

        try:
            _, attrs = read_h5(path)
        except OodbenchError:  # a damaged bank is a cache: embed it again
            warn(f"text bank {path} is unreadable (empty, truncated or damaged): writing it again.")
            attrs = {}
        if attrs.get("names") == list(names) and attrs.get("templates") == stored_templates:
            return path
    emb = encode_text_bank(bundle.model, bundle.tokenizer, names, templates, device=device, label=f"text {bank}")
    if reduce:
        if reduce != "raw":
            emb = emb / np.linalg.norm(emb, axis=-1, keepdims=True)
        emb = emb.mean(0, keepdims=True)
    write_h5_atomic(path, {"embeds": emb}, {"kind": "text", "bank": bank, "names": list(names),
                                            "templates": stored_templates, "fingerprint": bundle.fingerprint})
    return path


def write_context_bank(bundle, store: Store, bank: str, names: list[str], device: str = "cpu") -> Path:
    """A class bank from a CoOp/LoCoOp learned prompt context (T = 1: the learned prompt)."""
    from .models.prompts import encode_with_context

    ctx = bundle.text_ctx
    with torch.no_grad():
        emb = encode_with_context(bundle.model, bundle.tokenizer, list(names), ctx.to(device),
                                  position=getattr(bundle, "class_token_position", "end"))
    emb = emb.float().cpu().numpy()[None]
    path = store.text_path(bundle.key, bank)
    template = f"learned context (n_ctx={ctx.shape[-2]}) {{}}."
    write_h5_atomic(path, {"embeds": emb}, {"kind": "text", "bank": bank, "names": list(names),
                                            "templates": [template], "fingerprint": bundle.fingerprint,
                                            "learned_context": True})
    return path


NEGATIVE_SETS = ("neglabel", "csp", "all")


def write_negative_banks(bundle, store: Store, benchmark, which: str, device: str = "cpu",
                         nouns: str = "neglabel-nouns", adjectives: str = "neglabel-adjectives") -> list[Path]:
    """Text banks of NegLabel (``neglabel``) and/or CSP (``csp``) from NegLabel's published corpus.

    neglabel: ``classes_neglabel`` (ID labels, 'the nice {}'), ``negatives`` (nouns),
    ``negatives_adj`` (adjectives, 'This is a {} photo'); csp: ``classes_csp`` and
    ``negatives_csp_nouns`` (8 noun prompts), ``negatives_csp`` (conjugated adjectives, 4
    prompts), each the raw mean over its prompts (CSP's code). As in the reference, candidates
    are not filtered against the ID class names. ``nouns`` and ``adjectives`` name a bundled
    corpus or a user word file (one word per line). ``file:SELECTION`` (a named selection such
    as ``neglabel-in1k`` or a file of prompts): ``classes_neglabel`` and ``negatives_file``, the
    selection's prompts embedded as given, scored without mining.
    """
    from . import negatives as ng

    b, out = benchmark.name, []
    if which.startswith("file:"):
        prompts = ng.load_selection(which[len("file:"):])
        out.append(write_text_bank(bundle, store, f"{b}-classes_neglabel", list(benchmark.classes),
                                   list(ng.NEGLABEL_NOUN_TEMPLATES), device))
        out.append(write_text_bank(bundle, store, f"{b}-negatives_file", prompts, [ng.SELECTION_TEMPLATE], device))
        return out
    if which not in NEGATIVE_SETS:
        raise OodbenchError(
            f"--negatives must be one of {', '.join(NEGATIVE_SETS)} or file:SELECTION; got {which!r}."
        )

    def bank(role, names, templates, reduce=False):
        out.append(write_text_bank(bundle, store, f"{b}-{role}", names, list(templates), device, reduce))

    classes = list(benchmark.classes)
    if which in ("neglabel", "all"):
        bank("classes_neglabel", classes, ng.NEGLABEL_NOUN_TEMPLATES)
        bank("negatives", ng.load_corpus(nouns), ng.NEGLABEL_NOUN_TEMPLATES)
        bank("negatives_adj", ng.load_corpus(adjectives), ng.NEGLABEL_ADJECTIVE_TEMPLATES)
    if which in ("csp", "all"):
        excl = ng.CSP_EXCLUDED_LEXNAMES
        bank("classes_csp", classes, ng.CSP_NOUN_TEMPLATES, reduce="raw")
        bank("negatives_csp_nouns", ng.load_corpus(nouns, exclude_lexnames=excl), ng.CSP_NOUN_TEMPLATES,
             reduce="raw")
        adjs = ng.load_corpus(adjectives, exclude_lexnames=excl)
        bank("negatives_csp", ng.conjugate(adjs), ng.CSP_ADJECTIVE_TEMPLATES, reduce="raw")
    return out
