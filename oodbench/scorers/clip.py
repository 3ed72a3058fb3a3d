"""CLIP-native scorers that read image embeddings and text banks: MCM, GL-MCM, NegLabel, CSP, EOE.

``x``: (N, D) L2-normalised image embeddings, ``t_i``: L2-normalised text embeddings of the ID
class names (bank ``classes``), cos = cosine similarity. All scores: higher = more ID.
"""

from __future__ import annotations

import hashlib
from typing import TYPE_CHECKING

import numpy as np
from scipy.special import softmax

from ..errors import OodbenchError
from .base import Param, Scorer
from .common import check_finite, chunk_rows, chunks, features, max_softmax, rowwise
from .inputs import TextBank, l2_normalize
from .registry import register_scorer

if TYPE_CHECKING:  # annotations only; the compute paths import torch on first use
    import torch


def cosine_to_names(embeds: np.ndarray, name_embeds: np.ndarray) -> np.ndarray:
    """(N, C) cosine similarities of image embeddings to L2-normalised name embeddings."""
    return l2_normalize(embeds.astype(np.float32)) @ name_embeds.T.astype(np.float32)


def name_embeds(bank: TextBank, templates: str) -> np.ndarray:
    """(C, D) L2-normalised name embeddings under ``templates``.

    ``templates``: ``"first"``, ``"ensemble"``, a template index, or a template string of the
    bank (e.g. ``"the nice {}."``).
    """
    if "{" in str(templates):
        if templates not in bank.templates:
            raise OodbenchError(
                f"Template {templates!r} is not in this text bank (have: {', '.join(map(repr, bank.templates))})."
            )
        templates = bank.templates.index(templates)
    return check_finite(bank.name_embeds(templates), bank.names, "text embeddings")


def _templates_param(default: str = "first") -> Param:
    return Param(
        default, str, doc="'first', 'ensemble', a template index or a template string of the bank"
    )


@register_scorer
class MCM(Scorer):
    """Maximum concept matching: max_c softmax(cos(x, t_c) / T).

    T = 1 on raw cosine similarities (the paper's default). ``templates``: ``"first"`` (the
    benchmark's first prompt template, `a photo of a {}.`) or ``"ensemble"`` (all templates).
    Higher = more ID.
    """

    name = "mcm"
    needs = ("embeds", "text")
    reference = (
        "Ming et al., Delving into OoD Detection with Vision-Language Representations, NeurIPS 2022"
    )
    params = {
        "temperature": Param(1.0, float, low=1e-6, doc="softmax temperature on cosine similarity"),
        "templates": _templates_param(),
    }
    search_space = {"temperature": (0.01, 0.1, 0.5, 1.0, 2.0)}

    def score(self, data) -> np.ndarray:
        import torch
        t = name_embeds(data.text_bank("classes"), self.templates).astype(np.float64)
        x = features(data, "embeds")
        if self.temperature >= 0.1:  # float32, as GL-MCM's local term (relative error ~1e-6)
            xt = torch.from_numpy(np.ascontiguousarray(x))
            return rowwise(lambda r: unit_max_softmax32(xt[r], t, self.temperature, normalize=False).double().numpy(),
                           x.shape[0], chunk_rows(t.shape[0], 4))
        return rowwise(
            lambda r: max_softmax(np.asarray(x[r], np.float64) @ t.T / self.temperature),
            x.shape[0],
            chunk_rows(2 * t.shape[0]),
        )


def local_max_softmax(z, t: np.ndarray, temperature: float, normalize: bool = False) -> np.ndarray:
    """max over patches p and classes c of softmax_c(<z_p, t_c> / T), for (n, P, D) patch
    embeddings (unit, or L2-normalised here with ``normalize``; any float dtype, float16 as
    stored) and (C, D) unit text embeddings.

    For T >= 0.1 everything runs in float32 in torch (relative error ~1e-6, far below any
    score gap): the similarities of unit vectors are at most 1/T <= 10, so exp() cannot
    overflow and the row maximum of the softmax is max(exp(s)) / sum(exp(s)), two reductions
    over one exponentiated block. Smaller T keeps float64 (the error of s is divided by T).
    """
    import torch
    n, p, d = z.shape
    if temperature < 0.1:
        z64 = np.asarray(z, np.float64)
        if normalize:
            z64 = l2_normalize(z64)
        sims = z64 @ t.T.astype(np.float64)
        return softmax(sims / temperature, axis=2).max(axis=(1, 2))
    x = torch.from_numpy(np.ascontiguousarray(z)).reshape(n * p, d)
    return unit_max_softmax32(x, t, temperature, normalize).reshape(n, p).amax(1).double().numpy()


def unit_max_softmax32(x: torch.Tensor, t: np.ndarray, temperature: float, normalize: bool) -> torch.Tensor:
    """(N,) float32 max_c softmax_c(<x_i, t_c> / T) for rows x (unit, or normalised here) and
    unit text embeddings t, T >= 0.1 (see :func:`local_max_softmax` for why exp() is safe).
    Non-finite inputs give NaN rows (callers check the result)."""
    import torch
    x = x.float()  # float16 -> float32 is vectorised in torch (numpy's is ~5x slower)
    if normalize:
        x = x / torch.linalg.vector_norm(x, dim=1, keepdim=True).clamp_min_(1e-12)
    sims = x @ torch.from_numpy(np.ascontiguousarray(t, dtype=np.float32)).T
    if temperature != 1.0:
        sims *= 1.0 / temperature
    sims.exp_()
    return sims.amax(1) / sims.sum(1)


@register_scorer
class GLMCM(Scorer):
    """Global-local MCM: MCM(x) + lambda * max over patches p and classes c of softmax(cos(z_p, t_c) / T).

    ``z_p``: the projected patch embeddings ``local_embeds`` (N, P, D), L2-normalised; the
    softmax runs over classes for each patch. Higher = more ID.
    """

    name = "glmcm"
    needs = ("embeds", "local", "text")
    reference = "Miyai et al., GL-MCM: Global and Local Maximum Concept Matching for Zero-Shot OoD Detection, IJCV 2025"
    params = {
        "temperature": Param(1.0, float, low=1e-6, doc="softmax temperature on cosine similarity"),
        "lam": Param(1.0, float, low=0.0, doc="weight lambda of the local term"),
        "templates": _templates_param(),
    }
    search_space = {"lam": (0.0, 0.5, 1.0), "temperature": (0.01, 0.1, 1.0)}

    def score(self, data) -> np.ndarray:
        t = name_embeds(data.text_bank("classes"), self.templates).astype(np.float64)
        glob = MCM(temperature=self.temperature, templates=self.templates).score(data)
        loader = data.loaders.get("local_embeds")
        shape = getattr(loader, "shape", None)
        if shape is None:
            shape = data.array("local_embeds").shape
        n, p = shape[0], shape[1]
        if n != glob.shape[0]:
            raise OodbenchError(
                f"local_embeds has {n} rows but image_embeds has {glob.shape[0]}: re-extract with --local."
            )
        local = np.empty(n, np.float64)
        # streamed from the store by row blocks (a ViT-B/16 split holds 196 patches per image)
        for r, block in data.row_blocks("local_embeds", chunk_rows(2 * p * t.shape[0])):
            block = np.asarray(block)
            local[r] = local_max_softmax(block, t, self.temperature, normalize=True)
            if not np.isfinite(local[r]).all():  # NaN/inf in a patch propagates to its row
                check_finite(block, lambda r=r: np.asarray(data.ids)[r], "local embeddings")  # raises
        return glob + self.lam * local


def mine_negatives(
    neg: np.ndarray, pos: np.ndarray, ratio: float, percentile: float, near_duplicate: float | None = None
) -> np.ndarray:
    """Indices of the negative candidates kept by NegLabel's mining, in ascending order of score.

    For each candidate, the ``percentile``-th percentile (linear interpolation, as
    ``torch.quantile``) of its cosine to the ID label embeddings; keep the int(M * ratio)
    candidates with the lowest value. ``near_duplicate`` (CSP: 0.95; NegLabel has no such
    rule): a candidate whose cosine to any ID label exceeds it gets the value 1.0, so it sorts
    after every other candidate (CSP's ``multi_modal.py``). Ties keep candidate order.
    """
    q = np.empty(neg.shape[0], np.float64)
    for r in chunks(neg.shape[0], chunk_rows(pos.shape[0])):
        sims = neg[r].astype(np.float64) @ pos.T.astype(np.float64)
        q[r] = np.percentile(sims, percentile, axis=1)
        if near_duplicate is not None:
            q[r] = np.where(sims.max(axis=1) > near_duplicate, 1.0, q[r])
    return np.argsort(q, kind="stable")[: int(neg.shape[0] * ratio)]


def group_permutation(n: int, seed: int) -> np.ndarray:
    """The permutation NegLabel's ``grouping`` applies to the n kept negatives (after dropping
    the last M mod ngroup): ``torch.randperm(n)`` after ``torch.manual_seed(seed)``, here on
    torch's CPU generator. The reference draws it on CUDA, whose generator gives a different
    permutation for the same seed, so the groups are not the reference's; any permutation is an
    equally valid draw of the method (README: how much it moves the scores)."""
    import torch
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).numpy()


def neglabel_score(
    x: np.ndarray, pos: np.ndarray, neg: np.ndarray, temperature: float, ngroup: int, seed: int
) -> np.ndarray:
    """Mean over ``ngroup`` groups of sum_i e^{s_i} / (sum_i e^{s_i} + sum_{j in group} e^{n_j}).

    s = cos(x, pos) / T, n = cos(x, neg) / T. With ngroup > 1 the last M mod ngroup negatives
    are dropped and the rest split by a seeded permutation into ngroup equal groups (NegLabel's
    public code; permutation: :func:`group_permutation`); ngroup = 1 uses all negatives.
    Chunked over images.
    """
    import torch
    m = neg.shape[0]
    if ngroup > m:
        raise OodbenchError(
            f"The 'ngroup' parameter is {ngroup} but only {m} negative labels were kept: lower ngroup or raise ratio."
        )
    size = m // ngroup
    perm = group_permutation(size * ngroup, seed) if ngroup > 1 else np.arange(m)
    pos64 = torch.from_numpy(np.ascontiguousarray(pos, dtype=np.float64))
    neg64 = torch.from_numpy(np.ascontiguousarray(neg[perm], dtype=np.float64))
    # |cos / T| <= bound: when exp cannot overflow float64, sum the exponentials directly
    # (e^a / (e^a + e^b) = expit(a - b)); else the max-shifted log-sum-exp form
    norm = float(np.sqrt(np.einsum("nd,nd->n", x, x, dtype=np.float64).max(initial=0.0)))
    bound = max(norm, 1.0) * float(max(torch.linalg.vector_norm(pos64, dim=1).max(),
                                       torch.linalg.vector_norm(neg64, dim=1).max())) / temperature
    direct = bound < 600.0 and norm <= 1.0 + 1e-3  # unit image embeddings (the ``embeds`` space)

    def grouped(r):
        xr = torch.from_numpy(np.ascontiguousarray(x[r], dtype=np.float64))
        sp = (xr @ pos64.T).div_(temperature)
        sn = (xr @ neg64.T).div_(temperature)
        if direct:
            e_pos = sp.exp_().sum(1, keepdim=True)
            e_neg = sn.exp_()[:, : ngroup * size].reshape(xr.shape[0], ngroup, size).sum(2)
            return (e_pos / (e_pos + e_neg)).mean(1).numpy()
        lse_pos = torch.logsumexp(sp, dim=1)
        sims = sn.reshape(xr.shape[0], ngroup, size)
        return torch.sigmoid(lse_pos[:, None] - torch.logsumexp(sims, dim=2)).mean(1).numpy()

    return rowwise(grouped, x.shape[0], chunk_rows(2 * (m + pos.shape[0])))


FIXED_SELECTION_BANK = "negatives_file"  # written by ``extract --negatives file:SELECTION``


@register_scorer
class NegLabel(Scorer):
    """NegLabel: sum_i e^{s_i} / (sum_i e^{s_i} + sum_{j in group} e^{n_j}), averaged over groups.

    s_i = cos(x, t_i) / T for the ID labels, n_j = cos(x, neg_j) / T for mined negative labels
    (T = 0.01). Mining: for each candidate of the text bank(s) ``bank`` (``+``-separated names;
    each bank mined separately, as the paper's nouns and adjectives), the 95th percentile of its
    cosine to the ID labels; the ``ratio`` lowest are kept (optionally capped at
    ``max_negatives`` in total). A fixed selection (bank ``negatives_file``, e.g. NegLabel's
    published ImageNet negatives) is used as given, in file order (``mine``). Grouping: see
    :func:`neglabel_score`. ``templates`` picks the ID labels' prompts (the paper: ``"the nice
    {}"``, if the class bank has it), ``neg_templates`` those of every negative bank (each bank
    keeps its own prompts). Higher = more ID.
    """

    name = "neglabel"
    needs = ("embeds", "text", "negatives")
    reference = "Jiang et al., Negative Label Guided OOD Detection with Pretrained Vision-Language Models, ICLR 2024"
    params = {
        "temperature": Param(0.01, float, low=1e-6, doc="temperature T on cosine similarity"),
        "ratio": Param(
            0.15, float, low=1e-6, high=1.0, doc="fraction of candidates kept as negatives"
        ),
        "percentile": Param(
            95.0,
            float,
            low=0.0,
            high=100.0,
            doc="percentile of a candidate's similarity to the ID labels",
        ),
        "ngroup": Param(100, int, low=1, doc="number of negative groups averaged"),
        "seed": Param(0, int, low=0, doc="seed of the group permutation"),
        "max_negatives": Param(
            None, int, low=1, optional=True, doc="cap on the number of kept negatives"
        ),
        "bank": Param(
            "negatives+negatives_adj", str, doc="text bank(s) of negative candidates, '+'-separated"
        ),
        "id_bank": Param("classes_neglabel", str, doc="text bank of the ID labels (prompt 'the nice {}')"),
        "templates": _templates_param(),
        "neg_templates": _templates_param(),
        "near_duplicate": Param(
            None, float, low=-1.0, high=1.0, optional=True,
            doc="never keep a candidate whose cosine to an ID label exceeds this (CSP: 0.95)",
        ),
        "mine": Param(
            "auto", str, choices=("auto", "yes", "no"),
            doc="mine the banks (yes) or use them as given (no); auto: no for a fixed selection (negatives_file)",
        ),
    }
    search_space = {
        "ngroup": (1, 10, 100),
        "ratio": (0.05, 0.15, 0.3),
        "percentile": (90.0, 95.0, 100.0),
    }

    def __init__(self, **params) -> None:
        super().__init__(**params)
        self._mined: dict = {}

    def mines(self) -> bool:
        """Whether the banks are mined (else used as given, in order: a fixed selection)."""
        if self.mine == "auto":
            return not all(name == FIXED_SELECTION_BANK for name in str(self.bank).split("+") if name)
        return self.mine == "yes"

    def negatives(self, data, pos: np.ndarray) -> np.ndarray:
        """(M', D) mined negative-label embeddings (cached per negative text bank, ID-label
        embeddings ``pos`` (by content), template choice and mining parameters)."""
        names = [name for name in str(self.bank).split("+") if name]
        banks = [data.text_bank(name) for name in names]
        mine = self.mines()
        key = (
            tuple(id(b) for b in banks),
            hashlib.sha256(np.ascontiguousarray(pos).tobytes()).hexdigest(),  # the ID-label bank
            self.templates,
            self.neg_templates,
            self.ratio,
            self.percentile,
            self.max_negatives,
            self.near_duplicate,
            mine,
        )
        if key not in self._mined:
            kept = []
            for b in banks:
                cand = name_embeds(b, self.neg_templates)
                if mine:
                    cand = cand[mine_negatives(cand, pos, self.ratio, self.percentile, self.near_duplicate)]
                kept.append(cand)
            neg = np.concatenate(kept)
            if self.max_negatives is not None:
                neg = neg[: self.max_negatives]
            if neg.shape[0] == 0:
                raise OodbenchError(
                    f"{self.name}: no negative labels kept from {self.bank!r}: raise ratio or add candidates."
                )
            self._mined = {key: (neg, banks)}  # keeping the banks alive keeps their ids unique
        return self._mined[key][0]

    def score(self, data) -> np.ndarray:
        pos = name_embeds(data.text_bank(self.id_bank), self.templates)
        neg = self.negatives(data, pos)
        return neglabel_score(
            features(data, "embeds"), pos, neg, self.temperature, self.ngroup, self.seed
        )


@register_scorer
class CSP(NegLabel):
    """CSP: NegLabel whose candidate pool adds the conjugated semantic pool.

    The pool is the union of the noun bank ``negatives_csp_nouns`` (the published nouns minus
    CSP's excluded lexicographer files, 8 prompts) and the bank ``negatives_csp`` of adjectives
    conjugated with superclass words (``{} object``, ``{} scene``, ..., 4 prompts); both are
    mined as NegLabel does plus CSP's near-duplicate rule (``near_duplicate=0.95``); each
    bank's prompts are averaged raw, then normalised (stored so by ``extract``); the ID labels
    use CSP's 8 noun prompts (bank ``classes_csp``). Higher = more ID.
    """

    name = "csp"
    reference = "Chen et al., Conjugated Semantic Pool Improves OOD Detection with Pre-trained Vision-Language Models, NeurIPS 2024"
    params = {
        **NegLabel.params,
        "bank": Param(
            "negatives_csp_nouns+negatives_csp", str, doc="text bank(s) of negative candidates, '+'-separated"
        ),
        "id_bank": Param("classes_csp", str, doc="text bank of the ID labels (CSP's 8 noun prompts)"),
        "templates": _templates_param("ensemble"),
        "neg_templates": _templates_param("ensemble"),
        "near_duplicate": Param(
            0.95, float, low=-1.0, high=1.0, optional=True,
            doc="never keep a candidate whose cosine to an ID label exceeds this (CSP: 0.95)",
        ),
    }


def eoe_keep(id_names, outlier_names, pos: np.ndarray, out: np.ndarray, near_task: bool,
             pre_filter: float) -> np.ndarray:
    """Indices of the envisioned outlier labels EOE keeps (its ``detection_util.py``).

    ``near_task``: drop every outlier label that shares a whitespace-separated word with any ID
    label (``remove_overlap_class``; EOE does it for near-OoD tasks, whose labels are envisioned
    per ID class). ``pre_filter``: drop labels whose cosine to any ID label exceeds it (EOE:
    0.85 for near-OoD on ImageNet-20, else 1.0, which drops nothing). ``pos``, ``out``: unit
    embeddings (C, D), (M, D).
    """
    keep = np.arange(len(outlier_names))
    if near_task:
        words = {w for name in id_names for w in name.split()}
        keep = np.array([i for i in keep if not any(w in words for w in outlier_names[i].split())], dtype=int)
    if keep.size:
        sims = out[keep].astype(np.float64) @ pos.T.astype(np.float64)
        keep = keep[~(sims > pre_filter).any(axis=1)]
    return keep


@register_scorer
class EOE(Scorer):
    """Envisioning outlier exposure: max_ID p - beta * max_outlier p.

    p = softmax over the ID labels and the envisioned outlier labels (text bank
    ``outlier_bank``) of cos(x, .) / T. The outlier labels are first filtered as EOE's code does
    (:func:`eoe_keep`: ``near_task`` word-overlap removal, ``pre_filter`` cosine threshold).
    Higher = more ID.
    """

    name = "eoe"
    needs = ("embeds", "text")
    reference = "Cao et al., Envisioning Outlier Exposure by Large Language Models for OoD Detection, ICML 2024"
    params = {
        "beta": Param(0.25, float, low=0.0, doc="weight of the outlier term"),
        "temperature": Param(1.0, float, low=1e-6, doc="softmax temperature on cosine similarity"),
        "outlier_bank": Param("outliers", str, doc="text bank of envisioned outlier labels"),
        "templates": _templates_param(),
        "near_task": Param(
            False, bool, doc="drop outlier labels sharing a word with an ID label (EOE, near-OoD tasks)"
        ),
        "pre_filter": Param(
            1.0, float, low=-1.0, high=1.0,
            doc="drop outlier labels whose cosine to an ID label exceeds this (EOE: 0.85 near-OoD ImageNet-20)",
        ),
    }
    search_space = {"beta": (0.0, 0.1, 0.25, 0.5, 1.0)}

    def score(self, data) -> np.ndarray:
        import torch
        id_bank, out_bank = data.text_bank("classes"), data.text_bank(self.outlier_bank)
        pos = name_embeds(id_bank, self.templates).astype(np.float64)
        out = name_embeds(out_bank, self.templates).astype(np.float64)
        keep = eoe_keep(id_bank.names, out_bank.names, pos, out, self.near_task, self.pre_filter)
        if keep.size == 0:
            raise OodbenchError(
                f"eoe: the filters removed every outlier label of bank {self.outlier_bank!r}: "
                "lower near_task/pre_filter or give other labels."
            )
        both = np.concatenate([pos, out[keep]])
        x = features(data, "embeds")
        c = pos.shape[0]

        def eoe(r):
            p = torch.softmax(torch.from_numpy(np.asarray(x[r], np.float64) @ both.T / self.temperature), dim=1)
            return (p[:, :c].amax(1) - self.beta * p[:, c:].amax(1)).numpy()

        return rowwise(eoe, x.shape[0], chunk_rows(2 * both.shape[0]))
