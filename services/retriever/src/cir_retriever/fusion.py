"""The vector arithmetic of CVSI and its relatives (method.md sections 3 and 4), as pure numpy functions.

One function per equation. Inputs named as in method.md: `q_v`, `q_m`, `q_f` (query side),
`t_v`, `t_c` (gallery side). Unless a name says `raw`, vectors are L2-normalised CLIP features.
Matrices hold one row per item. Used by the search service and by the evaluation tooling alike.
"""

from __future__ import annotations

from enum import StrEnum

import numpy as np

_EPS = 1e-12


class ScoreFunction(StrEnum):
    DOT = "dot"  # released code: q . t on the unnormalised sums
    COSINE = "cosine"  # paper, Eq. 10


def normalize(x: np.ndarray) -> np.ndarray:
    """L2-normalise along the last axis (rows of a matrix)."""
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), _EPS)


# --- CVSI, query side (method.md 3.1) -------------------------------------------------------------


def edited_caption_feature(edited_caption_features: np.ndarray) -> np.ndarray:
    """q_m = mean_i normalize(f_t(c^M_i)); one edited caption (joined mode) gives its own feature."""
    return normalize(np.atleast_2d(edited_caption_features)).mean(axis=0)


def fine_grained_prompt(modification_text: str, added_objects: str) -> str:
    """F_G, the exact string of the released code; `$` is where Phi's pseudo token goes."""
    return "a photo of $ that " + modification_text + ". And the photo should have " + added_objects + "."


def cvsi_query(q_m: np.ndarray, q_f: np.ndarray, q_v: np.ndarray, alpha: float, beta: float) -> np.ndarray:
    """Eq. 8: q = alpha*q_m + beta*q_f + (1 - alpha - beta)*q_v, not renormalised."""
    return alpha * q_m + beta * q_f + (1.0 - alpha - beta) * q_v


# --- CVSI, gallery side (method.md 3.2) -----------------------------------------------------------


def caption_feature(caption_features: np.ndarray, renormalize: bool) -> np.ndarray:
    """t_c = mean_j normalize(f_t(c^T_j)) over one image's (N, d) captions; renormalised for FashionIQ."""
    mean = normalize(caption_features).mean(axis=0)
    return normalize(mean) if renormalize else mean


def cvsi_gallery(t_c: np.ndarray, t_v: np.ndarray, gamma: float) -> np.ndarray:
    """Eq. 9: t = gamma*t_c + (1 - gamma)*t_v, not renormalised (rows: gallery images)."""
    return gamma * t_c + (1.0 - gamma) * t_v


# --- Scoring (method.md 3.3) ----------------------------------------------------------------------


def searchable_gallery(t: np.ndarray, score: ScoreFunction) -> np.ndarray:
    """The vectors an inner-product index holds so that `q . row` ranks as `score` does.

    dot: t itself. cosine: t / |t| (|q| is the same for every row of one query: it cannot change the order).
    """
    return t if score is ScoreFunction.DOT else normalize(t)


def cvsi_scores(q: np.ndarray, t: np.ndarray, score: ScoreFunction) -> np.ndarray:
    """Eq. 10 (cosine) or the released code's dot product, for one query against every gallery row."""
    raw = t @ q
    if score is ScoreFunction.DOT:
        return raw
    return raw / np.maximum(np.linalg.norm(t, axis=-1) * np.linalg.norm(q), _EPS)


def cvsi(
    q_m: np.ndarray,
    q_f: np.ndarray,
    q_v: np.ndarray,
    t_c: np.ndarray,
    t_v: np.ndarray,
    alpha: float,
    beta: float,
    gamma: float,
    score: ScoreFunction,
) -> np.ndarray:
    """CVSI Eq. 8-10 in one place: one query's scores against every gallery row."""
    q = cvsi_query(q_m, q_f, q_v, alpha, beta)  # Eq. 8
    t = cvsi_gallery(t_c, t_v, gamma)  # Eq. 9
    return cvsi_scores(q, t, score)  # Eq. 10 (cosine) or the released dot product


# --- CVSI factored: the same scores from products with stored row-aligned matrices ----------------
# A store keeps T_v (normalised image features) and T_c (raw caption means) apart, plus three scalars per
# row, and answers any gamma exactly with two products instead of building an n x d fused matrix per gamma.


def cvsi_row_scalars(t_c: np.ndarray, t_v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-row |t_v|^2, |t_c|^2 and t_c . t_v (float64): all the cosine form needs besides the products."""
    image_sq = np.einsum("nd,nd->n", t_v, t_v, dtype=np.float64)
    caption_sq = np.einsum("nd,nd->n", t_c, t_c, dtype=np.float64)
    dots = np.einsum("nd,nd->n", t_c, t_v, dtype=np.float64)
    return image_sq, caption_sq, dots


def cvsi_gallery_norms(
    gamma: float,
    image_sq_norms: np.ndarray,
    caption_sq_norms: np.ndarray,
    caption_image_dots: np.ndarray,
    renormalize: bool,
) -> np.ndarray:
    """|gamma t_c + (1 - gamma) t_v| per row from the scalars of `cvsi_row_scalars` (Eq. 9's norm).

    |t|^2 = g^2 |t_c|^2 + 2 g (1 - g) t_c . t_v + (1 - g)^2 |t_v|^2; with the renormalised
    t_c / max(|t_c|, eps) the caption terms are divided by max(|t_c|, eps) (squared for |t_c|^2), as
    `normalize` does.
    """
    caption_sq, dots = caption_sq_norms, caption_image_dots
    if renormalize:
        inverse = 1.0 / np.maximum(np.sqrt(caption_sq), _EPS)
        caption_sq, dots = caption_sq * inverse**2, dots * inverse
    squared = gamma**2 * caption_sq + 2.0 * gamma * (1.0 - gamma) * dots + (1.0 - gamma) ** 2 * image_sq_norms
    return np.sqrt(np.maximum(squared, 0.0))


def cvsi_scores_from_products(
    image_products: np.ndarray,
    caption_products: np.ndarray,
    gamma: float,
    score: ScoreFunction,
    image_sq_norms: np.ndarray,
    caption_sq_norms: np.ndarray,
    caption_image_dots: np.ndarray,
    renormalize: bool,
) -> np.ndarray:
    """q . searchable_gallery(cvsi_gallery(t_c, t_v, gamma), score) from T_v q and T_c q, exact for any gamma.

    image_products, caption_products: (..., n) products of the query (or queries) with t_v and the raw t_c;
    the scalars are (n,) from `cvsi_row_scalars`. dot: (1 - g) T_v q + g T_c' q; cosine: that over |t|.
    Per-row factors are computed in float64 and applied in the products' dtype (no float64 (b, n) copy).
    """
    dtype = image_products.dtype
    if renormalize:
        caption_scale = (1.0 / np.maximum(np.sqrt(caption_sq_norms), _EPS)).astype(dtype)
        caption_products = caption_products * caption_scale
    fused = (1.0 - gamma) * image_products + gamma * caption_products
    if score is ScoreFunction.DOT:
        return fused
    norms = cvsi_gallery_norms(gamma, image_sq_norms, caption_sq_norms, caption_image_dots, renormalize)
    fused *= (1.0 / np.maximum(norms, _EPS)).astype(dtype)
    return fused


# --- Baselines and textual inversion (method.md 4) ------------------------------------------------


def captioning_text(first_caption: str, modification_text: str) -> str:
    """The captioning baseline's query text: the first caption, a space, the modification text."""
    return first_caption + " " + modification_text


def textual_inversion_prompt(modification_text: str) -> str:
    """Pic2Word / SEARLE / LinCIR query prompt; `$` is where the pseudo token goes."""
    return "a photo of $ that " + modification_text


# --- LDRE (method.md 4) ---------------------------------------------------------------------------


def ldre_mean_query(raw_edit_features: np.ndarray) -> np.ndarray:
    """LDRE, CIRR form: normalize(mean_i f_t(c^M_i)) over the raw (unnormalised) edited-caption features."""
    return normalize(np.atleast_2d(raw_edit_features).mean(axis=0))


def ldre_weighted_query(edit_features: np.ndarray, slot_weights: np.ndarray) -> np.ndarray:
    """LDRE, CIRCO form: sum_i w_i normalize(f_t(c^M_i))."""
    return (slot_weights[:, None] * normalize(edit_features)).sum(axis=0)


def ldre_slot_scores(
    edited: np.ndarray, original: np.ndarray, gallery: np.ndarray, top: int = 5
) -> np.ndarray:
    """LDRE's per-slot scores s_i over a set of queries (sums over queries: chunks of queries add up).

    edited, original: (queries, slots, d) normalised features of edited and original captions; gallery:
    (n, d) normalised image features. D = -min(G_i I^T - B_i I^T, 0); s_i sums the top `top` values of D
    per query over all queries.
    """
    gain = np.einsum("qsd,nd->qsn", edited - original, gallery)  # G_i I^T - B_i I^T in one product
    drop = -np.minimum(gain, 0.0)
    top = min(top, drop.shape[-1])
    # Only the top values' sum is needed, not their order: a partition, not a sort of the whole gallery.
    top_values = np.partition(drop, drop.shape[-1] - top, axis=-1)[..., -top:]
    return top_values.sum(axis=(0, 2))


def ldre_weights_from_scores(slot_scores: np.ndarray, temperature: float = 0.04) -> np.ndarray:
    """w = softmax(s / max(s) / temperature)."""
    logits = slot_scores / max(float(slot_scores.max()), _EPS) / temperature
    logits -= logits.max()
    weights = np.exp(logits)
    return weights / weights.sum()


def ldre_adaptive_weights(
    edited: np.ndarray, original: np.ndarray, gallery: np.ndarray, top: int = 5, temperature: float = 0.04
) -> np.ndarray:
    """LDRE's global slot weights over a set of queries (method.md 4)."""
    return ldre_weights_from_scores(ldre_slot_scores(edited, original, gallery, top), temperature)


# --- WeiMoCIR (method.md 4.1) ---------------------------------------------------------------------


def weimocir_fuse(raw_v: np.ndarray, raw_t: np.ndarray, a: float) -> np.ndarray:
    """fuse(v, t) = normalize((1 - a)*v + a*t) on raw projected CLIP features."""
    return normalize((1.0 - a) * raw_v + a * raw_t)


def weimocir_coded_query(
    raw_reference_image: np.ndarray,
    raw_reference_captions: np.ndarray,
    raw_text: np.ndarray,
    a: float,
    b: float,
) -> np.ndarray:
    """The released code's R+1 query vectors, weighted and concatenated for one inner-product search.

    score(n) = b * mean_k q_k . normalize(C_k[n]) + (1 - b) * q_img . normalize(V[n]), with
    q_k = fuse(C_k[ref], T) and q_img = fuse(V[ref], T); so the query is
    [b/R q_1, ..., b/R q_R, (1 - b) q_img] against the gallery's `weimocir_coded_gallery` rows.
    """
    slots = raw_reference_captions.shape[0]
    caption_queries = weimocir_fuse(raw_reference_captions, raw_text[None, :], a) * (b / slots)
    image_query = weimocir_fuse(raw_reference_image, raw_text, a) * (1.0 - b)
    return np.concatenate([caption_queries.reshape(-1), image_query])


def weimocir_coded_gallery(raw_caption_slots: np.ndarray, t_v: np.ndarray) -> np.ndarray:
    """Rows [normalize(C_1[n]), ..., normalize(C_R[n]), t_v[n]]; raw_caption_slots is (n, R, d)."""
    n = raw_caption_slots.shape[0]
    return np.concatenate([normalize(raw_caption_slots).reshape(n, -1), t_v], axis=1)


def weimocir_coded_scores(
    raw_reference_image: np.ndarray,
    raw_reference_captions: np.ndarray,
    raw_text: np.ndarray,
    raw_caption_slots: np.ndarray,
    t_v: np.ndarray,
    a: float,
    b: float,
) -> np.ndarray:
    """The coded form written out term by term (for checks): b * mean_k s_k(n) + (1 - b) * s_img(n)."""
    per_slot = [
        normalize(raw_caption_slots[:, k]) @ weimocir_fuse(raw_reference_captions[k], raw_text, a)
        for k in range(raw_reference_captions.shape[0])
    ]
    s_img = t_v @ weimocir_fuse(raw_reference_image, raw_text, a)
    return b * np.mean(per_slot, axis=0) + (1.0 - b) * s_img


def weimocir_paper_gallery(raw_caption_slots: np.ndarray, t_v: np.ndarray, b: float) -> np.ndarray:
    """The slides' form: (1 - b) sim(q, v_n) + b mean_r sim(q, t_{n,r}), which is q . this row.

    Rows: (1 - b) t_v + b mean_r normalize(t_{n,r}); q is normalised, so each sim is an inner product.
    """
    return (1.0 - b) * t_v + b * normalize(raw_caption_slots).mean(axis=1)


# --- WeiMoCIR factored: scores from products with stored row-aligned matrices ------------------------


def weimocir_paper_scores_from_products(
    image_products: np.ndarray, slot_mean_products: np.ndarray, b: float
) -> np.ndarray:
    """q . weimocir_paper_gallery rows from T_v q and M q, M = mean_r normalize(C_r); any b, two products."""
    return (1.0 - b) * image_products + b * slot_mean_products


def weimocir_coded_query_parts(query: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """A coded query (..., (R + 1) d) split into its caption-slot part (..., R d) and image part (..., d)."""
    return query[..., :-dim], query[..., -dim:]


def weimocir_coded_scores_from_products(slot_products: np.ndarray, image_products: np.ndarray) -> np.ndarray:
    """q . weimocir_coded_gallery rows = [normalize(C_1..C_R)] . [q_1..q_R] + t_v . q_img.

    slot_products: the product of the slot part of the query with the (n, R d) concatenated normalised slots
    (that is sum_r normalize(C_r) . q_r, one product); image_products: T_v q_img.
    """
    return slot_products + image_products
