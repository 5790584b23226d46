from skpcoreset.graph import SGCClassifier

TINY_PARAMS = {
    "SGCClassifier": {"weight_decay": 1e-3, "max_iter": 50},
    "GCNClassifier": {"n_hidden": 4, "max_iter": 20},
    "RepulsiveEdgeEliminator": {"estimator": SGCClassifier(weight_decay=1e-2, max_iter=50), "max_rounds": 2},
}

_UNLABELED_MARKER = (
    "y = -1 marks unlabeled nodes (the sklearn.semi_supervised convention), so the "
    "check's {-1, 1} target leaves a single labeled class."
)
EXPECTED_FAILED_CHECKS = {
    "SGCClassifier": {"check_classifiers_classes": _UNLABELED_MARKER},
    "GCNClassifier": {"check_classifiers_classes": _UNLABELED_MARKER},
}

_GRAPH_TO_GRAPH = (
    "RepulsiveEdgeEliminator is a graph-to-graph transformer: fit needs adjacency= and "
    "val_mask= and transform maps an adjacency, not the (X, y) table the generic check passes; "
    "tests/test_rge.py checks this contract on graphs instead."
)
EXPECTED_FAILED_CHECKS["RepulsiveEdgeEliminator"] = dict.fromkeys(
    [
        "check_fit_score_takes_y",
        "check_estimators_overwrite_params",
        "check_dont_overwrite_parameters",
        "check_estimators_fit_returns_self",
        "check_readonly_memmap_input",
        "check_n_features_in_after_fitting",
        "check_positive_only_tag_during_fit",
        "check_estimators_dtypes",
        "check_complex_data",
        "check_dtype_object",
        "check_estimators_empty_data_messages",
        "check_pipeline_consistency",
        "check_estimators_nan_inf",
        "check_estimator_sparse_tag",
        "check_estimator_sparse_array",
        "check_estimator_sparse_matrix",
        "check_estimators_pickle",
        "check_f_contiguous_array_estimator",
        "check_transformer_data_not_an_array",
        "check_transformer_general",
        "check_transformer_preserve_dtypes",
        "check_methods_sample_order_invariance",
        "check_methods_subset_invariance",
        "check_fit2d_1sample",
        "check_fit2d_1feature",
        "check_dict_unchanged",
        "check_fit_idempotent",
        "check_fit_check_is_fitted",
        "check_n_features_in",
        "check_fit2d_predict1d",
    ],
    _GRAPH_TO_GRAPH,
)

# fit(X, y) alone is not a complete call for RGE, so the shared bad-input matrix does not apply
NOT_TABULAR = {"RepulsiveEdgeEliminator"}
