"""DiverseDistiller: distil an ensemble into one network (or a BatchEnsemble) without losing
what makes the ensemble good -- the disagreement between its members."""

from __future__ import annotations

import itertools
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, _fit_context, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet

from .._base import TorchEstimatorMixin, seed_from_random_state
from .._skorch import build_member_nets, train_spec_from_net
from .._train import Trainer, predict_batched, train_members
from ..augment import NAMED_AUGMENTATIONS, resolve_augmentation
from ..ensemble import DeepEnsembleClassifier
from ..metrics import accuracy, expected_calibration_error, negative_log_likelihood
from ..nets._batchensemble import BatchEnsembleNet
from ..nets._batchnorm import recompute_batchnorm
from ._perturbations import GRADIENT_PERTURBATIONS, PERTURBATIONS, PerturbationConfig
from ._students import (
    STUDENT_KINDS,
    build_student,
    distillation_loss,
    latent_factor_penalty,
    student_member_logits,
)
from ._teachers import resolve_teacher, teacher_is_differentiable

__all__ = ["DiverseDistiller"]


class DistillationTrainer(Trainer):
    """The shared loop with the distillation objective as its ``loss`` rung.

    Each batch is augmented (when ``augment`` is set) and then perturbed on the device, the
    teacher labels the perturbed batch, and the student sees the clean (augmented) and
    perturbed batches in one forward pass. Without perturbation and augmentation the
    teacher's probabilities never change; they are precomputed once and arrive as a third
    batch tensor.
    """

    def __init__(
        self,
        student,
        spec,
        *,
        teacher,
        perturbation: str | None,
        config: PerturbationConfig,
        alpha: float,
        temperature: float,
        latent_penalty: float,
        **kwargs,
    ):
        super().__init__(student, spec, **kwargs)
        self.teacher = teacher
        self.perturb = PERTURBATIONS.get(perturbation)
        self.config = config
        self.alpha = alpha
        self.temperature = temperature
        self.latent_penalty = latent_penalty

    def parameter_groups(self) -> list[dict]:
        """Rank-one factors get no weight decay (as in BatchEnsemble); all else the optimiser's."""
        factors = self.module.factor_parameters() if isinstance(self.module, BatchEnsembleNet) else []
        factor_ids = {id(p) for p in factors}
        others = [p for p in self.module.parameters() if id(p) not in factor_ids]
        groups = [{"params": others}]
        if factors:
            groups.append({"params": factors, "weight_decay": 0.0})
        return groups

    def _student(self, X: torch.Tensor) -> torch.Tensor:
        return student_member_logits(self.module, X)

    def loss(self, X: torch.Tensor, y: torch.Tensor, *cached_teacher_proba: torch.Tensor) -> torch.Tensor:
        if cached_teacher_proba:  # neither augmented nor perturbed: the targets never change
            teacher_proba = cached_teacher_proba[0].transpose(0, 1)
            clean = perturbed = self._student(X)
        elif self.perturb is None:
            teacher_proba = self.teacher.member_proba(X, self.temperature)
            clean = perturbed = self._student(X)
        else:
            X_perturbed = self.perturb(
                X, teacher=self.teacher, student=self._student, config=self.config, generator=self.generator
            )
            teacher_proba = self.teacher.member_proba(X_perturbed, self.temperature)
            clean, perturbed = self._student(torch.cat([X, X_perturbed])).split(len(X), dim=1)
        loss = distillation_loss(
            clean, perturbed, y, teacher_proba, alpha=self.alpha, temperature=self.temperature
        )
        if self.latent_penalty:
            loss = loss + self.latent_penalty * latent_factor_penalty(self.module)
        return loss


def _validation_split(y: np.ndarray, fraction: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """Hold out ``floor(fraction * n_c)`` samples of every class c, so each class stays in training."""
    order = rng.permutation(len(y))
    shuffled = y[order]
    counts = np.bincount(shuffled)
    by_class = np.argsort(shuffled, kind="stable")
    rank = np.empty(len(y), dtype=np.int64)
    rank[by_class] = np.arange(len(y)) - np.repeat(np.cumsum(counts) - counts, counts)
    held_out = rank < np.floor(fraction * counts).astype(np.int64)[shuffled]
    return order[~held_out], order[held_out]


def mean_pairwise_disagreement(member_proba: np.ndarray) -> float:
    """Fraction of samples on which two members' top classes differ, averaged over pairs.

    ``member_proba`` has shape ``(M, N, C)``; a single member disagrees with nobody (0.0).
    """
    predictions = member_proba.argmax(axis=-1)
    pairs = list(itertools.combinations(range(len(predictions)), 2))
    if not pairs:
        return 0.0
    return float(np.mean([np.mean(predictions[i] != predictions[j]) for i, j in pairs]))


def _scores(y: np.ndarray, proba: np.ndarray) -> dict[str, float]:
    return {
        "accuracy": accuracy(y, proba),
        "nll": negative_log_likelihood(y, proba),
        "ece": expected_calibration_error(y, proba),
    }


class DiverseDistiller(TorchEstimatorMixin, ClassifierMixin, BaseEstimator):
    """Ensemble distillation that keeps the ensemble's diversity.

    The student is trained on
    ``(1 - alpha) CE(f_S(x), y) + alpha T^2 KL(p_T(x') || p_S(x'))``, where ``x'`` is the batch
    perturbed so that the teacher members disagree (ODS / ConfODS), or so that the teachers
    disagree where the student members do not (TDiv-SDiv). A single student matches the
    teacher ensemble's mean probability; a BatchEnsemble student matches member to member.
    A LatentBE student is merged after training into one plain network (``merged_``), so
    prediction costs one forward pass.

    Parameters
    ----------
    teacher : None, estimator or list of skorch nets, default=None
        The ensemble to distil. ``None`` trains a :class:`~skpcoreset.DeepEnsembleClassifier`
        of ``n_teachers`` members from ``net`` on the training split. An estimator exposing
        ``member_modules()`` or differentiable ``member_logits(X) -> (M, N, C)`` plus
        ``classes_`` (DeepEnsembleClassifier, BridgeEnsembleClassifier) is used as is when
        fitted and fitted on the training split otherwise (so ``clone`` and ``GridSearchCV``
        work; wrap a prefitted teacher in :class:`sklearn.frozen.FrozenEstimator` to keep it
        fitted through ``clone``). A list of fitted skorch nets uses their ``module_`` as
        members; unfitted ones are trained as members. A classifier with only
        ``predict_proba`` (e.g. a random forest) is a one-member teacher without gradients:
        only ``perturbation=None`` or ``'gaussian'`` work with it.
    student : {'single', 'batchensemble', 'latentbe'}, nn.Module class or skorch net, default='batchensemble'
        'single': one network of ``net``'s architecture. 'batchensemble': a BatchEnsemble of
        as many members as the teacher (factors N(1, 0.5)). 'latentbe': a BatchEnsemble with
        factors initialised to 1 and pulled towards 1, merged after fit. A module class or
        skorch net: a single student of that architecture and training settings.
    perturbation : {None, 'gaussian', 'ods', 'confods', 'tdiv_sdiv'}, default='ods'
        How the transfer batch ``x'`` is built from each training batch; see
        :mod:`skpcoreset.distill._perturbations`. 'tdiv_sdiv' needs a BatchEnsemble student.
    net : None, nn.Module class or skorch net, default=None
        Architecture and training settings (epochs, batch size, optimiser, lr) of the student,
        and of the teacher members when ``teacher=None``. ``None``: an MLP for flat inputs, a
        ConvNet for images, 30 epochs of Adam.
    n_teachers : int, default=4
        Members of the teacher trained when ``teacher=None``.
    alpha : float, default=0.9
        Weight of the distillation term.
    temperature : float, default=1.0
        Softmax temperature T of teacher and student in the distillation term (and of the
        probabilities that the gradient perturbations differentiate).
    step_size : float, default=1/255
        Perturbation size ``eta`` as a fraction of the data range (max - min of the training
        X over all features): each step moves a sample by ``eta * range * sqrt(D)`` in L2
        norm. 1/255 is one grey level of pixel data, the paper's setting.
    norm : {'l2', 'linf'}, default='l2'
        'l2' normalises the direction; 'linf' takes its sign (the ODI variant).
    n_steps : int, default=1
        Perturbation steps per batch.
    augment : None, {'shift', 'shift_flip', 'dsa'} or callable, default=None
        Data augmentation of every transfer batch, on the device, before the perturbation (the
        papers distil on the augmented training set and perturb the augmented images; the
        cross-entropy term sees the augmented batch too). 'shift': translate each image by a
        random offset of up to an eighth of its height per axis (pad-and-crop; pixels shifted
        in take the data minimum). 'shift_flip': also mirror half of the images left-right
        (not for digits or text). 'dsa': :class:`~skpcoreset.augment.DifferentiableAugmentation`.
        A callable ``augment(X, generator) -> X`` receives batches
        ``(B, *input_shape_)`` and a ``torch.Generator`` on the device. The named options need
        images, ``(C, H, W)`` samples (see ``input_shape``). With augmentation the teacher
        labels every batch anew, also for ``perturbation=None``.
    latent_penalty : float, default=1.0
        Weight of the mean squared distance of LatentBE factors from 1 (LatentBE only).
    validation_fraction : float, default=0.1
        Share of each class held out from student training (and from teacher training when the
        distiller fits the teacher) to measure ``distill_gap_`` and ``diversity_``. When nothing
        is held out (0, or classes too small) they are measured on the training data. A
        prefitted teacher may have seen the held-out samples.
    input_shape : tuple of int or None, default=None
        Shape of one sample when flat rows hold images, e.g. ``(1, 8, 8)``.
    device : {'cpu', 'cuda', 'cuda:N', 'auto'}, default='cpu'
    random_state : int, RandomState or None, default=None
    verbose : int, default=0
        1 shows progress bars (teacher members, student epochs).

    Attributes
    ----------
    classes_ : ndarray of shape (n_classes,)
    teacher_ : object
        The fitted teacher that was distilled.
    student_ : nn.Module
        The trained student; a :class:`~skpcoreset.nets.BatchEnsembleNet` for BatchEnsemble and
        LatentBE students (member logits ``(M, N, C)``).
    merged_ : nn.Module
        LatentBE only: the plain network with the members' averaged weights, used by
        ``predict_proba``; its batch-norm statistics (if any) are recomputed on the training
        split.
    distill_gap_ : dict
        Teacher minus student ``accuracy``, ``nll`` and ``ece`` on the validation split, and
        ``split`` ('validation' or 'train').
    diversity_ : dict
        Mean pairwise disagreement of the members' top classes, ``teacher`` and ``student``
        (the BatchEnsemble members, also for LatentBE), on the same split.
    history_ : list of dict
        Student training loss per epoch.
    data_range_ : tuple of float
        (min, max) of the training X: the clipping bounds of perturbed inputs.
    input_shape_ : tuple of int
    device_ : torch.device
    n_features_in_ : int
    interrupted_ : bool
        True when training was stopped by KeyboardInterrupt (the student keeps what it learned).

    References
    ----------
    .. [1] G. Nam, J. Yoon, Y. Lee, J. Lee. "Diversity Matters When Learning From Ensembles",
       NeurIPS 2021.
    .. [2] G. Nam, H. Lee, B. Heo, J. Lee. "Improving Ensemble Distillation With Weight
       Averaging and Diversifying Perturbation", ICML 2022.

    Examples
    --------
    >>> from sklearn.datasets import load_digits
    >>> from skpcoreset import make_net
    >>> from skpcoreset.distill import DiverseDistiller
    >>> X, y = load_digits(return_X_y=True)
    >>> net = make_net(max_epochs=10, lr=1e-2, module__hidden_sizes=(32,))
    >>> student = DiverseDistiller(net=net, n_teachers=2, student="latentbe",
    ...                            perturbation="confods", step_size=0.05, random_state=0)
    >>> student.fit(X / 16, y).score(X / 16, y) > 0.9
    True
    """

    _parameter_constraints = {
        "teacher": "no_validation",
        "student": [StrOptions(set(STUDENT_KINDS)), type, NeuralNet],
        "perturbation": [None, StrOptions(set(PERTURBATIONS))],
        "net": "no_validation",
        "n_teachers": [Interval(Integral, 1, None, closed="left")],
        "alpha": [Interval(Real, 0, 1, closed="both")],
        "temperature": [Interval(Real, 0, None, closed="neither")],
        "step_size": [Interval(Real, 0, None, closed="left")],
        "norm": [StrOptions({"l2", "linf"})],
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "augment": [None, StrOptions(set(NAMED_AUGMENTATIONS)), callable],
        "latent_penalty": [Interval(Real, 0, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "input_shape": [None, tuple, list],
        "device": [str, torch.device],
        "random_state": ["random_state"],
        "verbose": ["verbose"],
    }

    def __init__(
        self,
        teacher=None,
        student="batchensemble",
        perturbation="ods",
        net=None,
        n_teachers=4,
        alpha=0.9,
        temperature=1.0,
        step_size=1 / 255,
        norm="l2",
        n_steps=1,
        augment=None,
        latent_penalty=1.0,
        validation_fraction=0.1,
        input_shape=None,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        self.teacher = teacher
        self.student = student
        self.perturbation = perturbation
        self.net = net
        self.n_teachers = n_teachers
        self.alpha = alpha
        self.temperature = temperature
        self.step_size = step_size
        self.norm = norm
        self.n_steps = n_steps
        self.augment = augment
        self.latent_penalty = latent_penalty
        self.validation_fraction = validation_fraction
        self.input_shape = input_shape
        self.device = device
        self.random_state = random_state
        self.verbose = verbose

    # -- fit ------------------------------------------------------------------------------------
    @_fit_context(prefer_skip_nested_validation=True)
    def fit(self, X, y):
        """Fit (or take) the teacher and distil it into the student.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features) or (n_samples, *input_shape)
        y : array-like of shape (n_samples,)

        Returns
        -------
        self
        """
        self._check_perturbation_fits()
        X, y = self._validate_X_y(X, y)
        generator = self._init_torch()
        teacher_seed, student_seed = seed_from_random_state(self._seed, 2)
        train, valid = _validation_split(y, self.validation_fraction, check_random_state(self._seed))
        X_train = self._to_tensor(X[train])
        self._n_train = len(train)
        y_train = self._to_tensor(y[train], dtype=torch.long)
        self.data_range_ = (float(X_train.min()), float(X_train.max()))
        augment = resolve_augmentation(self.augment, self.input_shape_, fill=self.data_range_[0])
        self.teacher_ = self._fit_teacher(X[train], y[train], teacher_seed)
        teacher = resolve_teacher(self.teacher_, self.classes_, device=self.device_, probe=X_train[:1])
        self._check_teacher(teacher)
        self.student_ = build_student(
            self._student_kind(),
            self._student_template(),
            input_shape=self.input_shape_,
            n_classes=len(self.classes_),
            n_members=teacher.n_members,
            seed=student_seed,
            device=self.device_,
        )
        trainer = self._make_trainer(teacher, generator, augment)
        trainer.fit(*self._training_tensors(teacher, X_train, y_train))
        self.history_, self.interrupted_ = trainer.history, trainer.interrupted
        self.student_.eval()
        if self._student_kind() == "latentbe":
            self.merged_ = recompute_batchnorm(self.student_.merge(), X_train)
        measured = valid if len(valid) else train
        self._measure(teacher, X[measured], y[measured], "validation" if len(valid) else "train")
        return self

    def _student_kind(self) -> str:
        return self.student if isinstance(self.student, str) else "single"

    def _student_template(self):
        return self.net if isinstance(self.student, str) else self.student

    def _check_perturbation_fits(self) -> None:
        if (
            self.perturbation in GRADIENT_PERTURBATIONS
            and self.teacher is not None  # None: the distiller trains a DeepEnsembleClassifier
            and not teacher_is_differentiable(self.teacher)
        ):
            raise ValueError(
                f"perturbation={self.perturbation!r} differentiates the teacher's outputs with "
                f"respect to its inputs, but {type(self.teacher).__name__} has no member_logits "
                "(no gradients). Use perturbation='gaussian' or perturbation=None, or a "
                "differentiable teacher such as DeepEnsembleClassifier."
            )
        if self.perturbation == "tdiv_sdiv" and self._student_kind() == "single":
            raise ValueError(
                "perturbation='tdiv_sdiv' compares student members and needs "
                "student='batchensemble' or 'latentbe'; use 'ods' or 'confods' for a single student."
            )

    def _check_teacher(self, teacher) -> None:
        if self.perturbation == "tdiv_sdiv" and teacher.n_members < 2:
            raise ValueError("perturbation='tdiv_sdiv' needs a teacher with at least 2 members.")

    def _fit_teacher(self, X: np.ndarray, y: np.ndarray, seed: int):
        """The fitted teacher: given, fitted on the training split, or trained from ``net``."""
        labels = self.classes_[y]
        if self.teacher is None:
            ensemble = DeepEnsembleClassifier(
                self.net, n_members=self.n_teachers, device=self.device_, random_state=seed, verbose=self.verbose
            )
            return ensemble.fit(X, labels)
        if isinstance(self.teacher, (list, tuple)):
            return self._fit_teacher_nets(X, y, seed)
        if _is_fitted(self.teacher):
            return self.teacher
        estimator = clone(self.teacher)
        if "random_state" in estimator.get_params():
            estimator.set_params(random_state=seed)
        if not teacher_is_differentiable(estimator):
            X = X.reshape(len(X), -1)  # plain sklearn classifiers take 2-D tables
        return estimator.fit(X, labels)

    def _fit_teacher_nets(self, X: np.ndarray, y: np.ndarray, seed: int) -> list:
        """A list of skorch nets: used as they are when all are fitted, else each trained as a member."""
        nets = list(self.teacher)
        if not nets:
            raise ValueError("teacher is an empty list; give at least one skorch net.")
        if all(getattr(net, "initialized_", False) for net in nets):
            return nets
        seeds = seed_from_random_state(seed, 2 * len(nets))
        members = [
            build_member_nets(
                net, input_shape=self.input_shape_, n_classes=len(self.classes_), seeds=[s], device=self.device_
            )[0]
            for net, s in zip(nets, seeds[: len(nets)], strict=True)
        ]
        for member in members:
            member.classes_inferred_ = self.classes_  # trained on encoded labels, one output per class
        tensors = (self._to_tensor(X), self._to_tensor(y, dtype=torch.long))
        for member, s in zip(members, seeds[len(nets) :], strict=True):
            spec = train_spec_from_net(member, n_samples=len(X))
            train_members([member.module_], tensors, spec, seeds=[s], verbose=self.verbose)
        return members

    def _make_trainer(self, teacher, generator, augment) -> DistillationTrainer:
        lower, upper = self.data_range_
        config = PerturbationConfig(
            step_size=self.step_size * (upper - lower),
            norm=self.norm,
            n_steps=self.n_steps,
            lower=lower,
            upper=upper,
            temperature=self.temperature,
        )
        return DistillationTrainer(
            self.student_,
            train_spec_from_net(self._student_template(), n_samples=self._n_train),
            teacher=teacher,
            perturbation=self.perturbation,
            config=config,
            alpha=self.alpha,
            temperature=self.temperature,
            latent_penalty=self.latent_penalty if self._student_kind() == "latentbe" else 0.0,
            augment=augment,
            generator=generator,
            verbose=self.verbose,
            desc="student",
        )

    def _training_tensors(self, teacher, X: torch.Tensor, y: torch.Tensor) -> tuple:
        """``(X, y)``, plus the teacher's probabilities ``(N, M, C)`` when they never change."""
        if self.perturbation is not None or self.augment is not None:
            return X, y
        proba = predict_batched(lambda xb: teacher.member_proba(xb, self.temperature).transpose(0, 1), X)
        return X, y, proba

    def _measure(self, teacher, X: np.ndarray, y: np.ndarray, split: str) -> None:
        X_t = self._to_tensor(X)
        teacher_members = predict_batched(lambda xb: teacher.member_proba(xb).transpose(0, 1), X_t)
        teacher_members = teacher_members.transpose(0, 1).double().cpu().numpy()
        student_members = self._student_member_proba(X_t)
        teacher_scores = _scores(y, _normalise(teacher_members.mean(axis=0)))
        student_scores = _scores(y, self._proba_from_tensor(X_t))
        self.distill_gap_ = {key: teacher_scores[key] - student_scores[key] for key in teacher_scores}
        self.distill_gap_["split"] = split
        self.diversity_ = {
            "teacher": mean_pairwise_disagreement(teacher_members),
            "student": mean_pairwise_disagreement(student_members),
        }

    # -- predict --------------------------------------------------------------------------------
    def _student_member_proba(self, X: torch.Tensor) -> np.ndarray:
        proba = predict_batched(
            lambda xb: student_member_logits(self.student_, xb).softmax(-1).transpose(0, 1), X
        )
        return proba.transpose(0, 1).double().cpu().numpy()

    def _proba_from_tensor(self, X: torch.Tensor) -> np.ndarray:
        if self._student_kind() == "latentbe":
            proba = predict_batched(lambda xb: self.merged_(xb).softmax(-1), X)
            return _normalise(proba.double().cpu().numpy())
        return _normalise(self._student_member_proba(X).mean(axis=0))

    def student_member_proba(self, X) -> np.ndarray:
        """Per-member student probabilities ``(S, n_samples, n_classes)`` (S = 1 for a single net).

        For LatentBE these are the BatchEnsemble members before merging.
        """
        check_is_fitted(self)
        return self._student_member_proba(self._to_tensor(self._validate_X(X, reset=False)))

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities of the student, shape ``(n_samples, n_classes)``.

        A single student: its softmax. BatchEnsemble: the members' mean probability.
        LatentBE: the merged network's softmax (one forward pass).
        """
        check_is_fitted(self)
        return self._proba_from_tensor(self._to_tensor(self._validate_X(X, reset=False)))

    def predict(self, X) -> np.ndarray:
        """Most probable class label."""
        proba = self.predict_proba(X)
        return self.classes_[proba.argmax(axis=1)]


def _normalise(proba: np.ndarray) -> np.ndarray:
    return proba / proba.sum(axis=1, keepdims=True)


def _is_fitted(estimator) -> bool:
    try:
        check_is_fitted(estimator)
    except (NotFittedError, TypeError):
        return False
    return True
