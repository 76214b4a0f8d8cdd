"""Result tables, JSON, CMC plots and the missing-modality table."""

from __future__ import annotations

import itertools
import json
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from mambapro.evaluation import (
    MISSING_SETTINGS,
    EvalResult,
    evaluate,
    evaluate_features,
    format_table,
    missing_modality_table,
    plot_cmc,
    plot_heatmap,
    re_ranking,
    save_results_json,
)
from mambapro.modalities import RGB_NI_TI, ModalitySet


def result(mAP: float = 0.75, r1: float = 0.5, max_rank: int = 10) -> EvalResult:
    cmc = np.clip(np.linspace(r1, 1.0, max_rank), 0, 1)
    return EvalResult(cmc=cmc, mAP=mAP, mINP=0.25, num_valid=4, num_skipped=1)


def test_format_table_in_percent() -> None:
    table = format_table({"full": result(), "-R": {"mAP": 0.123, "Rank-1": 0.5}}, title="demo")
    lines = table.splitlines()
    assert lines[0] == "demo"
    assert lines[2].split() == ["setting", "mAP", "Rank-1", "Rank-5", "Rank-10", "mINP"]
    full = lines[4].split()
    r5 = 100 * (0.5 + 4 * 0.5 / 9)  # linspace(0.5, 1, 10)[4]
    assert full == ["full", "75.0", "50.0", f"{r5:.1f}", "100.0", "25.0"]
    assert lines[5].split() == ["-R", "12.3", "50.0", "-", "-", "-"]


def test_format_table_rejects_bad_rows() -> None:
    with pytest.raises(ValueError, match="at least one row"):
        format_table({})
    with pytest.raises(ValueError, match="row 'x': mAP = 75.0 must be a fraction"):
        format_table({"x": {"mAP": 75.0}})
    with pytest.raises(ValueError, match="row 'x': expected keys"):
        format_table({"x": {"map": 0.5}})


def test_short_cmc_leaves_high_ranks_out() -> None:
    res = result(max_rank=3)
    assert set(res.as_dict()) == {"mAP", "Rank-1", "mINP"}
    assert format_table({"a": res}).splitlines()[3].split()[3:5] == ["-", "-"]


def test_save_results_json_round_trip(tmp_path: Path) -> None:
    res = result()
    path = save_results_json(tmp_path / "sub" / "results.json", {"full": res}, extra={"dataset": "RGBNT201"})
    data = json.loads(path.read_text())
    assert data["dataset"] == "RGBNT201"
    row = data["results"]["full"]
    assert row["mAP"] == 0.75 and row["Rank-1"] == 0.5 and row["num_skipped"] == 1
    np.testing.assert_allclose(row["cmc"], res.cmc)
    # A saved row can be tabulated again.
    assert "75.0" in format_table(data["results"])
    with pytest.raises(ValueError, match="'results' is reserved"):
        save_results_json(tmp_path / "x.json", {"full": res}, extra={"results": 1})


def test_plot_cmc_writes_a_png(tmp_path: Path) -> None:
    from matplotlib.image import imread

    path = plot_cmc(tmp_path / "cmc.png", {"full": result().cmc, "-R": result(0.5, 0.2)})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = imread(path)
    assert img.shape[:2] == (400, 600)
    # The two curves are drawn in different colours: the image is not blank.
    assert len(np.unique(img.reshape(-1, img.shape[-1]), axis=0)) > 10
    with pytest.raises(ValueError, match="curve 'bad' must hold fractions"):
        plot_cmc(tmp_path / "bad.png", {"bad": [0.5, 2.0]})


# ------------------------------------------------------------------- missing-modality table

MODALITIES = {"R": "RGB", "N": "NI", "T": "TI"}
NUM_IDS = 4


def code(modality: str, pid: int) -> int:
    """What each modality knows about an identity: RGB tells all four apart, NI only pairs
    {0, 1} and {2, 3}, TI none of them."""
    return {"RGB": pid, "NI": pid // 2, "TI": pid // 4}[modality]


def make_loader(
    pids: list[int], camid: int, missing: str, batch_size: int = 3, sceneid: int = 0
) -> list[dict]:
    """Batches in the data package's layout; a missing modality is all zeros."""
    zeroed = {MODALITIES[c] for c in missing} if missing != "full" else set()
    batches = []
    for s in range(0, len(pids), batch_size):
        p = torch.tensor(pids[s : s + batch_size])
        batch = {
            m: torch.zeros(len(p), 3, 2, 2)
            if m in zeroed
            else torch.stack([torch.full((3, 2, 2), code(m, int(i)) + 1.0) for i in p])
            for m in MODALITIES.values()
        }
        batch.update(pids=p, camids=torch.full_like(p, camid), sceneids=torch.full_like(p, sceneid))
        batches.append(batch)
    return batches


def fake_extract(loader: list[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A 'model' that one-hot encodes what each present modality shows (zeros if missing)."""
    feats, pids, cams, scenes = [], [], [], []
    for batch in loader:
        parts = []
        for m in MODALITIES.values():
            level = batch[m].mean(dim=(1, 2, 3)).round().long()  # 0 = missing, else code + 1
            onehot = torch.nn.functional.one_hot(level, NUM_IDS + 1)[:, 1:].float()
            parts.append(onehot)
        feats.append(torch.cat(parts, 1))
        pids.append(batch["pids"])
        cams.append(batch["camids"])
        scenes.append(batch["sceneids"])
    return torch.cat(feats), torch.cat(pids), torch.cat(cams), torch.cat(scenes)


def _setting_evaluator(query, gallery, q_cam=0, g_cam=1, g_scene=0, calls=None, **options):
    """``setting -> EvalResult`` over the fake loaders: extraction, then evaluate_features."""

    def run(missing: str):
        if calls is not None:
            calls.append(missing)
        q = fake_extract(make_loader(query, q_cam, missing))
        g = fake_extract(make_loader(gallery, g_cam, missing, sceneid=g_scene))
        return evaluate_features(q, g, **options)

    return run


def test_missing_modality_rows_match_hand_computed_values() -> None:
    # One query per identity (camera 0); two gallery images per identity (camera 1), in pid order.
    query, gallery = list(range(NUM_IDS)), [p for p in range(NUM_IDS) for _ in range(2)]
    calls: list[str] = []
    rows, table = missing_modality_table(_setting_evaluator(query, gallery, calls=calls, max_rank=5))
    assert calls == list(MISSING_SETTINGS)
    assert list(rows) == ["full", "-R", "-N", "-T", "-RN", "-RT", "-NT"]
    assert table.splitlines()[0] == "Missing-modality evaluation"

    # RGB present: every identity is distinct, the ranking is perfect.
    for label in ("full", "-N", "-T", "-NT"):
        assert rows[label].mAP == 1.0 and rows[label].mINP == 1.0 and rows[label].rank(1) == 1.0
    # NI (and TI) only: identities 0/1 and 2/3 coincide; ties go by gallery index, so pids 0
    # and 2 find their images at ranks 1, 2 and pids 1 and 3 at ranks 3, 4.
    pair_ap = (1 + Fraction(1, 2) * (Fraction(1, 3) + Fraction(2, 4))) / 2
    for label in ("-R", "-RT"):
        assert rows[label].mAP == pytest.approx(float(pair_ap))
        assert rows[label].mINP == pytest.approx(0.75)
        assert rows[label].rank(1) == 0.5 and rows[label].rank(5) == 1.0
    # TI only: all identical, pid p's images at ranks 2p + 1, 2p + 2.
    aps = [(Fraction(1, 2 * p + 1) + Fraction(2, 2 * p + 2)) / 2 for p in range(NUM_IDS)]
    assert rows["-RN"].mAP == pytest.approx(float(sum(aps) / NUM_IDS))
    assert rows["-RN"].mINP == pytest.approx(
        float(sum(Fraction(2, 2 * p + 2) for p in range(NUM_IDS)) / NUM_IDS)
    )
    assert rows["-RN"].rank(1) == 0.25 and rows["-RN"].rank(5) == 0.75


def test_evaluate_features_options_reach_the_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    import mambapro.evaluation.report as report

    # All from one camera: only the scene ids (query 0, gallery 1) make gallery images matches.
    query, gallery = list(range(NUM_IDS)) * 2, [p for p in range(NUM_IDS) for _ in range(3)]
    seen = []

    def spy(q, g, k1, k2, lambda_value, **kw):
        seen.append((k1, k2, lambda_value, kw))
        return re_ranking(q, g, k1, k2, lambda_value, **kw)

    monkeypatch.setattr(report, "re_ranking", spy)
    run = _setting_evaluator(
        query, gallery, g_cam=0, g_scene=1, rerank=True, k1=4, k2=2, use_scenes=True, metric="cosine"
    )
    out = missing_modality_table(run, settings=("full", "R"), title="t")
    assert list(out.rows) == ["full", "-R"] and out.table.startswith("t\n")
    # The distance metric reaches the re-ranking too (the copies of this loop once differed here).
    assert seen == [(4, 2, 0.3, {"metric": "cosine", "normalize": True})] * 2
    # The same numbers as calling re_ranking and evaluate (MSVR310 protocol) directly.
    q = fake_extract(make_loader(query, 0, "R"))
    g = fake_extract(make_loader(gallery, 0, "R", sceneid=1))
    direct = evaluate(re_ranking(q[0], g[0], 4, 2, metric="cosine"), q[1], g[1], q[2], g[2], q[3], g[3])
    assert out.rows["-R"].mAP == direct.mAP and out.rows["-R"].protocol == "msvr310"
    # Under the market protocol every gallery image shares the query's camera: all junk.
    with pytest.raises(ValueError, match="none of the 8 queries has a true match"):
        missing_modality_table(_setting_evaluator(query, gallery, g_cam=0), settings=("full",))


def test_missing_modality_bad_arguments() -> None:
    with pytest.raises(ValueError, match="unknown missing-modality setting 'RGB'"):
        missing_modality_table(lambda m: None, settings=("RGB",))
    with pytest.raises(ValueError, match="settings repeat"):
        missing_modality_table(lambda m: None, settings=("R", "-r"))
    with pytest.raises(TypeError, match="query features must be"):
        evaluate_features([], ([], [], [], None))


# --------------------------------------------------------------- other modality sets

RGB_NI = ModalitySet.of(("RGB", "NI"))
FOUR = ModalitySet.of(("RGB", "NI", "TI", "D"))


@pytest.mark.parametrize(
    ("modalities", "labels"),
    [
        (RGB_NI, ["full", "-R", "-N"]),
        (RGB_NI_TI, ["full", "-R", "-N", "-T", "-RN", "-RT", "-NT"]),
        (
            FOUR,
            ["full", "-R", "-N", "-T", "-D", "-RN", "-RT", "-RD", "-NT", "-ND", "-TD"]
            + ["-RNT", "-RND", "-RTD", "-NTD"],
        ),
    ],
)
def test_missing_modality_table_has_a_row_per_setting_of_the_set(modalities, labels) -> None:
    calls: list[str] = []

    def run(setting: str) -> EvalResult:
        calls.append(setting)
        return result(mAP=0.5 + 0.01 * len(calls))

    rows, table = missing_modality_table(run, modalities=modalities, title="t")
    assert calls == list(modalities.settings) and len(rows) == len(labels) == 2 ** len(modalities) - 1
    assert list(rows) == labels
    lines = table.splitlines()
    assert [line.split()[0] for line in lines[4:-1]] == labels  # title, rule, header, rule, rows, rule
    assert lines[-2].split()[1] == f"{100 * (0.5 + 0.01 * len(labels)):.1f}"


def test_missing_modality_table_refuses_a_setting_of_another_set() -> None:
    with pytest.raises(ValueError, match=r"setting 'T'; choose one of: full, R, N \("):
        missing_modality_table(lambda m: result(), settings=("full", "T"), modalities=RGB_NI)
    # Letters of the set's own alphabet: D is depth in the four-modality set.
    rows, _ = missing_modality_table(lambda m: result(), settings=("full", "d", "RND"), modalities=FOUR)
    assert list(rows) == ["full", "-D", "-RND"]


@pytest.mark.parametrize("modalities", [RGB_NI, RGB_NI_TI, FOUR])
def test_cross_matrix_text_and_heat_map_follow_the_set(modalities, tmp_path: Path) -> None:
    from matplotlib.image import imread

    from mambapro.retrieval.testing import format_cross_matrix

    settings = modalities.settings
    pairs = itertools.product(settings, settings)
    matrix = {(q, g): result(mAP=0.01 * (i + 1)) for i, (q, g) in enumerate(pairs)}
    text = format_cross_matrix(matrix, "mAP", modalities)
    lines = text.splitlines()
    labels = [modalities.present_label(s) for s in settings]
    assert len(lines) == 2 + len(settings)
    assert lines[0].split()[4:] == labels  # after "mAP, query \\ gallery"
    assert [line.split()[0] for line in lines[2:]] == labels
    n = len(settings)
    assert lines[2].split()[1:] == [f"{i:.1f}" for i in range(1, n + 1)]  # row full: the first n cells
    if modalities == RGB_NI:
        assert labels == ["RGB+NI", "NI", "RGB"]
    path = plot_heatmap(
        tmp_path / "h.png", [[matrix[(q, g)].mAP for g in settings] for q in settings], labels, labels
    )
    # The figure grows with the settings.
    assert imread(path).shape[1] == pytest.approx(100 * (1.2 + 0.9 * n), abs=1)
