"""The extraction engine: images -> one forward pass -> every feature a scorer could need.

One pass of the vision tower yields, per image: the projected embedding (``image_embeds``),
the pooled feature before the projection (``penultimate``), optionally the CLS token after
each block (``layers/cls``, pre-``ln_post``) and the projected local (patch) embeddings of the
last block's value path (``local_embeds``, GL-MCM). Written to the store by
:class:`~oodbench.store.FeatureWriter` (resumable, atomic finish).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .console import info, progress, warn
from .errors import OodbenchError
from .store import FeatureFile, FeatureWriter, Store, exclusive, write_h5_atomic
from .text import encode_text_bank

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

    def autocast_dtype(self) -> torch.dtype | None:
        p = self.precision
        if p == "auto":
            p = "fp16" if self.device.startswith("cuda") else "fp32"
        return {"fp32": None, "fp16": torch.float16, "bf16": torch.bfloat16}[p]

    def identity(self) -> dict:
        """Options that change the stored numbers (and so must match to resume or reuse)."""
        return {"dtype": self.dtype, "layers": self.layers, "local": self.local,
                "precision": str(self.autocast_dtype())}


class VisualFeatures(torch.nn.Module):
    """Wraps an open_clip ``VisionTransformer`` to return all features in one forward pass."""

    def __init__(self, visual: torch.nn.Module, layers: list[int] | None, local: bool):
        super().__init__()
        if not hasattr(visual, "transformer") or not hasattr(visual, "_pool"):
            raise OodbenchError(
                f"Vision tower {type(visual).__name__} is not an open_clip VisionTransformer: "
                "this extractor supports ViT towers (ResNet towers: see the README's architecture table)."
            )
        self.visual = visual
        self.layers = layers or []
        self.local = local
        self.batch_first = getattr(visual.transformer, "batch_first", True)

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


def extract_dataset(bundle, source, path: Path, options: ExtractOptions, dataset: str) -> Path:
    """Extract one dataset split into ``path`` (resuming a partial file); returns the path."""
    visual = bundle.model.visual
    n_blocks = len(visual.transformer.resblocks) if hasattr(visual, "transformer") else 0
    layers = parse_layers(options.layers, n_blocks)
    net = VisualFeatures(visual, layers, options.local).eval()
    sample_fp = source.fingerprint()
    identity = {"model_fingerprint": bundle.fingerprint, "sample_fingerprint": sample_fp,
                **{f"opt_{k}": v for k, v in options.identity().items()}}
    if path.exists() and not options.overwrite:
        done = FeatureFile(path).attrs
        if all(done.get(k) == v for k, v in identity.items()):
            info(f"[dim]cached[/] {dataset}: {path}")
            return path
        raise OodbenchError(
            f"{path} exists but was extracted with other data or options (sample list or --layers/--local/"
            "--dtype differ): pass --overwrite to replace it."
        )
    width = visual.transformer.width if hasattr(visual.transformer, "width") else visual.proj.shape[0]
    embed_dim = visual.proj.shape[1] if visual.proj is not None else width
    dt = DTYPES[options.dtype]
    layout = {"image_embeds": ((embed_dim,), dt), "penultimate": ((width,), dt),
              "labels": ((), np.int64), "ids": ((), np.dtype("O"))}
    if layers:
        layout["layers/cls"] = ((len(layers), width), dt)
    if options.local:
        grid = visual.grid_size if hasattr(visual, "grid_size") else (0, 0)
        layout["local_embeds"] = ((int(np.prod(grid)), embed_dim), np.float16)
    from .store import STR

    layout = {k: (s, STR if d == np.dtype("O") else d) for k, (s, d) in layout.items()}
    attrs = {
        "kind": "features", "dataset": dataset, "source": source.describe(),
        "model_name": bundle.name, "pretrained": bundle.pretrained, "ckpt": bundle.ckpt,
        "model_key": bundle.key, "layer_indices": layers, "preprocess": repr(bundle.preprocess),
        "options": asdict(options), "torch_version": torch.__version__,
    }
    writer = FeatureWriter(path, layout, identity, attrs, total=len(source),
                           chunk_rows=max(options.batch_size, 64))
    with exclusive(path):
        writer.open()
        try:
            _run(net, source, bundle.preprocess, writer, options, dataset, _image_size(visual))
            return writer.finalize()
        finally:
            writer.close()


def _run(net, source, preprocess, writer: FeatureWriter, options: ExtractOptions, dataset: str,
         image_size: int) -> None:
    start = writer.resumed_from
    if start:
        info(f"resuming {dataset} at sample {start}/{len(source)}")
    ids, labels = source.ids(), source.labels()
    device = options.device
    cuda = device.startswith("cuda")
    loader = torch.utils.data.DataLoader(
        _Images(source, preprocess, start, image_size), batch_size=options.batch_size,
        num_workers=options.workers, pin_memory=cuda, persistent_workers=options.workers > 0,
        shuffle=False,
    )
    amp = options.autocast_dtype()
    skipped_total = 0
    t0, done = time.time(), 0
    with progress() as bar:
        task = bar.add_task(f"extract {dataset}", total=len(source), completed=start, rate="")
        for images, idx, ok in loader:
            images = images.to(device, non_blocking=True)
            with torch.no_grad(), torch.autocast(device.split(":")[0], dtype=amp or torch.float32,
                                                 enabled=amp is not None):
                feats = net(images)
            keep = ok.numpy()
            rows = idx.numpy()[keep]
            arrays = {k: v[torch.as_tensor(keep, device=v.device)].cpu().numpy() for k, v in feats.items()}
            arrays["labels"] = labels[rows]
            arrays["ids"] = np.array([ids[i] for i in rows], dtype=object)
            skipped = [ids[i] for i in idx.numpy()[~keep]]
            skipped_total += len(skipped)
            writer.append(arrays, n_processed=int(idx[-1]) + 1, skipped=skipped)
            done += len(idx)
            rate = done / max(time.time() - t0, 1e-9)
            bar.update(task, advance=len(idx), rate=f"{rate:,.0f} img/s")
    if skipped_total:
        warn(f"{dataset}: skipped {skipped_total} unreadable image(s); their ids are in 'skipped_ids' of the file.")


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
                    device: str = "cpu") -> Path:
    """text/<bank>.h5: (T, C, D) embeddings of every template x name; reused when unchanged."""
    path = store.text_path(bundle.key, bank)
    if path.exists():
        from .store import read_h5

        _, attrs = read_h5(path)
        if attrs.get("names") == list(names) and attrs.get("templates") == list(templates):
            return path
    emb = encode_text_bank(bundle.model, bundle.tokenizer, names, templates, device=device)
    write_h5_atomic(path, {"embeds": emb}, {"kind": "text", "bank": bank, "names": list(names),
                                            "templates": list(templates), "fingerprint": bundle.fingerprint})
    return path
