"""CLIP-native scores built from CLIP's internal visual-language features.

The research question behind them: fine-tuning the image tower for ID classification tends to
destroy what made zero-shot CLIP a good OoD detector, the alignment between its visual
features and its text space. These scores read that alignment where fine-tuning leaves more
of it: in intermediate layers (``layer_mcm``), in the geometry of the text space itself
(``text_residual``, ``gap_mcm``) or in the zero-shot checkpoint the model was fine-tuned from
(``anchored_mcm``, ``ft_conf_zs``, ``disagreement``: these read a second model, see
``needs = ("reference", ...)`` and ``oodbench score --reference KEY``).

Notation: ``x`` the L2-normalised image embedding, ``t_c`` the L2-normalised text embedding of
ID class c (bank ``classes``), ``cos`` cosine similarity, ``MCM(x) = max_c softmax_c(cos(x, t_c) / T)``.
All scores: higher = more in-distribution.
"""

from __future__ import annotations

import numpy as np
from threadpoolctl import threadpool_limits

from ..errors import OodbenchError
from .base import Param, Scorer
from .clip import MCM, _templates_param, name_embeds
from .common import check_finite, chunk_rows, features, log_softmax64, logits, max_softmax, rowwise
from .inputs import Inputs, l2_normalize
from .registry import register_scorer

# ----------------------------------------------------------------------------- helpers


def mcm_from_cos(cos: np.ndarray, temperature: float) -> np.ndarray:
    """max_c softmax(cos / T) of an (N, C) cosine matrix, in float64."""
    return max_softmax(cos, temperature)


def extracted_blocks(data: Inputs) -> list[int]:
    """Vision block indices of the ``layers/cls`` columns (refuses a store without them)."""
    if not data.has("layers/cls"):
        raise OodbenchError(
            f"The {data.split} split has no per-layer CLS tokens ('layers/cls'): re-extract with "
            "`oodbench extract --layers all` (or --layers 3,7,11)."
        )
    blocks = list(data.extra.get("layer_indices") or [])
    if not blocks:
        blocks = list(range(data.array("layers/cls").shape[1]))
    return [int(b) for b in blocks]


def select_layers(spec: str, blocks: list[int]) -> list[int]:
    """Blocks named by ``spec``: ``late`` (last half of ``blocks``, at least one), ``all``, or
    comma-separated indices (negative = counted from the last extracted block)."""
    spec = str(spec).strip().lower()
    if spec == "all":
        return list(blocks)
    if spec == "late":
        return list(blocks[len(blocks) // 2:])
    try:
        wanted = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise OodbenchError(
            f"layers must be 'late', 'all' or comma-separated block indices; got {spec!r}."
        ) from None
    out = []
    for k in wanted:
        kk = blocks[k] if -len(blocks) <= k < 0 else k
        if kk not in blocks:
            raise OodbenchError(f"Layer {k} was not extracted; the store has layers {blocks}.")
        out.append(kk)
    if not out:
        raise OodbenchError("layers selects no block: use 'late', 'all' or block indices.")
    return list(dict.fromkeys(out))


def layer_embeds(data: Inputs, block: int) -> np.ndarray:
    """(N, D) L2-normalised joint-space embedding of block ``block``'s CLS token
    (``ln_post`` then the projection, as the last block's token becomes the image embedding)."""
    tokens = features(data, f"layer:{block}")
    return l2_normalize(data.visual.project(tokens))


def layer_cosines(data: Inputs, block: int, text: np.ndarray) -> np.ndarray:
    """(N, C) cosine of block ``block``'s projected CLS token to the class text embeddings."""
    return layer_embeds(data, block).astype(np.float64) @ text.T.astype(np.float64)


def reference_inputs(data: Inputs, who: str) -> Inputs:
    """The reference model's view of the same split (``data.extra['reference']``), checked."""
    ref = data.extra.get("reference")
    if ref is None:
        raise OodbenchError(
            f"{who} compares two checkpoints but no reference model was given: score with "
            "--reference KEY (the zero-shot base's model key in the same store)."
        )
    if len(ref) != len(data):
        raise OodbenchError(
            f"{who}: the reference split has {len(ref)} samples but this one has {len(data)}: "
            "extract both models from the same data."
        )
    if data.has("ids") and ref.has("ids") and not np.array_equal(
        np.asarray(data.ids).astype(str), np.asarray(ref.ids).astype(str)
    ):
        raise OodbenchError(f"{who}: the reference split lists other sample ids: extract both models from the same data.")
    return ref


def check_same_classes(data: Inputs, ref: Inputs, who: str) -> None:
    """Both models' class banks (``classes``) name the same classes in the same order: a
    posterior compared column by column is meaningless otherwise. Splits without a class bank
    are not checked here (the head sizes still are)."""
    a, b = data.text.get("classes"), ref.text.get("classes")
    if a is None or b is None:
        return
    if len(a.names) != len(b.names):
        raise OodbenchError(
            f"{who}: this model has {len(a.names)} classes but the reference has {len(b.names)}: "
            "both must classify the same ID classes."
        )
    for i, (x, y) in enumerate(zip(a.names, b.names, strict=True)):
        if x != y:
            order = " (same names, other order)" if sorted(a.names) == sorted(b.names) else ""
            raise OodbenchError(
                f"{who}: class {i} is {x!r} for this model but {y!r} for the reference{order}: "
                "extract both models with the same benchmark class list."
            )


def _posteriors(z: np.ndarray, temperature: float) -> np.ndarray:
    return log_softmax64(z, temperature).numpy()


# ----------------------------------------------------------------------------- layer-wise MCM


_LAYER_SPACE = tuple(range(-1, -25, -1))


@register_scorer
class LayerMCM(Scorer):
    """Layer-wise MCM: MCM of intermediate CLS tokens projected into the joint space.

    Each chosen block's CLS token (``layers/cls``, pre-``ln_post``) goes through ``ln_post``
    and the projection, is L2-normalised and scored with MCM against the class text embeddings.
    ``combine``: ``mean`` (mean MCM over ``layers``), ``best`` (MCM of the single block
    ``layer``: ``--tune`` picks it on ID val vs OoD val) or ``agreement`` (fraction of
    ``layers`` whose zero-shot argmax equals that of the final image embedding, times the final
    MCM). With ``combine=best, layer=-1`` it is MCM of the last block. Higher = more ID.
    """

    name = "layer_mcm"
    needs = ("layers", "embeds", "text")
    reference = "oodbench (this package), layer-wise MCM; MCM: Ming et al., NeurIPS 2022"
    params = {
        "layers": Param("late", str, doc="'late' (last half of the blocks), 'all' or indices '3,5' (negative from the end)"),
        "combine": Param("mean", str, choices=("mean", "best", "agreement"), doc="how per-layer MCMs are combined"),
        "layer": Param(-1, int, doc="block of combine=best (negative = from the end); --tune picks it"),
        "temperature": Param(1.0, float, low=1e-6, doc="softmax temperature on cosine similarity"),
        "templates": _templates_param(),
    }
    search_space = {"layer": _LAYER_SPACE}

    def __init__(self, **params) -> None:
        super().__init__(**params)
        # --tune: the block for combine=best; the layer set otherwise
        self.search_space = {"layer": _LAYER_SPACE} if self.combine == "best" else {"layers": ("late", "all")}

    def score(self, data) -> np.ndarray:
        t = name_embeds(data.text_bank("classes"), self.templates)
        blocks = extracted_blocks(data)
        if self.combine == "best":
            (k,) = select_layers(str(self.layer), blocks)
            return mcm_from_cos(layer_cosines(data, k, t), self.temperature)
        chosen = select_layers(self.layers, blocks)
        if self.combine == "mean":
            return np.mean([mcm_from_cos(layer_cosines(data, k, t), self.temperature) for k in chosen], axis=0)
        final = features(data, "embeds").astype(np.float64) @ t.T.astype(np.float64)
        pred = final.argmax(1)
        agree = np.mean([layer_cosines(data, k, t).argmax(1) == pred for k in chosen], axis=0)
        return agree * mcm_from_cos(final, self.temperature)


# ----------------------------------------------------------------------------- text subspace


def text_basis(rows: np.ndarray, rank: int | None, centre: bool) -> tuple[np.ndarray, np.ndarray]:
    """Orthonormal basis (r, D) of the span of ``rows`` (K, D), and the centre (D,) (zero unless
    ``centre``: then the span of the rows minus their mean, an affine subspace through it).

    ``rank`` keeps the top singular directions; None keeps the whole numerical rank, capped at
    D // 2 (a span of the whole space would leave no residual).
    """
    rows = np.asarray(rows, np.float64)
    mu = rows.mean(0) if centre else np.zeros(rows.shape[1])
    _, s, vt = np.linalg.svd(rows - mu, full_matrices=False)
    full = int((s > s[0] * 1e-6).sum()) if s.size and s[0] > 0 else 0
    if full == 0:
        raise OodbenchError("The class text embeddings span nothing (all equal?): cannot build a text subspace.")
    if rank is None:
        rank = min(full, rows.shape[1] // 2)
    elif rank > full:
        raise OodbenchError(
            f"The 'rank' parameter is {rank} but the class text embeddings span only {full} dimension(s)"
            f"{' once centred' if centre else ''}: choose rank ≤ {full}."
        )
    if rank >= rows.shape[1]:
        raise OodbenchError(f"A rank-{rank} text subspace fills the {rows.shape[1]}-d embedding space: choose rank < {rows.shape[1]}.")
    return vt[:rank], mu


@register_scorer
class TextResidual(Scorer):
    """Text-subspace residual: how much of the image embedding lies outside the ID text span.

    S = span of the L2-normalised class text embeddings (orthonormal basis from an SVD of the
    (C, D) text matrix; ``templates=all`` spans every template x class embedding; ``rank`` keeps
    the top singular directions; ``centre``: the affine subspace through the mean text
    embedding, the image embedding centred on that mean too). v = x (or x - mean). Score:
    ``measure=residual``: -||v - P_S v|| (ViM's residual, built from text, no training data);
    ``measure=cos``: ||P_S v|| / ||v||, the cosine of the angle between v and S. Higher = more ID.
    """

    name = "text_residual"
    needs = ("embeds", "text")
    reference = "oodbench (this package); cf. ViM (Wang et al., CVPR 2022) with a text-built subspace"
    params = {
        "templates": Param("ensemble", str, doc="'ensemble', 'first', an index, a template string, or 'all' (every template's embedding)"),
        "rank": Param(None, int, low=1, optional=True, doc="dimension of the text subspace; None: its whole rank, at most D/2"),
        "centre": Param(False, bool, doc="affine subspace through the mean class text embedding"),
        "measure": Param("residual", str, choices=("residual", "cos"), doc="-residual norm or cos of the angle to the subspace"),
    }
    search_space = {"rank": (None, 2, 4, 8, 16, 32, 64, 128, 256), "centre": (False, True)}

    def text_rows(self, data) -> np.ndarray:
        bank = data.text_bank("classes")
        if self.templates == "all":
            e = check_finite(l2_normalize(bank.embeds.astype(np.float32)), what="text embeddings")
            return e.reshape(-1, e.shape[-1])
        return name_embeds(bank, self.templates)

    def score(self, data) -> np.ndarray:
        bank = data.text_bank("classes")
        memo = self.__dict__.get("_basis")
        if memo is None or memo[0] is not bank:  # one SVD per sweep, not one per split
            with threadpool_limits(1, user_api="blas"):  # LAPACK: no thread fight with torch
                memo = (bank, text_basis(self.text_rows(data), self.rank, self.centre))
            self.__dict__["_basis"] = memo
        basis, mu = memo[1]
        x = features(data, "embeds")

        def part(r):
            v = np.asarray(x[r], np.float64) - mu
            total = np.einsum("nd,nd->n", v, v)
            inside = np.einsum("nr,nr->n", v @ basis.T, v @ basis.T)
            if self.measure == "cos":
                return np.sqrt(np.clip(inside / np.maximum(total, 1e-24), 0.0, 1.0))
            return -np.sqrt(np.clip(total - inside, 0.0, None))

        return rowwise(part, x.shape[0], chunk_rows(2 * basis.shape[0] + x.shape[1]))


# ----------------------------------------------------------------------------- modality gap


@register_scorer
class GapMCM(Scorer):
    """Modality-gap-corrected MCM: MCM on embeddings re-centred on each modality's centroid.

    mu_img = mean L2-normalised image embedding of the ID train split (labels unused),
    mu_txt = mean of the class text embeddings. ``mode=centre``: max_c softmax(cos(x - mu_img,
    t_c - mu_txt) / T); ``mode=shift``: max_c softmax(cos(x - mu_img + mu_txt, t_c) / T) (the
    image embedding moved across the gap). Within the softmax, centring removes the per-class
    bias mu_img . t_c that the gap adds to every image's cosines. Higher = more ID.
    """

    name = "gap_mcm"
    needs = ("embeds", "text")
    fit_split = "train"
    reference = "oodbench (this package); modality gap: Liang et al., Mind the Gap, NeurIPS 2022"
    params = {
        "mode": Param("centre", str, choices=("centre", "shift"), doc="centre both modalities, or shift images to the text centroid"),
        "temperature": Param(1.0, float, low=1e-6, doc="softmax temperature on cosine similarity"),
        "templates": _templates_param(),
    }
    search_space = {"mode": ("centre", "shift"), "temperature": (0.01, 0.1, 1.0)}

    def fit(self, data) -> GapMCM:
        x = features(data, "embeds")
        if x.shape[0] == 0:
            raise OodbenchError("gap_mcm needs ID train images to estimate the image centroid; the split is empty.")
        self.image_centroid_ = x.mean(0, dtype=np.float64)  # no float64 copy of the split
        self.fitted_ = True
        return self

    def score(self, data) -> np.ndarray:
        self.check_fitted()
        t = name_embeds(data.text_bank("classes"), self.templates).astype(np.float64)
        mu_t = t.mean(0)
        if self.mode == "centre":
            t, shift = l2_normalize(t - mu_t), -self.image_centroid_
        else:
            shift = mu_t - self.image_centroid_
        x = features(data, "embeds")
        return rowwise(
            lambda r: mcm_from_cos(l2_normalize(np.asarray(x[r], np.float64) + shift) @ t.T, self.temperature),
            x.shape[0],
            chunk_rows(2 * t.shape[0] + x.shape[1]),
        )


# ----------------------------------------------------------------------------- two checkpoints


@register_scorer
class AnchoredMCM(Scorer):
    """Zero-shot-anchored MCM: lam * MCM(fine-tuned) + (1 - lam) * MCM(reference).

    Both MCMs use each model's own image and class text embeddings (same ``temperature`` and
    ``templates``); the reference is normally the zero-shot model the checkpoint was fine-tuned
    from (``--reference KEY``). lam = 1 is MCM of the fine-tuned model, lam = 0 of the zero-shot
    one. Higher = more ID.
    """

    name = "anchored_mcm"
    needs = ("embeds", "text", "reference")
    reference = "oodbench (this package); MCM: Ming et al., NeurIPS 2022"
    params = {
        "lam": Param(0.5, float, low=0.0, high=1.0, doc="weight of the fine-tuned model's MCM"),
        "temperature": Param(1.0, float, low=1e-6, doc="softmax temperature on cosine similarity"),
        "templates": _templates_param(),
    }
    search_space = {"lam": (0.0, 0.25, 0.5, 0.75, 1.0)}

    def score(self, data) -> np.ndarray:
        ref = reference_inputs(data, self.name)
        mcm = MCM(temperature=self.temperature, templates=self.templates)
        return self.lam * mcm.score(data) + (1.0 - self.lam) * mcm.score(ref)


@register_scorer
class FtConfZs(Scorer):
    """Fine-tuned confidence x zero-shot concept match: MSP_ft(x) * MCM_zs(x) ** weight.

    MSP_ft = max softmax of the scored model's head logits / ``temperature`` (``--head linear``
    for a fine-tuned head); MCM_zs = MCM of the reference (zero-shot) model with
    ``mcm_temperature``. weight = 0 is MSP alone. Higher = more ID.
    """

    name = "ft_conf_zs"
    needs = ("logits", "reference", "text")
    reference = "oodbench (this package); MSP: Hendrycks & Gimpel, ICLR 2017; MCM: Ming et al., NeurIPS 2022"
    params = {
        "weight": Param(1.0, float, low=0.0, doc="exponent of the zero-shot MCM"),
        "temperature": Param(1.0, float, low=1e-6, doc="softmax temperature of the fine-tuned logits"),
        "mcm_temperature": Param(1.0, float, low=1e-6, doc="MCM temperature on the reference's cosines"),
        "templates": _templates_param(),
    }
    search_space = {"weight": (0.0, 0.5, 1.0, 2.0, 4.0, 8.0)}

    def score(self, data) -> np.ndarray:
        ref = reference_inputs(data, self.name)
        check_same_classes(data, ref, self.name)
        msp = np.exp(_posteriors(logits(data), self.temperature).max(1))
        mcm = MCM(temperature=self.mcm_temperature, templates=self.templates).score(ref)
        return msp * mcm**self.weight


@register_scorer
class Disagreement(Scorer):
    """Disagreement between the fine-tuned and the zero-shot class posteriors.

    p = softmax(z_ft / T) from the scored model's head, q = softmax(z_zs / T) from the
    reference's zero-shot head (logit scale x cosine to the class text embeddings).
    ``mode=argmax`` (default): max p - 1{argmax p != argmax q} (every disagreement ranks below
    every agreement, ties broken by the fine-tuned confidence); ``mode=kl``: -(KL(p||q) +
    KL(q||p)). Beware of ``kl``: two flat posteriors agree, so OoD inputs that leave both models
    unsure score as ID. Higher = more ID.
    """

    name = "disagreement"
    needs = ("logits", "reference", "text")
    reference = "oodbench (this package)"
    params = {
        "mode": Param("argmax", str, choices=("argmax", "kl"), doc="argmax disagreement (with confidence) or symmetric KL"),
        "temperature": Param(1.0, float, low=1e-6, doc="softmax temperature of both models' logits"),
    }
    search_space = {"temperature": (0.5, 1.0, 2.0, 5.0)}

    def score(self, data) -> np.ndarray:
        ref = reference_inputs(data, self.name)
        check_same_classes(data, ref, self.name)
        lp = _posteriors(logits(data), self.temperature)
        lq = _posteriors(logits(ref), self.temperature)
        if lp.shape[1] != lq.shape[1]:
            raise OodbenchError(
                f"disagreement: the scored head has {lp.shape[1]} classes but the reference's zero-shot head "
                f"has {lq.shape[1]}: both must classify the same ID classes."
            )
        if self.mode == "argmax":
            return np.exp(lp.max(1)) - (lp.argmax(1) != lq.argmax(1))
        p, q = np.exp(lp), np.exp(lq)
        return -((p * (lp - lq)).sum(1) + (q * (lq - lp)).sum(1))
