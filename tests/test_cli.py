import csv

import numpy as np
import pytest

from skpcoreset.cli import EXIT_DATA, main


@pytest.fixture(scope="module")
def tiny_npz(tmp_path_factory):
    """A 10-class 8x8 grey image set in the shared-data layout (uint8 NHW)."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = (digits.images * 16).clip(0, 255).astype(np.uint8)
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    np.savez(
        path, X_train=images[:400], y_train=digits.target[:400], X_test=images[400:600], y_test=digits.target[400:600]
    )
    return path


def test_demo_prints_a_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "accuracy" in out and "nll" in out


def test_synthesize_writes_the_coreset(tiny_npz, tmp_path, capsys):
    out = tmp_path / "coreset.npz"
    args = [
        "synthesize",
        "--data",
        str(tiny_npz),
        "--out",
        str(out),
        "--ipc",
        "1",
        "--iterations",
        "5",
        "--verbose",
        "0",
    ]
    assert main(args) == 0
    with np.load(out) as coreset:
        assert coreset["X"].shape == (10, 1, 8, 8) and sorted(coreset["y"].tolist()) == list(range(10))
    assert "Bayesian model average" in capsys.readouterr().out


def test_influence_writes_scores(tiny_npz, tmp_path):
    out = tmp_path / "scores.csv"
    args = [
        "influence",
        "--data",
        str(tiny_npz),
        "--out",
        str(out),
        "--members",
        "2",
        "--method",
        "loss",
        "--verbose",
        "0",
    ]
    assert main(args) == 0
    rows = list(csv.DictReader(out.open()))
    assert len(rows) == 400 and set(rows[0]) == {"index", "label", "self_influence", "flagged"}
    # issue 18: the flags are the training rows' own (their labels), the largest self-influences
    flagged = np.array([int(r["flagged"]) for r in rows], dtype=bool)
    scores = np.array([float(r["self_influence"]) for r in rows])
    assert 0 < flagged.sum() < 400
    assert scores[flagged].min() > scores[~flagged].max()


def test_missing_data_is_a_clear_error(tmp_path, capsys):
    assert main(["influence", "--data", str(tmp_path / "nope.npz"), "--out", str(tmp_path / "s.csv")]) == EXIT_DATA
    assert "no such file" in capsys.readouterr().err


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["synthesize"])
    assert exc.value.code == 2


def test_channels_first_images_are_read_as_channels_first(tiny_npz, tmp_path, capsys):
    with np.load(tiny_npz) as data:
        arrays = {key: data[key] for key in data.files}
    first = tmp_path / "nchw.npz"
    np.savez(first, **{k: (v[:, None] if k.startswith("X") else v) for k, v in arrays.items()})  # (N, 1, 8, 8)
    out = tmp_path / "coreset.npz"
    args = ["synthesize", "--data", str(first), "--out", str(out), "--ipc", "1", "--iterations", "2"]
    assert main(args) == 0
    assert "1x8x8 (channels x height x width)" in capsys.readouterr().out
    with np.load(out) as coreset:
        assert coreset["X"].shape == (10, 1, 8, 8)


def test_ambiguous_layout_is_an_error_that_names_it(tmp_path, capsys):
    path = tmp_path / "ambiguous.npz"
    X = np.zeros((20, 3, 8, 3), dtype=np.uint8)
    np.savez(path, X_train=X, y_train=np.arange(20) % 2, X_test=X, y_test=np.arange(20) % 2)
    assert main(["influence", "--data", str(path), "--out", str(tmp_path / "s.csv")]) == EXIT_DATA
    assert "--layout" in capsys.readouterr().err


def test_help_shows_the_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["synthesize", "--help"])
    help_text = capsys.readouterr().out
    assert "(default: 10)" in help_text and "(default: forward_kl)" in help_text
