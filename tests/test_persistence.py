"""Safe persistence: skops files hold only types skops audits, and no bytes that are ever unpickled.

Every public estimator is fitted once (tiny configurations from ``tests/params``; graph
estimators on a small stochastic block model) and then saved, tampered with, and loaded.
"""

import copy
import importlib
import inspect
import io
import json
import os
import pickle
import shlex
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import BaseEstimator, clone
from torch import nn

import skpcoreset._persist as persist
from skpcoreset import make_net
from skpcoreset.ensemble import DeepEnsembleClassifier
from skpcoreset.posthoc.laplace import ConnectivityLaplaceClassifier
from tests.test_common import ESTIMATORS

sio = pytest.importorskip("skops.io")

NAMES = [type(estimator).__name__ for estimator in ESTIMATORS]
CPU = torch.device("cpu")


# -- fitting every estimator once --------------------------------------------------------------
def _takes(estimator, argument: str) -> bool:
    return argument in inspect.signature(type(estimator).fit).parameters


@pytest.fixture(scope="module")
def graph():
    """A small stochastic block model: features, labels (-1 unlabeled), adjacency, validation mask."""
    rng = np.random.RandomState(0)
    n, n_classes = 150, 3
    y = rng.randint(n_classes, size=n)
    X = rng.normal(size=(n, 8)) + 0.7 * np.eye(n_classes, 8)[y]
    upper = np.triu(rng.rand(n, n) < np.where(y[:, None] == y[None, :], 0.08, 0.03), 1)
    A = sp.csr_matrix((upper | upper.T).astype(float))
    labeled = np.arange(len(y)) < 90
    val_mask = (np.arange(len(y)) >= 45) & labeled
    return X, np.where(labeled, y, -1), A, val_mask


def _fit_and_outputs(estimator, digits_small, graph):
    """The fitted estimator and a function giving the outputs a round trip must keep identical."""
    estimator = clone(estimator)
    if _takes(estimator, "val_mask"):
        X, y, A, val_mask = graph
        model = estimator.fit(X, y, adjacency=A, val_mask=val_mask)
        return model, lambda m: {"transform": m.transform(A).toarray()}
    if _takes(estimator, "adjacency"):
        X, y, A, _ = graph
        model = estimator.fit(X, y, adjacency=A)
        return model, lambda m: {"predict_proba": m.predict_proba(X, adjacency=A)}
    X, y = digits_small
    if hasattr(estimator, "fit_resample"):
        X_coreset, y_coreset = estimator.fit_resample(X, y)
        coreset = {"fit_resample X": X_coreset, "fit_resample y": y_coreset}
        return estimator, lambda m: {
            "fit_resample X": m.coreset_X_.reshape(len(X_coreset), -1),
            "fit_resample y": m.coreset_y_,
            "predict_proba": m.predict_proba(X),
            **({} if m is not estimator else coreset),
        }
    model = estimator.fit(X, y)
    method = "predict_proba" if hasattr(model, "predict_proba") else "score_samples"
    return model, lambda m: {method: getattr(m, method)(X)}


@pytest.fixture(scope="module")
def fitted(digits_small, graph):
    cache = {}

    def get(name):
        if name not in cache:
            estimator = ESTIMATORS[NAMES.index(name)]
            cache[name] = _fit_and_outputs(estimator, digits_small, graph)
        return cache[name]

    return get


def _assert_same_outputs(restored, model, outputs):
    expected, got = outputs(model), outputs(restored)
    assert expected.keys() <= got.keys()
    for key, value in expected.items():
        np.testing.assert_array_equal(got[key], value, err_msg=key)


def _dumps(model, via: str) -> bytes:
    return pickle.dumps(model) if via == "pickle" else sio.dumps(model)


def _loads(blob: bytes, via: str):
    if via == "pickle":
        return pickle.loads(blob)
    return sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))


# -- reading and rewriting skops files ---------------------------------------------------------
def _read(blob: bytes) -> tuple[dict, dict[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(blob)) as archive:
        files = {name: archive.read(name) for name in archive.namelist()}
    return json.loads(files.pop("schema.json")), files


def _write(schema: dict, files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("schema.json", json.dumps(schema))
        for name, data in files.items():
            archive.writestr(name, data)
    return out.getvalue()


def _nodes(tree):
    """Every node (a dict with a ``__loader__``) of a skops schema."""
    if isinstance(tree, dict):
        if "__loader__" in tree:
            yield tree
        for value in tree.values():
            yield from _nodes(value)
    elif isinstance(tree, list):
        for value in tree:
            yield from _nodes(value)


class _RunsCommand:
    """Unpickling this runs a shell command that creates ``marker``."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(self.marker)}",)


class _BytesNodes:
    """Makes BytesNodes holding one payload, with ids no genuine node has."""

    def __init__(self, files: dict, payload: bytes):
        self.files, self.payload, self.count = files, payload, 0

    def __call__(self) -> dict:
        self.count += 1
        name = f"payload-{self.count}.bin"
        self.files[name] = self.payload
        return {
            "__class__": "bytes",
            "__module__": "builtins",
            "__loader__": "BytesNode",
            "file": name,
            "__id__": 10**15 + self.count,
        }


def _estimator_contents(schema):
    """The attribute dicts of every skpcoreset estimator in a schema (the top one and nested ones)."""
    for node in _nodes(schema):
        content = node.get("content")
        if node["__loader__"] == "ObjectNode" and isinstance(content, dict) and content.get("__loader__") == "DictNode":
            if persist.FORMAT_KEY in content["content"] or persist.LEGACY_BLOB_KEY in content["content"]:
                yield content


def _tamper_bytes(schema, files, new_bytes):
    """Every bytes payload, and every array a packed tensor holds, becomes the command."""
    for node in list(_nodes(schema)):
        if node["__loader__"] in ("BytesNode", "BytearrayNode"):
            files[node["file"]] = new_bytes.payload
        if node["__loader__"] == "ObjectNode" and node["__class__"] == "PackedTensor":
            arrays = node["content"]["content"]["arrays"]
            arrays["content"] = [new_bytes() for _ in arrays["content"]]


def _tamper_legacy(schema, files, new_bytes):
    """Every estimator gets an old-format blob that is the command."""
    for content in _estimator_contents(schema):
        content["content"][persist.LEGACY_BLOB_KEY] = new_bytes()
        content["key_types"]["content"].append({"__class__": "str", "__module__": "builtins", "__loader__": "TypeNode"})


def _tamper_arrays(schema, files, new_bytes):
    """Every .npy file becomes the pickled command."""
    for name in files:
        if name.endswith(".npy"):
            files[name] = new_bytes.payload


TAMPERINGS = {"bytes": _tamper_bytes, "legacy_blob": _tamper_legacy, "npy_files": _tamper_arrays}


def test_the_payload_runs_a_command_when_unpickled(tmp_path):
    """The tampering tests would prove nothing if their payload did nothing."""
    marker = tmp_path / "ran"
    pickle.loads(pickle.dumps(_RunsCommand(marker)))
    assert marker.exists()


# -- the acceptance tests ----------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_skops_file_holds_no_bytes_and_no_unpickling_type(name, fitted):
    model, _ = fitted(name)
    blob = sio.dumps(model)
    schema, _ = _read(blob)
    loaders = {node["__loader__"] for node in _nodes(schema)}
    assert not loaders & {"BytesNode", "BytearrayNode"}
    from skorch import NeuralNet

    for type_name in sio.get_untrusted_types(data=blob):
        module_name, _, attribute = type_name.rpartition(".")
        cls = getattr(importlib.import_module(module_name), attribute)
        # skorch nets unpickle bytes in __setstate__, tensors and storages are torch's pickles
        assert not (isinstance(cls, type) and issubclass(cls, (NeuralNet, torch.Tensor))), type_name
        assert not type_name.startswith(("torch.storage", "torch._utils", "builtins.")), type_name


@pytest.mark.parametrize("tampering", sorted(TAMPERINGS))
@pytest.mark.parametrize("name", NAMES)
def test_tampered_skops_file_never_runs_its_payload(name, tampering, fitted, tmp_path):
    model, _ = fitted(name)
    blob = sio.dumps(model)
    marker = tmp_path / "ran"
    schema, files = _read(blob)
    TAMPERINGS[tampering](schema, files, _BytesNodes(files, pickle.dumps(_RunsCommand(marker))))
    tampered = _write(schema, files)
    trusted = sio.get_untrusted_types(data=tampered)
    assert set(trusted) <= set(sio.get_untrusted_types(data=blob))  # tampering added nothing to audit
    if tampering == "legacy_blob":
        with pytest.raises(ValueError, match="before safe persistence.*Refit"):
            sio.loads(tampered, trusted=trusted)
    else:
        try:
            sio.loads(tampered, trusted=trusted)
        except (ValueError, TypeError, RuntimeError):
            pass  # refusing the tampered parts is as good as ignoring them
    assert not marker.exists()


@pytest.mark.parametrize("via", ["skops", "pickle"])
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_keeps_outputs_identical(name, via, fitted):
    model, outputs = fitted(name)
    restored = _loads(_dumps(model, via), via)
    assert type(restored) is type(model)
    _assert_same_outputs(restored, model, outputs)


@pytest.mark.parametrize("via", ["skops", "pickle"])
@pytest.mark.parametrize("name", NAMES)
def test_cuda_fitted_estimator_loads_on_a_cpu_only_machine(name, via, fitted, monkeypatch):
    """Saved as if every tensor and ``device_`` lived on cuda:0, loaded where CUDA is absent."""
    model, outputs = fitted(name)
    model.device_ = torch.device("cuda", 0)
    try:
        with monkeypatch.context() as patch:
            patch.setattr(persist, "_device_name", lambda tensor: "cuda:0")
            blob = _dumps(model, via)
    finally:
        model.device_ = CPU
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.warns(UserWarning, match=f"{name} was fitted on cuda:0, which is not available here"):
        restored = _loads(blob, via)
    assert restored.device_ == CPU
    _assert_same_outputs(restored, model, outputs)


# -- what a user trusts ------------------------------------------------------------------------
class UserMLP(nn.Module):
    """A user's own module: constructor arguments, a buffer and a plain attribute."""

    def __init__(self, input_shape, n_classes, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(input_shape)), width), nn.Tanh())
        self.head = nn.Linear(width, n_classes)
        self.register_buffer("temperature", torch.tensor(2.0))
        self.label = "user"

    def forward(self, X):
        return self.head(self.body(X)) / self.temperature


@pytest.fixture(scope="module")
def user_ensemble(digits_small):
    net = make_net(UserMLP, max_epochs=3, lr=1e-2, batch_size=32, module__width=8)
    return DeepEnsembleClassifier(net, n_members=2, random_state=0).fit(*digits_small)


def test_untrusted_types_of_an_ensemble_of_a_user_module(user_ensemble, digits_small):
    blob = sio.dumps(user_ensemble)
    untrusted = set(sio.get_untrusted_types(data=blob))
    user_class = f"{UserMLP.__module__}.{UserMLP.__qualname__}"
    assert {
        "skpcoreset.ensemble._deep_ensemble.DeepEnsembleClassifier",
        "skpcoreset._persist.PackedNet",
        "skpcoreset._persist.PackedModule",
        "skpcoreset._persist.PackedTensor",
        user_class,
        "torch.nn.modules.linear.Linear",
        "torch.nn.modules.loss.CrossEntropyLoss",
        "torch.optim.adam.Adam",
    } <= untrusted
    assert not {t for t in untrusted if t.startswith(("skorch.net", "skorch.classifier"))}
    restored = sio.loads(blob, trusted=sorted(untrusted))
    X, _ = digits_small
    np.testing.assert_array_equal(restored.predict_proba(X), user_ensemble.predict_proba(X))
    module = restored.members_[0].module_
    assert isinstance(module, UserMLP) and module.label == "user" and float(module.temperature) == 2.0
    assert all(isinstance(p, nn.Parameter) and p.requires_grad for p in module.parameters())
    assert restored.members_[0].optimizer_.param_groups[0]["params"][0] is next(module.parameters())


def test_skorch_net_device_falls_back_to_the_cpu(user_ensemble, monkeypatch, digits_small):
    members = user_ensemble.members_
    for member in members:
        member.device = "cuda:0"
    try:
        blob = sio.dumps(user_ensemble)
    finally:
        for member in members:
            member.device = "cpu"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    restored = sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))
    assert [member.device for member in restored.members_] == ["cpu", "cpu"]
    X, _ = digits_small
    np.testing.assert_array_equal(restored.predict_proba(X), user_ensemble.predict_proba(X))


# -- files written before this format ----------------------------------------------------------
def _old_getstate(self):
    """``__getstate__`` as skpcoreset 0.1.0 wrote it before safe persistence."""
    state = dict(BaseEstimator.__getstate__(self))
    keys = [k for k in state if k.endswith("_") and not k.startswith("__") and k != "device_"]
    state[persist.LEGACY_BLOB_KEY] = pickle.dumps({k: state.pop(k) for k in keys})
    return state


def test_old_pickle_fails_clearly_and_loads_on_request(fitted, monkeypatch, digits_small):
    model, outputs = fitted("DeepEnsembleClassifier")
    with monkeypatch.context() as patch:
        patch.setattr(DeepEnsembleClassifier, "__getstate__", _old_getstate)
        old = pickle.dumps(model)
    with pytest.raises(ValueError, match="before safe persistence.*Refit.*load_legacy_pickle"):
        pickle.loads(old)
    restored = persist.load_legacy_pickle(io.BytesIO(old))
    _assert_same_outputs(restored, model, outputs)
    resaved = pickle.dumps(restored)
    assert persist.LEGACY_BLOB_KEY.encode() not in resaved
    _assert_same_outputs(pickle.loads(resaved), model, outputs)


@pytest.mark.parametrize("name", NAMES)
def test_old_skops_file_is_refused_without_unpickling_its_blob(name, fitted, monkeypatch, tmp_path):
    model, _ = fitted(name)
    with monkeypatch.context() as patch:
        patch.setattr(type(model), "__getstate__", _old_getstate)
        old = sio.dumps(model)
    marker = tmp_path / "ran"
    schema, files = _read(old)
    payload = pickle.dumps(_RunsCommand(marker))
    blobs = [
        content["content"][persist.LEGACY_BLOB_KEY]
        for content in _estimator_contents(schema)
        if persist.LEGACY_BLOB_KEY in content["content"]
    ]
    assert blobs
    for blob in blobs:
        files[blob["file"]] = payload
    tampered = _write(schema, files)
    with pytest.raises(ValueError, match=f"This {name} was saved by skpcoreset 0.1.0 before safe persistence"):
        sio.loads(tampered, trusted=sio.get_untrusted_types(data=tampered))
    assert not marker.exists()


def test_newer_format_is_refused():
    with pytest.raises(ValueError, match="format 99.*Upgrade"):
        persist.unpack_torch_state({persist.FORMAT_KEY: 99}, owner="Model")


# -- the packed forms themselves ---------------------------------------------------------------
class Holder:
    """A plain object holding torch state, as skpcoreset's scorers and curvature objects do."""

    def __init__(self, **attributes):
        self.__dict__.update(attributes)


def _tied_state():
    encoder = nn.Linear(4, 3)
    twin = nn.Linear(4, 3)
    twin.weight = encoder.weight  # tied weights
    encoder.dtype = torch.float64
    frozen = nn.Linear(2, 2).requires_grad_(False)
    model = nn.ModuleDict({"encoder": encoder, "twin": twin, "again": encoder, "frozen": frozen})
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sparse = torch.sparse_coo_tensor(
        torch.tensor([[0, 2], [1, 0]]), torch.tensor([1.5, -2.0]), (3, 2), check_invariants=True
    ).coalesce()
    holder = Holder(model=model, optimizer=optimizer, weights=[encoder.weight, encoder.weight])
    return {
        "model_": model,
        "holder_": holder,
        "half_": torch.arange(6, dtype=torch.bfloat16).reshape(2, 3).T,
        "sparse_": sparse,
        "grad_": torch.ones(2, requires_grad=True),
        "labels_": np.arange(3),
    }


@pytest.mark.parametrize("via", ["skops", "pickle"])
def test_packed_state_keeps_identity_types_and_values(via):
    state = _tied_state()
    packed = persist.pack_torch_state(state)
    blob = pickle.dumps(packed) if via == "pickle" else sio.dumps(packed)
    loaded = pickle.loads(blob) if via == "pickle" else sio.loads(blob, trusted=sio.get_untrusted_types(data=blob))
    restored = persist.unpack_torch_state(loaded, owner="Holder")
    model, holder = restored["model_"], restored["holder_"]
    assert model["again"] is model["encoder"] and holder.model is model
    assert model["twin"].weight is model["encoder"].weight
    assert holder.weights[0] is holder.weights[1] is model["encoder"].weight
    assert holder.optimizer.param_groups[0]["params"][0] is model["encoder"].weight
    assert holder.optimizer.defaults["momentum"] == 0.9 and holder.optimizer.param_groups[0]["lr"] == 0.5
    assert model["encoder"].dtype is torch.float64
    assert not any(p.requires_grad for p in model["frozen"].parameters())
    for key in ("half_", "sparse_", "grad_"):
        assert restored[key].dtype == state[key].dtype and restored[key].requires_grad == state[key].requires_grad
    assert torch.equal(restored["half_"], state["half_"])
    assert torch.equal(restored["sparse_"].to_dense(), state["sparse_"].to_dense())
    for name, value in state["model_"].state_dict().items():
        assert torch.equal(model.state_dict()[name], value), name
    np.testing.assert_array_equal(restored["labels_"], state["labels_"])


def _unpack(value):
    return persist.unpack_torch_state({"x_": value}, owner="Model")["x_"]


def test_unpacking_checks_what_a_file_names():
    with pytest.raises(TypeError, match="not a class of skorch"):
        _unpack(persist.PackedNet("not_a_module_here:Net", {}))  # refused before any import
    with pytest.raises(TypeError, match="not a skorch NeuralNet"):
        _unpack(persist.PackedNet(dict, {}))
    with pytest.raises(TypeError, match="not a subclass of Module"):
        _unpack(persist.PackedModule(os.system, {}))
    with pytest.raises(TypeError, match="not a subclass of Optimizer"):
        _unpack(persist.PackedOptimizer(Holder, {}, []))
    with pytest.raises(TypeError, match="not a class"):
        _unpack(persist.PackedObject(os.system, {}))
    packed = persist.PackedTensor(torch.ones(3), "cpu")
    packed.dtype = "no_such_dtype"
    with pytest.raises(TypeError, match="unknown torch dtype"):
        _unpack(packed)
    packed = persist.PackedTensor(torch.ones(3), "cpu")
    packed.arrays = (pickle.dumps(_RunsCommand("never")),)
    with pytest.raises(TypeError, match="numpy array"):
        _unpack(packed)
    sparse = torch.sparse_coo_tensor(torch.tensor([[0, 1]]), torch.tensor([1.0, 2.0]), (2,), check_invariants=True)
    packed = persist.PackedTensor(sparse, "cpu")
    packed.arrays = (np.array([[0, 7]]), packed.arrays[1])
    with pytest.raises(RuntimeError, match="size is inconsistent with indices"):
        _unpack(packed)


def test_unpacking_leaves_the_callers_random_stream_alone(user_ensemble):
    blob = pickle.dumps(user_ensemble)
    torch.manual_seed(3)
    expected = torch.rand(3)
    torch.manual_seed(3)
    pickle.loads(blob)  # rebuilding a skorch net initialises a throwaway module
    np.testing.assert_array_equal(torch.rand(3), expected)


# -- compact curvature -------------------------------------------------------------------------
def test_full_curvature_pickles_its_upper_triangle(fitted):
    model, _ = fitted("ConnectivityLaplaceClassifier")
    curvature = model.curvature_
    size = len(curvature.matrix)
    restored = pickle.loads(pickle.dumps(curvature))
    assert torch.equal(restored.matrix, curvature.matrix)
    assert len(pickle.dumps(curvature.matrix)) > 0.9 * size * size * 8
    assert len(pickle.dumps(curvature)) < 0.55 * size * size * 8 + 2000


def test_rto_curvature_round_trips_without_its_noise(digits_small):
    X, y = digits_small
    net = make_net(max_epochs=3, lr=1e-2, batch_size=32, module__hidden_sizes=(8,))
    model = ConnectivityLaplaceClassifier(
        net, hessian_structure="rto", n_samples=4, n_sharpness_probes=0, random_state=0
    ).fit(X, y)
    state = model.curvature_.__getstate__()
    assert not {"ggn", "data_noise", "prior_noise"} & state.keys()
    for via in ("pickle", "skops"):
        restored = _loads(_dumps(model, via), via)
        np.testing.assert_array_equal(restored.predict_proba(X), model.predict_proba(X))
    assert copy.deepcopy(model).curvature_._solved.keys() == model.curvature_._solved.keys()
