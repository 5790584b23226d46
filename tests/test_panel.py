"""The public panel (benchmarks/panel.py): its data sets are seeded and it runs end to end on toy sizes."""

import json
import math
import sys
import warnings

import numpy as np
import pytest

from benchmarks import _common, _panel_data, panel

SYNTHETIC = [_panel_data.make_noisy_tabular, _panel_data.make_signals, _panel_data.make_imbalanced]


@pytest.mark.parametrize("make", SYNTHETIC, ids=lambda f: f.__name__)
def test_synthetic_sets_are_seeded_and_toy_sized(make):
    first, again, other = make(seed=0, quick=True), make(seed=0, quick=True), make(seed=1, quick=True)
    np.testing.assert_array_equal(first.X_train, again.X_train)
    np.testing.assert_array_equal(first.y_test, again.y_test)
    assert not np.allclose(first.X_train, other.X_train)
    assert (len(first.y_train), len(first.y_test)) == _panel_data.SIZES[True]
    assert first.X_train.dtype == np.float32 and first.X_train.ndim == 2


def test_noisy_tabular_flips_a_tenth_of_the_training_labels_only():
    data = _panel_data.make_noisy_tabular(seed=0, quick=True)
    assert data.flipped.mean() == pytest.approx(_panel_data.LABEL_NOISE)
    np.testing.assert_allclose(data.X_train.mean(axis=0), 0.0, atol=1e-5)  # standardised on the training part


def test_imbalanced_set_halves_each_class():
    counts = np.bincount(_panel_data.make_imbalanced(seed=0).y_train)
    np.testing.assert_allclose(counts[1:] / counts[:-1], 0.5, atol=0.1)


def test_noisy_sbm_has_the_requested_share_of_inter_class_edges():
    graph = _panel_data.make_noisy_sbm(seed=0)
    rows, cols = graph.adjacency.nonzero()
    assert abs(np.mean(graph.labels[rows] != graph.labels[cols]) - 0.4) < 0.05
    assert not (graph.train_mask & graph.val_mask).any() and not (graph.val_mask & graph.test_mask).any()
    assert (graph.adjacency != graph.adjacency.T).nnz == 0


def test_unknown_names_are_rejected():
    with pytest.raises(SystemExit):
        panel.parse_args(["--datasets", "no_such_set"])
    assert panel.parse_args(["--families", "bridge,rge", "--quick"]).families == ["bridge", "rge"]


def test_quick_panel_runs_every_family_and_writes_its_json(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    families = list(panel.FAMILIES)
    status = panel.main(["--quick", "--datasets", "noisy_tabular", "noisy_sbm", "--families", *families, "--name", "t"])
    assert status == 0
    results = json.loads((tmp_path / "t.json").read_text())["results"]
    expected = {(f, "noisy_sbm" if f in panel.GRAPH_FAMILIES else "noisy_tabular") for f in families}
    assert {(r["family"], r["dataset"]) for r in results["rows"]} == expected
    for row in results["rows"]:
        assert row["error"] is None, row["error"]
        assert row["wall_seconds"] > 0 and row["fit_seconds"]
        assert row["targets"] and all(ok in (True, False, None) for ok in row["targets"].values())
        scalars = [v for v in row["metrics"].values() if isinstance(v, float)]
        assert all(math.isfinite(v) for v in scalars if v == v)  # NaN only for an undefined gap share
    by_family = {r["family"]: r["metrics"] for r in results["rows"]}
    # better than chance on a binary set with 10% noisy labels, and flips found better than chance
    assert by_family["bridge"]["single_accuracy"] > 0.6 and by_family["laplace"]["map_accuracy"] > 0.6
    assert by_family["influence"]["n_flipped"] == 15 and by_family["influence"]["loss_roc_auc"] > 0.6
    assert by_family["rge"]["none_test_accuracy"] > 0.4  # 4 classes
    assert {s["family"] for s in results["summary"]} == set(families)
    assert "### targets met" in capsys.readouterr().out


def _warns(data, seed, rec):
    warnings.warn("benefit absent", UserWarning, stacklevel=2)
    return {"value": 1.0}


def _raises(data, seed, rec):
    raise ValueError("broken default")


def test_a_failing_row_is_recorded_and_the_panel_goes_on(tmp_path, monkeypatch):
    monkeypatch.setattr(_common, "RESULTS", tmp_path)
    monkeypatch.setattr(panel, "COLUMNS", {"warns": [("value", "value")], "raises": []})
    monkeypatch.setattr(
        panel, "FAMILIES", {"warns": (_warns, lambda m, own: {"ok": True}), "raises": (_raises, lambda m, own: {})}
    )
    argv = ["--quick", "--datasets", "wine", "--families", "warns", "raises", "--name", "t"]
    monkeypatch.setattr(sys, "argv", ["panel", *argv])
    assert panel.main(argv) == 1
    rows = {r["family"]: r for r in json.loads((tmp_path / "t.json").read_text())["results"]["rows"]}
    assert rows["warns"]["warnings"] == ["UserWarning: benefit absent"] and rows["warns"]["error"] is None
    assert "ValueError: broken default" in rows["raises"]["error"] and rows["raises"]["metrics"] == {}
