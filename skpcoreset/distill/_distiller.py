"""DiverseDistiller: distil an ensemble into one network (or a BatchEnsemble) without losing
what makes the ensemble good -- the disagreement between its members."""

from __future__ import annotations

import itertools
from numbers import Integral, Real

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.exceptions import NotFittedError
from sklearn.utils import check_random_state
from sklearn.utils._param_validation import Interval, StrOptions
from sklearn.utils.validation import check_is_fitted
from skorch import NeuralNet

from .._base import (
    TorchEstimatorMixin,
    fill_doc,
    make_generator,
    seed_from_random_state,
    shared_constraints,
    store_params,
)
from .._holdout import holdout_split, paired_nll_standard_error, scores, warn_if_no_benefit
from .._skorch import build_member_nets, forward_flops, train_spec_from_net
from .._train import Trainer, predict_batched, train_members
from ..augment import NAMED_AUGMENTATIONS, resolve_augmentation
from ..ensemble import DeepEnsembleClassifier
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

# alpha and T of the official code per perturbation: Nam et al. (2021) distil with alpha 0.9 and
# T 1 (KD, Gaussian, ODS, ConfODS); distill-latentbe runs TDiv-SDiv with alpha 1 and T 4.
_OFFICIAL_LOSS = {
    None: (0.9, 1.0),
    "gaussian": (0.9, 1.0),
    "ods": (0.9, 1.0),
    "confods": (0.9, 1.0),
    "tdiv_sdiv": (1.0, 4.0),
}
# step_size='auto': images step 1/255 of the data range (one grey level of [0, 1] pixels, the
# papers' setting); tables step in per-feature standard deviations.
_IMAGE_STEP = 1 / 255
_TABLE_STEP = 0.1


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

    def perturbed(self, X: torch.Tensor) -> torch.Tensor:
        """The transfer batch ``x'`` of ``X``, built with the student in eval mode.

        The perturbation's passes through the student (TDiv-SDiv) use its running
        batch-norm statistics and leave them untouched, as in the official code; only the
        student's training passes on ``x`` and ``x'`` update them.
        """
        was_training = self.module.training
        self.module.eval()
        try:
            return self.perturb(
                X, teacher=self.teacher, student=self._student, config=self.config, generator=self.generator
            )
        finally:
            self.module.train(was_training)

    def loss(self, X: torch.Tensor, y: torch.Tensor, *cached_teacher_proba: torch.Tensor) -> torch.Tensor:
        if cached_teacher_proba:  # neither augmented nor perturbed: the targets never change
            teacher_proba = cached_teacher_proba[0].transpose(0, 1)
            clean = perturbed = self._student(X)
        elif self.perturb is None:
            teacher_proba = self.teacher.member_proba(X, self.temperature)
            clean = perturbed = self._student(X)
        else:
            X_perturbed = self.perturbed(X)
            teacher_proba = self.teacher.member_proba(X_perturbed, self.temperature)
            clean, perturbed = self._student(torch.cat([X, X_perturbed])).split(len(X), dim=1)
        loss = distillation_loss(clean, perturbed, y, teacher_proba, alpha=self.alpha, temperature=self.temperature)
        if self.latent_penalty:
            loss = loss + self.latent_penalty * latent_factor_penalty(self.module)
        return loss


def mean_pairwise_disagreement(member_proba: np.ndarray) -> float:
    """Fraction of samples on which two members' top classes differ, averaged over pairs.

    ``member_proba`` has shape ``(M, N, C)``; a single member disagrees with nobody (0.0).
    """
    predictions = member_proba.argmax(axis=-1)
    pairs = list(itertools.combinations(range(len(predictions)), 2))
    if not pairs:
        return 0.0
    return float(np.mean([np.mean(predictions[i] != predictions[j]) for i, j in pairs]))


@fill_doc
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
        Architecture and training settings (epochs, batch size, optimiser, lr, callbacks) of
        the student, and of the teacher members when ``teacher=None``. ``None``: an MLP for
        flat inputs, a ConvNet for images, trained on the 'member' preset
        (:data:`skpcoreset._presets.PRESETS`: SGD with Nesterov momentum, weight decay,
        warm-up + cosine, epochs sized to the data), the regime of the papers' teachers and
        students.
    n_teachers : int, default=4
        Members of the teacher trained when ``teacher=None``.
    alpha : 'auto' or float, default='auto'
        Weight of the distillation term. 'auto': the official setting of the perturbation,
        0.9 (KD, Gaussian, ODS, ConfODS; Nam et al. 2021), 1.0 for 'tdiv_sdiv' (Nam et al.
        2022).
    temperature : 'auto' or float, default='auto'
        Softmax temperature T of teacher and student in the distillation term (and of the
        probabilities that the gradient perturbations differentiate). 'auto': 1, 4 for
        'tdiv_sdiv'.
    step_size : 'auto' or float, default='auto'
        Perturbation size ``eta``; each step moves a sample by ``eta * sqrt(D)`` in L2 norm in
        normalised units. Images (``input_shape_`` of 2 or more axes): units of the data range
        (max - min of the training X), 'auto' = 1/255, one grey level of [0, 1] pixels, the
        papers' setting. Flat rows (tables, signals, flattened images): units of each
        feature's standard deviation (the step is taken in standardised coordinates and each
        feature is clipped to its own training range), 'auto' = 0.1.
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
        distiller fits the teacher) to measure ``validation_scores_``, ``distill_gap_`` and
        ``diversity_``. When nothing is held out (0, or classes too small) the last two are
        measured on the training data and ``validation_scores_`` is empty. A prefitted teacher
        may have seen the held-out samples.
    check_benefit : {'select', 'warn'} or False, default='select'
        With a perturbation, also train the plain KD student (``perturbation=None``; the same
        initialisation, batches, teacher, split and regime; cheaper than the perturbed one)
        and score both on the held-out split, warning with
        :class:`~skpcoreset.exceptions.NoBenefitWarning` when the perturbed student's NLL is
        not below the KD student's by more than one standard error of their paired per-sample
        NLL difference (``benefit_margin_``). 'select': the KD student then predicts
        (``selected_``);
        'warn': the perturbed student predicts anyway. False skips that run. The perturbation
        helps where the teacher is better than KD (teachers that fit their training set); it
        cannot where KD alone already matches or beats the teacher (e.g. label noise).
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
        The student trained with the perturbation; a :class:`~skpcoreset.nets.BatchEnsembleNet` for BatchEnsemble and
        LatentBE students (member logits ``(M, N, C)``).
    merged_ : nn.Module
        LatentBE only: the plain network with the members' averaged weights, used by
        ``predict_proba``; its batch-norm statistics (if any) are recomputed on the training
        split.
    validation_scores_ : dict
        Held-out ``accuracy``, ``nll`` and ``ece`` of the ``'teacher'``, the (perturbed)
        ``'student'`` and, with a perturbation and ``check_benefit``, the ``'kd_student'``;
        empty when nothing is held out.
    kd_student_, kd_merged_ : nn.Module or None
        The KD student of the benefit check (and its merged network, LatentBE), None when it
        was not trained.
    benefit_margin_ : float or None
        The standard error of the paired per-sample held-out NLL difference between the
        perturbed and the KD student: the margin the perturbed student must win by.
    selected_ : {'student', 'kd_student'}
        Which student predicts: the perturbed one unless ``check_benefit='select'`` found it no
        better than the KD student on the held-out split.
    alpha_, temperature_ : float
        The distillation weight and temperature used (``'auto'`` resolved).
    input_scale_ : tensor or None
        Per-feature standard deviation of the training X, the unit of the perturbation step
        on flat rows; None for images.
    distill_gap_ : dict
        Teacher minus (selected) student ``accuracy``, ``nll`` and ``ece`` on the validation split, and
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
    interrupted_ : None or str
        None after a complete fit; otherwise the phase a KeyboardInterrupt stopped
        (``'teacher'``, ``'student'`` or ``'kd_baseline'``). What was learned is kept: a teacher
        stopped early still teaches the student; a student stopped early skips the KD baseline.

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
        "alpha": [StrOptions({"auto"}), Interval(Real, 0, 1, closed="both")],
        "temperature": [StrOptions({"auto"}), Interval(Real, 0, None, closed="neither")],
        "step_size": [StrOptions({"auto"}), Interval(Real, 0, None, closed="left")],
        "norm": [StrOptions({"l2", "linf"})],
        "n_steps": [Interval(Integral, 1, None, closed="left")],
        "augment": [None, StrOptions(set(NAMED_AUGMENTATIONS)), callable],
        "latent_penalty": [Interval(Real, 0, None, closed="left")],
        "validation_fraction": [Interval(Real, 0, 1, closed="left")],
        "check_benefit": [StrOptions({"select", "warn"}), "boolean"],
        **shared_constraints("input_shape", "device", "random_state", "verbose"),
    }

    def __init__(
        self,
        teacher=None,
        *,
        student="batchensemble",
        perturbation="ods",
        net=None,
        n_teachers=4,
        alpha="auto",
        temperature="auto",
        step_size="auto",
        norm="l2",
        n_steps=1,
        augment=None,
        latent_penalty=1.0,
        validation_fraction=0.1,
        check_benefit="select",
        input_shape=None,
        device="cpu",
        random_state=None,
        verbose=0,
    ):
        store_params(self, locals())

    def _fit(self, X, y):
        """Fit (or take) the teacher and distil it into the student."""
        self._check_perturbation_fits()
        self.interrupted_ = None
        generator = self._init_torch()
        teacher_seed, student_seed = seed_from_random_state(self._seed, 2)
        train, valid = holdout_split(y, self.validation_fraction, check_random_state(self._seed))
        X_train = self._to_tensor(X[train])
        self._n_train = len(train)
        y_train = self._to_tensor(y[train], dtype=torch.long)
        self.data_range_ = (float(X_train.min()), float(X_train.max()))
        self.input_scale_ = self._input_scale(X_train)
        self.alpha_, self.temperature_ = self._loss_settings()
        augment = resolve_augmentation(self.augment, self.input_shape_, fill=self.data_range_[0])
        self.teacher_ = self._fit_teacher(X[train], y[train], teacher_seed)
        if getattr(self.teacher_, "interrupted_", None) is not None and self.teacher_ is not self.teacher:
            self.interrupted_ = "teacher"  # a teacher trained here; what its members learned is kept
        teacher = resolve_teacher(self.teacher_, self.classes_, device=self.device_, probe=X_train[:1])
        self._check_teacher(teacher)
        self.student_, trainer = self._train_student(
            teacher, self.perturbation, student_seed, generator, augment, X_train, y_train
        )
        self.history_ = trainer.history
        if trainer.interrupted:
            self.interrupted_ = "student"
        self.merged_ = self._merge(self.student_, X_train)
        self.kd_student_ = self.kd_merged_ = None
        self.benefit_margin_ = None
        self.selected_ = "student"
        self.validation_scores_ = {}
        if len(valid):
            self._check_benefit(teacher, X[valid], y[valid], student_seed, augment, X_train, y_train)
        measured = valid if len(valid) else train
        self._measure(teacher, X[measured], y[measured], "validation" if len(valid) else "train")
        return self

    def _merge(self, student, X_train):
        """LatentBE: the merged plain network (batch-norm statistics recomputed); else None."""
        return recompute_batchnorm(student.merge(), X_train) if self._student_kind() == "latentbe" else None

    def _loss_settings(self) -> tuple[float, float]:
        """``alpha`` and ``temperature`` as run: 'auto' is the official setting of the perturbation."""
        alpha_auto, temperature_auto = _OFFICIAL_LOSS.get(self.perturbation, _OFFICIAL_LOSS["ods"])
        alpha = alpha_auto if self.alpha == "auto" else float(self.alpha)
        temperature = temperature_auto if self.temperature == "auto" else float(self.temperature)
        return alpha, temperature

    def _is_image(self) -> bool:
        return len(self.input_shape_) >= 2

    def _input_scale(self, X_train: torch.Tensor) -> torch.Tensor | None:
        """Per-feature standard deviation of a table (the ODS step's unit), None for images."""
        if self._is_image():
            return None
        return X_train.std(dim=0, unbiased=False)

    def _step_size(self) -> float:
        if self.step_size != "auto":
            return float(self.step_size)
        return _IMAGE_STEP if self._is_image() else _TABLE_STEP

    def _train_student(self, teacher, perturbation, seed, generator, augment, X_train, y_train):
        """Build and train one student; returns ``(module, trainer)``."""
        student, callbacks = build_student(
            self._student_kind(),
            self._student_template(),
            input_shape=self.input_shape_,
            n_classes=len(self.classes_),
            n_members=teacher.n_members,
            seed=seed,
            device=self.device_,
            return_callbacks=True,
        )
        trainer = self._make_trainer(student, teacher, perturbation, generator, augment, callbacks, X_train)
        trainer.fit(*self._training_tensors(teacher, perturbation, X_train, y_train))
        student.eval()
        return student, trainer

    def _check_benefit(self, teacher, X_valid, y_valid, seed, augment, X_train, y_train) -> None:
        """Held-out scores of the teacher, the student and (with a perturbation) the KD student.

        The KD student is the same student (same initialisation, batches, teacher, split and
        regime) trained without perturbation: the baseline whose NLL the perturbation must
        beat. When it does not, a :class:`~skpcoreset.exceptions.NoBenefitWarning` says so
        and, with ``check_benefit='select'``, the KD student predicts (``selected_``).
        """
        X_t = self._to_tensor(X_valid)
        teacher_members = predict_batched(lambda xb: teacher.member_proba(xb).transpose(0, 1), X_t)
        teacher_proba = _normalise(teacher_members.transpose(0, 1).double().cpu().numpy().mean(axis=0))
        self.validation_scores_ = {
            "teacher": scores(y_valid, teacher_proba),
            "student": scores(y_valid, self._proba_of(self.student_, self.merged_, X_t)),
        }
        if self.perturbation is None or not self.check_benefit or self.interrupted_ is not None:
            return
        generator = make_generator(self._seed, self.device_)  # the batches the student saw
        kd, trainer = self._train_student(teacher, None, seed, generator, augment, X_train, y_train)
        if trainer.interrupted:
            self.interrupted_ = "kd_baseline"
            return
        self.kd_student_, self.kd_merged_ = kd, self._merge(kd, X_train)
        kd_proba = self._proba_of(kd, self.kd_merged_, X_t)
        self.validation_scores_["kd_student"] = scores(y_valid, kd_proba)
        # the benefit must exceed one standard error of the paired per-sample NLL difference
        student_proba = self._proba_of(self.student_, self.merged_, X_t)
        self.benefit_margin_ = paired_nll_standard_error(y_valid, student_proba, kd_proba)
        select = self.check_benefit == "select"
        method = f"{self.perturbation} student"
        benefit = warn_if_no_benefit(
            type(self).__name__,
            method,
            "KD student",
            {method: self.validation_scores_["student"], "KD student": self.validation_scores_["kd_student"]},
            f"It must win by one paired standard error ({self.benefit_margin_:.4f} nats). "
            + ("The KD student predicts (selected_='kd_student'); " if select else "")
            + "the perturbation transferred nothing the plain KD student did not learn here (a teacher "
            "no better than KD, or steps too large or too small: see step_size).",
            margin=self.benefit_margin_,
        )
        if select and not benefit:
            self.selected_ = "kd_student"

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
            ensemble = DeepEnsembleClassifier(  # the student's regime and augmentation
                self.net,
                n_members=self.n_teachers,
                augment=self.augment,
                input_shape=self.input_shape_,
                device=self.device_,
                random_state=seed,
                verbose=self.verbose,
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
        augment = resolve_augmentation(self.augment, self.input_shape_, fill=self.data_range_[0])
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
            spec = train_spec_from_net(
                member,
                n_samples=len(X),
                forward_flops=forward_flops(member.module_, tensors[0][:1]),
                device=self.device_,
            )
            train_members(
                [member.module_], tensors, spec, seeds=[s], nets=[member], augment=augment, verbose=self.verbose
            )
        return members

    def _make_trainer(self, student, teacher, perturbation, generator, augment, callbacks, X_train):
        if self.input_scale_ is None:  # images: one scale, the data range (the papers' 1/255 of [0, 1])
            lower, upper = self.data_range_
            step, scale = self._step_size() * (upper - lower), None
        else:  # tables: steps in per-feature standard deviations, clipped to each feature's range
            lower, upper = X_train.amin(dim=0), X_train.amax(dim=0)
            step, scale = self._step_size(), self.input_scale_
        config = PerturbationConfig(
            step_size=step,
            norm=self.norm,
            n_steps=self.n_steps,
            lower=lower,
            upper=upper,
            temperature=self.temperature_,
            scale=scale,
        )
        template = self._student_template()
        return DistillationTrainer(
            student,
            train_spec_from_net(
                template,
                n_samples=self._n_train,
                forward_flops=forward_flops(student, X_train[:1]),
                device=self.device_,
            ),
            teacher=teacher,
            perturbation=perturbation,
            config=config,
            alpha=self.alpha_,
            temperature=self.temperature_,
            latent_penalty=self.latent_penalty if self._student_kind() == "latentbe" else 0.0,
            augment=augment,
            generator=generator,
            callbacks=callbacks,
            verbose=self.verbose,
            desc="student" if perturbation == self.perturbation else "kd_baseline",
        )

    def _training_tensors(self, teacher, perturbation, X: torch.Tensor, y: torch.Tensor) -> tuple:
        """``(X, y)``, plus the teacher's probabilities ``(N, M, C)`` when they never change."""
        if perturbation is not None or self.augment is not None:
            return X, y
        proba = predict_batched(lambda xb: teacher.member_proba(xb, self.temperature_).transpose(0, 1), X)
        return X, y, proba

    def _measure(self, teacher, X: np.ndarray, y: np.ndarray, split: str) -> None:
        X_t = self._to_tensor(X)
        teacher_members = predict_batched(lambda xb: teacher.member_proba(xb).transpose(0, 1), X_t)
        teacher_members = teacher_members.transpose(0, 1).double().cpu().numpy()
        student_members = self._student_member_proba(X_t)
        teacher_scores = scores(y, _normalise(teacher_members.mean(axis=0)))
        student_scores = scores(y, self._proba_from_tensor(X_t))
        self.distill_gap_ = {key: teacher_scores[key] - student_scores[key] for key in teacher_scores}
        self.distill_gap_["split"] = split
        self.diversity_ = {
            "teacher": mean_pairwise_disagreement(teacher_members),
            "student": mean_pairwise_disagreement(student_members),
        }

    # -- predict --------------------------------------------------------------------------------
    def _predictor(self) -> tuple:
        """The selected student and its merged network (LatentBE)."""
        if getattr(self, "selected_", "student") == "kd_student":
            return self.kd_student_, self.kd_merged_
        return self.student_, getattr(self, "merged_", None)

    def _student_member_proba(self, X: torch.Tensor) -> np.ndarray:
        student = self._predictor()[0]
        proba = predict_batched(lambda xb: student_member_logits(student, xb).softmax(-1).transpose(0, 1), X)
        return proba.transpose(0, 1).double().cpu().numpy()

    def _proba_from_tensor(self, X: torch.Tensor) -> np.ndarray:
        return self._proba_of(*self._predictor(), X)

    def _proba_of(self, student, merged, X: torch.Tensor) -> np.ndarray:
        if self._student_kind() == "latentbe":
            proba = predict_batched(lambda xb: merged(xb).softmax(-1), X)
            return _normalise(proba.double().cpu().numpy())
        proba = predict_batched(lambda xb: student_member_logits(student, xb).softmax(-1).transpose(0, 1), X)
        return _normalise(proba.transpose(0, 1).double().cpu().numpy().mean(axis=0))

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
