"""GPU checks of the fine-tuning recipes (issue 6): AMP training on CUDA, exact reload on the CPU.

    python benchmarks/finetune_gpu_check.py --out DIR

For every recipe (and fp16 with a GradScaler, bf16 autocast), trains the tiny CLIP a few steps
on CUDA, reloads the checkpoint with load_model on the CPU and compares it with the in-memory
model moved to the CPU (fp32 weights: must agree < 1e-5); resumes a CUDA run; prints timings.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="/tmp/ft_gpu")
    ap.add_argument("--steps", type=int, default=40)
    args = ap.parse_args()
    from oodbench.finetune import FinetuneConfig, finetune
    from oodbench.models import load_model

    out = Path(args.out)
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(8, 3, 32, 32, generator=gen)
    rows = []
    specs = [("ft", "auto", {}), ("ft", "fp16", {"name": "ft-fp16"}), ("lpft", "auto", {}), ("flyp", "auto", {}),
             ("lora", "auto", {}), ("ft", "auto", {"reg": "ldifs", "name": "ft-ldifs"}), ("lp", "auto", {})]
    for recipe, prec, kw in specs:
        cfg = FinetuneConfig(recipe, steps=args.steps, device="cuda", precision=prec, **kw)
        torch.cuda.synchronize()
        t0 = time.time()
        res = finetune(cfg, out, overwrite=True)
        torch.cuda.synchronize()
        secs = time.time() - t0
        b = load_model(ckpt=res.path, device="cpu")
        tok = b.tokenizer(["a handwritten one.", "the number four."])
        m = res.model.to("cpu").float().eval()
        with torch.no_grad():
            d_img = float((b.model.encode_image(x) - m.encode_image(x)).abs().max())
            d_txt = float((b.model.encode_text(tok) - m.encode_text(tok)).abs().max())
        rows.append({"run": cfg.run_name, "precision": prec, "seconds": round(secs, 2), "val_acc": res.val_accuracy,
                     "max_diff_image": d_img, "max_diff_text": d_txt, "fingerprint_match": b.fingerprint == res.fingerprint,
                     "ok": d_img < 1e-5 and d_txt < 1e-5 and b.fingerprint == res.fingerprint})
        print(rows[-1], flush=True)
    # resume on CUDA: stop half-way, continue, compare with a straight run
    cfg = dict(recipe="ft", steps=10, device="cuda", save_every=1, precision="fp32")
    a = finetune(FinetuneConfig(**cfg), out / "straight", overwrite=True)
    finetune(FinetuneConfig(**cfg), out / "split", overwrite=True, stop_after=5)
    b = finetune(FinetuneConfig(**cfg), out / "split")
    sa = torch.load(a.path, weights_only=True)["state_dict"]
    sb = torch.load(b.path, weights_only=True)["state_dict"]
    diff = max(float((sa[k].float() - sb[k].float()).abs().max()) for k in sa)
    rows.append({"run": "resume-cuda-fp32", "resumed_from": b.resumed_from, "max_weight_diff_vs_straight": diff,
                 "ok": b.resumed_from == 5})
    print(rows[-1], flush=True)
    (out / "gpu_check.json").write_text(json.dumps({"device": torch.cuda.get_device_name(), "rows": rows}, indent=2))
    print("ALL OK" if all(r["ok"] for r in rows) else "SOME FAILED")


if __name__ == "__main__":
    main()
