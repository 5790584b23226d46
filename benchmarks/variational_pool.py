"""The variational pseudocoreset's model pool: the net's own width against a wider pool.

    python benchmarks/variational_pool.py                       # the panel's flat data sets
    python benchmarks/variational_pool.py --datasets signals --widths 256 512

On the public panel's flat data sets (the MNISTs as flat rows; ``SKPCORESET_DATA`` for them),
``PseudocoresetSynthesizer(divergence='variational')`` with every default, its 128-unit MLP
predicting, against the same with ``pool_module_params={'hidden_sizes': (w,)}``: pool
members w units wide. Forward KL is run beside them for reference. One seed per data set,
1 and 10 rows per class; test-set BMA accuracy and NLL, synthesis seconds measured in the same
run (ratios, not absolute times, are what to compare).
"""

from __future__ import annotations

import argparse
import warnings

import torch

from benchmarks import _panel_data
from benchmarks._common import write_results
from benchmarks.panel import scores
from skpcoreset.pseudocoreset import PseudocoresetSynthesizer

FLAT = ("digits", "breast_cancer", "wine", "mnist", "fashion_mnist", "noisy_tabular", "signals", "imbalanced")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=list(FLAT), choices=FLAT)
    parser.add_argument("--widths", nargs="+", type=int, default=[512])
    parser.add_argument("--n-per-class", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--no-forward-kl", action="store_true")
    parser.add_argument("--name", default="variational_pool")
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = [("variational", None)] + [("variational", width) for width in args.widths]
    if not args.no_forward_kl:
        configs.append(("forward_kl", None))
    rows = []
    for name in args.datasets:
        data = _panel_data.DATASETS[name](seed=0, quick=False)
        for n_per_class in args.n_per_class:
            for divergence, width in configs:
                extra = {} if width is None else {"pool_module_params": {"hidden_sizes": (width,)}}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    synthesizer = PseudocoresetSynthesizer(
                        divergence, n_per_class=n_per_class, random_state=0, **extra
                    ).fit(data.X_train, data.y_train)
                row = dict(
                    dataset=name,
                    n_per_class=n_per_class,
                    divergence=divergence,
                    pool_width=width or 128,
                    **scores(data.y_test, synthesizer.predict_proba(data.X_test)),
                    synthesis_seconds=synthesizer.fit_seconds_["synthesis"],
                    experts_seconds=synthesizer.fit_seconds_["experts"],
                    selected=synthesizer.selected_,
                )
                rows.append(row)
                print({k: round(v, 3) if isinstance(v, float) else v for k, v in row.items()}, flush=True)
    write_results(
        args.name,
        rows,
        notes="Panel data sets, seed 0, defaults; 'pool_width' 128 is the net's own module (pool_module_params=None). "
        "Forward KL for reference (its pool_width is its net's: it has no pool).",
    )


if __name__ == "__main__":
    main()
