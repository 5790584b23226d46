from skpcoreset import make_net
from skpcoreset.pseudocoreset import PosteriorSampler

# Experts: one 2-epoch MLP; 5 synthesis steps; 2 posterior samples of 60 steps.
TINY_PARAMS = {
    "PseudocoresetSynthesizer": {
        "n_per_class": 2,
        "net": make_net(lr=0.1, batch_size=32, module__hidden_sizes=(16,)),
        "n_experts": 1,
        "expert_epochs": 2,
        "target_epochs": 1,
        "n_iterations": 5,
        "inner_steps": 3,
        "n_divergence_samples": 2,
        "n_measurement": 16,
        "posterior": PosteriorSampler(n_samples=2, steps=60, lr=0.1),
        # 5 steps cannot beat the random start: the benefit check would warn on every fit (it is
        # exercised by the variational sklearn checks and the benefit tests of test_pseudocoreset.py)
        "validation_fraction": 0.0,
    },
}

EXPECTED_FAILED_CHECKS = {
    "PseudocoresetSynthesizer": {
        "check_samplers_pandas_sparse": (
            "sparse input is rejected with a TypeError (the coreset is dense synthetic data), "
            "and a DataFrame of sparse columns is sparse input"
        ),
    },
}
