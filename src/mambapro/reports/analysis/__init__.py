"""``mambapro analyze``: the paper's qualitative figures for one or more checkpoints, and a report.

For a checkpoint (and the ``--compare`` checkpoints, which must be of the same dataset) on its
test set (query and gallery, all of the model's modalities present; RGB, NI and TI in the
paper, 2 to 4 in general):

* **t-SNE** (paper Fig. 5) of the ``ori`` feature (the backbone's cls tokens concatenated)
  and the ``fuse`` feature (the aggregator's) of ``ids`` test identities, drawn with a fixed seed
  from the test set, the same for every checkpoint: one panel per checkpoint and feature, colours
  by identity, markers by camera. Each test feature is taken as the model returns it at test
  time (before or after its head's BatchNorm, ``test.neck_feat``) and L2-normalised before
  scikit-learn's ``TSNE`` (the evaluation's distances are on L2-normalised features too).
* **Modality alignment** (Fig. 6): per capture, the cosine similarity between two modalities'
  features, for every pair of modalities (RGB-NI, RGB-TI and NI-TI), *before MA* (the backbone's
  cls tokens, the chunks of ``ori``) and *after MA* (the mean of each modality's mixed patch
  tokens f_ir^M, which the aggregator's readout consumes with the cls token; read from the
  aggregator's ``mixed_taps``). Histograms per pair; in ``analysis.json`` per pair and stage the mean, the
  standard deviation and ``same_vs_other_overlap``, and per pair ``before_after_overlap`` (both
  defined in :data:`OVERLAP_DEFINITION`). The readout's per-modality outputs (the chunks of
  ``fuse``, f_final^M) are recorded as a third stage, ``readout``.
* **Grad-CAM** (Figs. 10-11) of each modality's feature after MA: the activations are that
  modality's mixed patch tokens f_ir^M (reshaped to the H/16 x W/16 token grid), the target is
  the L2 norm of their mean, the modality's feature after MA (a retrieval model has no class
  score for unseen identities; see :func:`grad_cam_maps` for why not the readout's output),
  computed with ``pytorch-grad-cam`` and overlaid on that modality's image, for ``queries`` queries: the
  best- and worst-AP ones of the first checkpoint (the same queries for every checkpoint).
* **Rank lists** of the worst queries (:func:`mambapro.retrieval.search.draw_rank_list`), the CMC
  curves, the metrics, and with ``missing="all"`` the missing-modality table
  (:func:`mambapro.retrieval.testing.evaluate_model` per setting).

Everything lands in one folder with ``analysis.json`` and ``report.html`` (a self-contained page:
relative links to the PNG files beside it, no network). Metrics use the plain distance
(``test.distance``, no re-ranking).

One module per job: ``features`` (the one pass that collects every feature), ``context`` (what
the sections share), ``queries`` (per-query AP, the best and worst queries), one module per figure
or table (``cmc``, ``tsne``, ``alignment``, ``gradcam``, ``ranklists``, ``missing``) and
``command`` (:func:`run_analyze`, which runs them in page order).
"""

from mambapro.reports.analysis.alignment import (
    OVERLAP_DEFINITION,
    PAIRS,
    alignment_stats,
    histogram_intersection,
    joint_bins,
    modality_pairs,
    pair_cosines,
)
from mambapro.reports.analysis.command import run_analyze
from mambapro.reports.analysis.features import AnalysisFeatures, extract_analysis_features
from mambapro.reports.analysis.gradcam import grad_cam_maps
from mambapro.reports.analysis.queries import per_query_ap
from mambapro.reports.analysis.tsne import DEFAULT_IDS, select_identities, tsne_embedding, tsne_rows

__all__ = [
    "DEFAULT_IDS",
    "OVERLAP_DEFINITION",
    "PAIRS",
    "AnalysisFeatures",
    "alignment_stats",
    "extract_analysis_features",
    "joint_bins",
    "grad_cam_maps",
    "modality_pairs",
    "histogram_intersection",
    "pair_cosines",
    "per_query_ap",
    "run_analyze",
    "select_identities",
    "tsne_embedding",
    "tsne_rows",
]
