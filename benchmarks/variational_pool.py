"""The variational pseudocoreset's model pool: the net's own width against wider pools.

    python benchmarks/variational_pool.py                       # the panel's flat data sets
    python benchmarks/variational_pool.py --datasets signals --widths 256 512 --inner-steps 20

On the public panel's flat data sets (the MNISTs as flat rows; ``SKPCORESET_DATA`` for them),
``PseudocoresetSynthesizer(divergence='variational')`` with the default 128-unit MLP
predicting, its pool at the net's own width (``pool_module_params=None``, ``inner_steps=20``:
the defaults), with ``pool_module_params='auto'`` (512 units, 10 steps per visit), and with
pools of ``--widths`` units (``--inner-steps`` each visit). Forward KL is run beside them for
reference. One seed per data set, 1 and 10 rows per class; test-set BMA accuracy and NLL,
synthesis seconds measured in the same run (compare ratios, not absolute times).
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
    parser.add_argument("--widths", nargs="*", type=int, default=[])
    parser.add_argument("--n-per-class", nargs="+", type=int, default=[1, 10])
    parser.add_argument("--no-forward-kl", action="store_true")
    parser.add_argument("--inner-steps", type=int, default=20, help="inner_steps of the --widths pools")
    parser.add_argument("--name", default="variational_pool")
    args = parser.parse_args()
    torch.set_num_threads(1)
    configs = [("variational", "net", {"pool_module_params": None, "inner_steps": 20})]
    configs.append(("variational", "auto", {"pool_module_params": "auto"}))
    for width in args.widths:
        configs.append(
            (
                "variational",
                str(width),
                {"pool_module_params": {"hidden_sizes": (width,)}, "inner_steps": args.inner_steps},
            )
        )
    if not args.no_forward_kl:
        configs.append(("forward_kl", "-", {}))
    rows = []
    for name in args.datasets:
        data = _panel_data.DATASETS[name](seed=0, quick=False)
        for n_per_class in args.n_per_class:
            for divergence, pool, extra in configs:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    synthesizer = PseudocoresetSynthesizer(
                        divergence, n_per_class=n_per_class, random_state=0, **extra
                    ).fit(data.X_train, data.y_train)
                row = dict(
                    dataset=name,
                    n_per_class=n_per_class,
                    divergence=divergence,
                    pool=pool,
                    pool_module_params=str(getattr(synthesizer, "pool_module_params_", None)),
                    inner_steps=synthesizer.inner_steps_,
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
        notes="Panel data sets, seed 0, defaults otherwise. pool 'net': the net's own module at inner_steps=20 "
        "(the defaults); 'auto': pool_module_params='auto'; a number: a pool of that many units. "
        "Forward KL for reference (it has no pool).",
    )


if __name__ == "__main__":
    main()
