"""JPEG decoding on the extraction device (``oodbench extract --decode device``).

With the default ``--decode pil`` every image is decoded and preprocessed by Pillow in the
DataLoader workers (open_clip's own transform). On a fast GPU that is the bottleneck: the
H100 ViT-B/16 fp16 run of ``benchmarks/extract_throughput.py`` decodes ~1,300 img/s on 14
workers (400 on 2) while the model alone runs ~6,400 img/s. ``--decode device`` moves the
JPEG work to the device (1,700-1,800 img/s there, see the README): workers only read the file
bytes; the main process decodes each batch with
``torchvision.io.decode_jpeg(..., device=<the extraction device>)`` (nvJPEG on CUDA,
libjpeg-turbo on the CPU) and applies the same Resize / CenterCrop / Normalize on tensors.

What stays on the Pillow path, per image: files that are not 8-bit grey/YCbCr JPEGs (PNG,
WebP, CMYK or 12-bit JPEGs, ...; see :func:`plain_jpeg`), JPEGs without an end marker
(truncated), JPEGs the device decoder refuses (corrupt data), and sources that are not files
(digits, torchvision datasets). Unreadable files are skipped and recorded
exactly as on the Pillow path.

The two decoders do not produce identical pixels (IDCT and chroma upsampling differ by ±1
grey level, and tensor bicubic resizing with antialiasing approximates Pillow's filter), so
features differ slightly; the choice is part of a feature file's identity, and a store is
never resumed or reused across decoders.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import OodbenchError

DECODERS = ("pil", "device")
JPEG_MAGIC = b"\xff\xd8\xff"

# kinds of a dataset item on the device-decode path
UNREADABLE, TENSOR, JPEG = 0, 1, 2


@dataclass(frozen=True)
class TensorPreprocess:
    """open_clip's eval transform (Resize shortest side, CenterCrop, ToTensor, Normalize) on
    uint8 (3, H, W) tensors, on whatever device they are."""

    resize: int
    crop: int
    interpolation: str
    mean: tuple[float, ...]
    std: tuple[float, ...]

    @classmethod
    def from_transform(cls, preprocess) -> TensorPreprocess:
        """Read the parameters from a torchvision ``Compose``; refuse anything else, naming it."""
        from torchvision import transforms as T

        steps = list(getattr(preprocess, "transforms", []))
        resize = crop = norm = None
        for step in steps:
            if isinstance(step, T.Resize):
                size = step.size
                if isinstance(size, (list, tuple)):
                    if len(size) != 1:
                        break
                    size = size[0]
                if step.max_size is not None:
                    break
                resize = (int(size), step.interpolation.value)
            elif isinstance(step, T.CenterCrop):
                h, w = step.size
                if h != w:
                    break
                crop = int(h)
            elif isinstance(step, T.Normalize):
                norm = (tuple(float(m) for m in step.mean), tuple(float(s) for s in step.std))
            elif isinstance(step, T.ToTensor) or getattr(step, "__name__", "") == "_convert_to_rgb":
                continue  # MaybeToTensor is a ToTensor; the decoder already gives RGB
            elif type(step).__name__ == "MaybeConvertMode" and getattr(step, "mode", "RGB") == "RGB":
                continue
            else:
                break
        else:
            if resize and crop and norm:
                return cls(resize[0], crop, resize[1], *norm)
        raise OodbenchError(
            f"--decode device reproduces Resize/CenterCrop/ToTensor/Normalize preprocessing only; this "
            f"model's is {preprocess!r}: use --decode pil."
        )

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """uint8 (3, H, W) -> normalised float32 (3, crop, crop)."""
        return self.batch([image])[0]

    def batch(self, images: list[torch.Tensor]) -> torch.Tensor:
        """uint8 (3, H_i, W_i) images on one device -> normalised float32 (B, 3, crop, crop).

        Images of the same size are resized and cropped in one call (the same numbers as one by
        one: resizing acts on each image alone), then the whole batch is normalised at once; on a
        GPU this removes most of the per-image kernel launches and Python overhead."""
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms import functional as TF

        groups: dict[tuple[int, ...], list[int]] = {}
        for k, image in enumerate(images):
            groups.setdefault(tuple(image.shape), []).append(k)
        device = images[0].device
        out = torch.empty(len(images), 3, self.crop, self.crop, dtype=torch.uint8, device=device)
        mode = InterpolationMode(self.interpolation)
        for ks in groups.values():
            x = TF.resize(torch.stack([images[k] for k in ks]), [self.resize], interpolation=mode, antialias=True)
            out[torch.tensor(ks, device=device)] = TF.center_crop(x, [self.crop, self.crop])
        x = out.float().div_(255.0)
        mean = torch.tensor(self.mean, device=device).view(1, -1, 1, 1)
        std = torch.tensor(self.std, device=device).view(1, -1, 1, 1)
        return x.sub_(mean).div_(std)


class EncodedImages(torch.utils.data.Dataset):
    """Source -> (payload, index, kind): JPEG bytes (kind JPEG) for the device to decode, a
    Pillow-preprocessed tensor (kind TENSOR) for everything else, or (kind UNREADABLE)."""

    def __init__(self, source, preprocess, start: int, image_size: int):
        self.source, self.preprocess, self.start = source, preprocess, start
        self.blank = torch.zeros(3, image_size, image_size)

    def __len__(self) -> int:
        return len(self.source) - self.start

    def pil(self, i: int) -> tuple[torch.Tensor, int]:
        from .data import UnreadableImage

        try:
            return self.preprocess(self.source.load(i)), TENSOR
        except UnreadableImage:
            return self.blank, UNREADABLE

    def __getitem__(self, j: int):
        i = self.start + j
        path = self.source.file(i)
        if path is not None:
            try:
                data = path.read_bytes()
            except OSError:
                data = b""
            if plain_jpeg(data):
                return torch.frombuffer(bytearray(data), dtype=torch.uint8), i, JPEG
        tensor, kind = self.pil(i)
        return tensor, i, kind


_SOF = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def plain_jpeg(data: bytes) -> bool:
    """True for a complete 8-bit JPEG with 1 (grey) or 3 (YCbCr) components: what every device
    decoder handles. CMYK/YCCK (4 components), 12-bit and files without an end marker
    (truncated) are False and go to Pillow, whose conversions are the reference."""
    if not (data.startswith(JPEG_MAGIC) and data.rstrip(b"\x00").endswith(b"\xff\xd9")):
        return False
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return False
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD7:  # markers without a length
            pos += 2
            continue
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker in _SOF:
            if pos + 10 > len(data):
                return False
            return data[pos + 4] == 8 and data[pos + 9] in (1, 3)
        if marker == 0xDA:  # start of scan before any frame header
            return False
        pos += 2 + length
    return False


def collate(items):
    payloads, idx, kinds = zip(*items, strict=True)
    return list(payloads), torch.tensor(idx), torch.tensor(kinds)


def decode_batch(payloads: list[torch.Tensor], kinds: torch.Tensor, idx: torch.Tensor, dataset: EncodedImages,
                 tp: TensorPreprocess, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, 3, S, S) images on ``device`` and the (B,) ok mask, in batch order.

    JPEGs are decoded together on the device; one the device decoder refuses is decoded by
    Pillow instead (and skipped as unreadable if Pillow refuses it too)."""
    from torchvision.io import ImageReadMode, decode_jpeg

    ok = kinds != UNREADABLE
    jpeg = [k for k in range(len(payloads)) if kinds[k] == JPEG]
    decoded: list[torch.Tensor | None] = [None] * len(jpeg)
    if jpeg:
        try:
            decoded = list(decode_jpeg([payloads[k] for k in jpeg], mode=ImageReadMode.RGB, device=device))
        except RuntimeError:
            for n, k in enumerate(jpeg):  # find the one(s) it refuses
                try:
                    decoded[n] = decode_jpeg(payloads[k], mode=ImageReadMode.RGB, device=device)
                except RuntimeError:
                    decoded[n] = None
    good = [n for n in range(len(jpeg)) if decoded[n] is not None and decoded[n].shape[0] == 3]
    out = torch.empty(len(payloads), 3, tp.crop, tp.crop, dtype=torch.float32, device=device)
    if good:
        out[torch.tensor([jpeg[n] for n in good], device=device)] = tp.batch([decoded[n] for n in good])
    done = {jpeg[n] for n in good}
    for k in range(len(payloads)):
        if k in done:
            continue
        if kinds[k] == JPEG:  # the device decoder refused it: Pillow decides
            tensor, kind = dataset.pil(int(idx[k]))
            out[k], ok[k] = tensor.to(device), kind != UNREADABLE
        else:
            out[k] = payloads[k].to(device, non_blocking=True)
    return out, ok
