"""Expression prediction from image embeddings: closed-form ridge regression with the penalty
chosen by cross-validation on the training folds (optionally after PCA, as HEST-Benchmark does),
an MLP head for targets that are not linear in the embeddings, and retrieval (BLEEP).

Each is registered (``create_head("ridge")``) and saves to a folder (``head.save(path)``,
``RidgeHead.load(path)``). Importing this module does not import torch; the MLP imports it when
it is fitted or loaded.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import numpy as np

from histoxmodal.errors import ConfigError
from histoxmodal.heads.base import Head, HeadState
from histoxmodal.heads.registry import register_head


def _ridge_path(x: np.ndarray, y: np.ndarray, alphas: np.ndarray):
    """Coefficients for every alpha from one SVD: ``(n_alphas, d, g)``."""
    u, s, vt = np.linalg.svd(x, full_matrices=False)
    uty = u.T @ y
    return np.stack([(vt.T * (s / (s**2 + a))) @ uty for a in alphas])


def _check_xy(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    if x.ndim != 2:
        raise ConfigError(f"x has shape {x.shape}: expected (n, d) embeddings")
    if y.ndim != 2:
        raise ConfigError(
            f"y has shape {y.shape}: expected (n, n_genes); for one gene pass y[:, None]"
        )
    if len(x) != len(y):
        raise ConfigError(f"{len(x)} embeddings (x) for {len(y)} expression rows (y)")
    return x, y


@register_head(
    "ridge",
    task="regression",
    input="image embeddings (n, d)",
    target="expression (n, n_genes)",
    output="predicted expression (n, n_genes)",
    backend="numpy (folds from scikit-learn)",
)
@dataclass
class RidgeHead(Head):
    """Multi-output ridge regression ``Y ~ X`` with an intercept, penalty chosen by CV.

    The cross-validation is scikit-learn's: ``GroupKFold(min(cv, n_groups))`` when ``groups``
    has at least two groups, else ``KFold(cv, shuffle=True, random_state=0)``; the score of a
    penalty is the mean over folds of the fold's mean squared error, so ``alpha_``, ``cv_mse_``
    and the predictions equal ``GridSearchCV(Ridge(), {"alpha": alphas}, cv=GroupKFold(cv),
    scoring="neg_mean_squared_error")`` (with a ``PCA`` step first when ``pca`` is set). The
    fits themselves are one SVD per fold for every penalty.

    Parameters
    ----------
    alphas
        Penalties tried; the one with the lowest cross-validated mean squared error is kept
        (the first of equals).
    pca
        Reduce the embeddings to this many principal components first (fitted on training data).
    cv
        Number of folds.
    """

    alphas: tuple[float, ...] = tuple(np.logspace(-3, 5, 17))
    pca: int | None = None
    cv: int = 5
    alpha_: float = field(default=float("nan"), init=False)
    cv_mse_: dict[float, float] = field(default_factory=dict, init=False)

    _fitted_attrs = ("coef_", "x_mean_", "y_mean_")

    def _features(self, x: np.ndarray, fit: bool) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if fit:
            self.x_mean_ = x.mean(axis=0)
        x = x - self.x_mean_
        if self.pca is not None:
            if fit:
                k = min(self.pca, *x.shape)
                _, _, vt = np.linalg.svd(x, full_matrices=False)
                self.components_ = vt[:k].T
            x = x @ self.components_
        return x

    def _folds(self, n: int, groups: np.ndarray | None):
        """``(train, test)`` index pairs, as scikit-learn's splitters make them."""
        from sklearn.model_selection import GroupKFold, KFold

        if groups is not None:
            groups = np.asarray(groups)
            if len(groups) != n:
                raise ConfigError(
                    f"groups has {len(groups)} entries for {n} rows of x; pass one group id per "
                    "row (e.g. the sample of each spot)"
                )
            n_groups = len(np.unique(groups))
            if n_groups >= 2:
                return list(
                    GroupKFold(n_splits=min(self.cv, n_groups)).split(np.zeros(n), None, groups)
                )
        splitter = KFold(n_splits=min(self.cv, n), shuffle=True, random_state=0)
        return list(splitter.split(np.zeros(n)))

    def fit(self, x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None) -> RidgeHead:
        """Choose the penalty by cross-validation, then fit on all of ``x``, ``y``.

        Parameters
        ----------
        x
            ``(n, d)`` embeddings.
        y
            ``(n, n_genes)`` expression.
        groups
            ``(n,)`` group ids (e.g. samples): no group is split between train and test folds.
        """
        x, y = _check_xy(x, y)
        alphas = np.asarray(self.alphas, np.float64)
        if alphas.ndim != 1 or len(alphas) == 0 or (alphas < 0).any():
            raise ConfigError(f"alphas={self.alphas!r}: expected one or more penalties >= 0")
        if self.cv < 2:
            raise ConfigError(f"cv={self.cv}: expected at least 2 folds")
        if len(x) < 2:
            raise ConfigError(f"x has {len(x)} rows: need at least 2 to cross-validate")
        err = np.zeros(len(alphas))
        folds = self._folds(len(x), groups)
        for tr, test in folds:
            head = RidgeHead(pca=self.pca)
            xt = head._features(x[tr], fit=True)
            ym = y[tr].mean(axis=0)
            coefs = _ridge_path(xt, y[tr] - ym, alphas)
            xv = head._features(x[test], fit=False)
            for i, c in enumerate(coefs):
                err[i] += ((xv @ c + ym - y[test]) ** 2).mean()
        err /= len(folds)
        self.cv_mse_ = dict(zip(alphas.tolist(), err.tolist(), strict=True))
        self.alpha_ = float(alphas[int(np.argmin(err))])
        xf = self._features(x, fit=True)
        self.y_mean_ = y.mean(axis=0)
        self.coef_ = _ridge_path(xf, y - self.y_mean_, np.array([self.alpha_]))[0]
        return self

    def predict(self, x: np.ndarray, *, coords_um=None, groups=None) -> np.ndarray:
        """``(n, d)`` embeddings -> ``(n, n_genes)`` predicted expression.

        A head that reads centring or neighbour context (:attr:`inputs`) applies it first:
        pass every spot of each section, their centres ``coords_um`` (µm) and sections
        ``groups``."""
        self._require_fitted("predict")
        x = np.asarray(self.prepare(x, coords_um, groups), np.float64)
        if x.ndim != 2 or x.shape[1] != len(self.x_mean_):
            raise ConfigError(
                f"x has shape {x.shape}: expected (n, {len(self.x_mean_)}), the embedding size "
                "the head was fitted on"
            )
        return self._check_outputs(self._features(x, fit=False) @ self.coef_ + self.y_mean_)

    def _state(self) -> HeadState:
        arrays = {"x_mean_": self.x_mean_, "coef_": self.coef_, "y_mean_": self.y_mean_}
        if self.pca is not None:
            arrays["components_"] = self.components_
        return HeadState(
            fitted={"alpha_": self.alpha_, "cv_mse_": [[a, e] for a, e in self.cv_mse_.items()]},
            arrays=arrays,
        )

    def _restore(self, state: HeadState) -> None:
        self.alpha_ = float(state.fitted["alpha_"])
        self.cv_mse_ = {float(a): float(e) for a, e in state.fitted["cv_mse_"]}
        for k, v in state.arrays.items():
            setattr(self, k, v)


@register_head(
    "retrieval",
    task="regression",
    input="gene embeddings (n, d) to fit; image embeddings (m, d) to predict",
    target="expression (n, n_genes)",
    output="predicted expression (m, n_genes)",
    backend="numpy",
)
@dataclass
class RetrievalHead(Head):
    """Retrieval-based expression prediction (BLEEP, Xie et al. 2023).

    The prediction is the similarity-weighted average of the expression of the ``k`` training
    spots whose *gene* embeddings are closest to the query's *image* embedding.

    Parameters
    ----------
    k
        Neighbours averaged.
    temperature
        Softmax temperature on cosine similarities (``None``: plain mean of the k).
    """

    k: int = 50
    temperature: float | None = 0.1

    _fitted_attrs = ("keys_", "values_")

    def fit(self, gene_embeddings: np.ndarray, expression: np.ndarray) -> RetrievalHead:
        """Index ``gene_embeddings`` ``(n, d)`` with their ``expression`` ``(n, n_genes)``."""
        z, values = np.asarray(gene_embeddings, np.float32), np.asarray(expression, np.float64)
        if z.ndim != 2 or values.ndim != 2 or len(z) != len(values) or len(z) == 0:
            raise ConfigError(
                f"gene_embeddings {z.shape} and expression {values.shape}: expected (n, d) and "
                "(n, n_genes) with the same n >= 1; for one gene pass expression[:, None]"
            )
        if self.k < 1:
            raise ConfigError(f"k={self.k}: expected at least one neighbour")
        self.keys_ = z / np.maximum(np.linalg.norm(z, axis=1, keepdims=True), 1e-12)
        self.values_ = values
        return self

    def predict(
        self, image_embeddings: np.ndarray, *, coords_um=None, groups=None, chunk: int = 4096
    ) -> np.ndarray:
        """``(m, d)`` image embeddings -> ``(m, n_genes)`` predicted expression.

        A head that reads centring or smoothing (:attr:`inputs`) applies it to the queries
        first: pass every spot of each section, centres ``coords_um`` (µm), sections ``groups``.
        (The keys given to :meth:`fit` are taken as they are.)"""
        self._require_fitted("predict")
        q = np.asarray(self.prepare(image_embeddings, coords_um, groups), np.float32)
        if q.ndim != 2 or q.shape[1] != self.keys_.shape[1]:
            raise ConfigError(
                f"image_embeddings has shape {q.shape}: expected (m, {self.keys_.shape[1]}), the "
                "size of the gene embeddings the head was fitted on"
            )
        q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        k = min(self.k, len(self.keys_))
        out = np.empty((len(q), self.values_.shape[1]))
        for s in range(0, len(q), chunk):
            sim = q[s : s + chunk] @ self.keys_.T
            idx = np.argpartition(-sim, k - 1, axis=1)[:, :k]
            top = np.take_along_axis(sim, idx, axis=1).astype(np.float64)
            if self.temperature is None:
                w = np.full_like(top, 1.0 / k)
            else:
                w = np.exp((top - top.max(axis=1, keepdims=True)) / self.temperature)
                w /= w.sum(axis=1, keepdims=True)
            out[s : s + chunk] = np.einsum("nk,nkg->ng", w, self.values_[idx])
        return self._check_outputs(out)

    def _state(self) -> HeadState:
        return HeadState(arrays={"keys_": self.keys_, "values_": self.values_})

    def _restore(self, state: HeadState) -> None:
        self.keys_, self.values_ = state.arrays["keys_"], state.arrays["values_"]


def _forward(net, x):
    """The MLP plus, when present, its linear skip path."""
    out = net["mlp"](x)
    return out + net["skip"](x) if "skip" in net else out


@register_head(
    "mlp",
    task="regression",
    input="image embeddings (n, d)",
    target="expression (n, n_genes)",
    output="predicted expression (n, n_genes)",
    backend="torch (CPU)",
)
@dataclass
class MLPHead(Head):
    """Multi-output MLP regression ``Y ~ f(X)``, for targets not linear in the embeddings.

    Same API as :class:`RidgeHead`. Embeddings and targets are standardised with training statistics
    (the loss weighs every gene alike; predictions are returned on the original scale). The network
    is ``Linear -> ReLU -> Dropout`` per hidden layer, then a linear output, plus (``linear_skip``)
    a linear map of the input added to the output, so the linear model ridge fits is inside the
    family and the hidden layers only have to learn what is not linear (on a linear target this
    brought a two-layer head from 2.0-2.3x to 1.4-1.7x ridge's test MSE). Trained with AdamW
    (decoupled weight decay) on the mean squared error. Early stopping: ``val_fraction`` of the
    training rows (whole groups when ``groups`` is given) are held out, training stops after
    ``patience`` epochs without a lower validation loss, and the weights of the best epoch are kept
    (the held-out rows are not refitted on). Runs on CPU; the result depends only on ``seed``
    (torch's global random state is left untouched).

    Parameters
    ----------
    hidden
        Hidden layer widths, one or two entries, e.g. ``(256,)`` or ``(512, 256)``.
    dropout
        Dropout after each hidden layer.
    lr, weight_decay
        AdamW learning rate and weight decay.
    max_epochs, batch_size, patience
        Training length, minibatch size, early-stopping patience (epochs).
    val_fraction
        Share of the training rows (or groups) used for early stopping.
    linear_skip
        Add a linear path from input to output (see above).
    seed
        Seeds the validation split, initialisation, dropout and minibatch order.
    """

    hidden: tuple[int, ...] = (256,)
    dropout: float = 0.1
    lr: float = 3e-3
    weight_decay: float = 1e-2
    max_epochs: int = 300
    batch_size: int = 128
    patience: int = 15
    val_fraction: float = 0.2
    linear_skip: bool = True
    seed: int = 0
    best_epoch_: int = field(default=-1, init=False)
    history_: list[tuple[float, float]] = field(default_factory=list, init=False)

    _fitted_attrs = ("net_", "x_mean_", "x_std_", "y_mean_", "y_std_")

    def _build_net(self, d_in: int, d_out: int):
        """The network, freshly initialised from torch's current random state."""
        from torch import nn

        dims = [d_in, *self.hidden]
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(dims):
            layers += [nn.Linear(a, b), nn.ReLU(), nn.Dropout(self.dropout)]
        net = nn.ModuleDict({"mlp": nn.Sequential(*layers, nn.Linear(dims[-1], d_out))})
        if self.linear_skip:
            net["skip"] = nn.Linear(d_in, d_out)
        return net

    def _check(self) -> None:
        if not 1 <= len(self.hidden) <= 2 or min(self.hidden) < 1:
            raise ConfigError(
                f"hidden={self.hidden!r}: expected one or two positive layer widths, e.g. (256,)"
            )
        if not 0.0 < self.val_fraction < 1.0:
            raise ConfigError(
                f"val_fraction={self.val_fraction}: expected a share in (0, 1), e.g. 0.2"
            )

    def _split(self, n: int, groups: np.ndarray | None) -> np.ndarray:
        """Boolean validation mask ``(n,)``: whole groups when there are at least two."""
        rng = np.random.default_rng(self.seed)
        if groups is not None:
            groups = np.asarray(groups)
            if len(groups) != n:
                raise ConfigError(
                    f"groups has {len(groups)} entries for {n} rows of x; pass one group id per "
                    "row (e.g. the sample of each spot)"
                )
            uniq = np.unique(groups)
            if len(uniq) >= 2:
                val: list = []
                for g in rng.permutation(uniq):
                    if np.isin(groups, val).mean() >= self.val_fraction:
                        break
                    if len(val) == len(uniq) - 1:
                        break
                    val.append(g)
                return np.isin(groups, val)
        n_val = min(max(1, round(self.val_fraction * n)), n - 1)
        mask = np.zeros(n, bool)
        mask[rng.permutation(n)[:n_val]] = True
        return mask

    def fit(self, x: np.ndarray, y: np.ndarray, *, groups: np.ndarray | None = None) -> MLPHead:
        """Train on ``x`` ``(n, d)`` embeddings and ``y`` ``(n, n_genes)`` expression.

        ``groups`` ``(n,)`` (e.g. samples) keeps whole groups together in the early-stopping
        split, so the stopping point is chosen on unseen samples as at test time.
        """
        import torch
        from torch import nn

        self._check()
        x, y = _check_xy(x, y)
        if len(x) < 4:
            raise ConfigError(f"x has {len(x)} rows: need at least 4 to train and early-stop")
        if not (np.isfinite(x).all() and np.isfinite(y).all()):
            raise ConfigError("x or y holds NaN or infinite values; drop or impute those rows")
        self.x_mean_, self.x_std_ = x.mean(0), x.std(0)
        self.x_std_[self.x_std_ < 1e-12] = 1.0
        self.y_mean_, self.y_std_ = y.mean(0), y.std(0)
        self.y_std_[self.y_std_ < 1e-12] = 1.0
        xs = torch.as_tensor((x - self.x_mean_) / self.x_std_, dtype=torch.float32)
        ys = torch.as_tensor((y - self.y_mean_) / self.y_std_, dtype=torch.float32)
        val = torch.as_tensor(self._split(len(x), groups))
        xt, yt, xv, yv = xs[~val], ys[~val], xs[val], ys[val]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            net = self._build_net(x.shape[1], y.shape[1])
            opt = torch.optim.AdamW(net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
            gen = torch.Generator().manual_seed(self.seed)
            best, best_state, wait = float("inf"), None, 0
            self.history_ = []
            for epoch in range(self.max_epochs):
                net.train()
                order = torch.randperm(len(xt), generator=gen)
                total = 0.0
                for s in range(0, len(xt), self.batch_size):
                    idx = order[s : s + self.batch_size]
                    loss = nn.functional.mse_loss(_forward(net, xt[idx]), yt[idx])
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                net.eval()
                with torch.no_grad():
                    v = float(nn.functional.mse_loss(_forward(net, xv), yv))
                self.history_.append((total / len(xt), v))
                if v < best - 1e-6:
                    best, wait, self.best_epoch_ = v, 0, epoch
                    best_state = {k: t.clone() for k, t in net.state_dict().items()}
                else:
                    wait += 1
                    if wait >= self.patience:
                        break
            net.load_state_dict(best_state)
        net.eval()
        self.net_ = net
        self.n_features_ = x.shape[1]
        return self

    def predict(self, x: np.ndarray, *, coords_um=None, groups=None) -> np.ndarray:
        """``(n, d)`` embeddings -> ``(n, n_genes)`` predicted expression (with the head's
        :attr:`inputs` applied first, as :meth:`RidgeHead.predict`)."""
        import torch

        self._require_fitted("predict")
        x = np.asarray(self.prepare(x, coords_um, groups), np.float64)
        if x.ndim != 2 or x.shape[1] != self.n_features_:
            raise ConfigError(
                f"x has shape {x.shape}: expected (n, {self.n_features_}), the embedding size "
                "the head was fitted on"
            )
        xs = torch.as_tensor((x - self.x_mean_) / self.x_std_, dtype=torch.float32)
        with torch.no_grad():
            out = _forward(self.net_, xs).double().numpy()
        return self._check_outputs(out * self.y_std_ + self.y_mean_)

    def _state(self) -> HeadState:
        return HeadState(
            fitted={
                "n_features_": self.n_features_,
                "best_epoch_": self.best_epoch_,
                "history_": self.history_,
            },
            arrays={
                "x_mean_": self.x_mean_,
                "x_std_": self.x_std_,
                "y_mean_": self.y_mean_,
                "y_std_": self.y_std_,
            },
            weights=self.net_.state_dict(),
        )

    def _restore(self, state: HeadState) -> None:
        import torch

        self._check()
        for k, v in state.arrays.items():
            setattr(self, k, v)
        self.n_features_ = int(state.fitted["n_features_"])
        self.best_epoch_ = int(state.fitted["best_epoch_"])
        self.history_ = [tuple(h) for h in state.fitted["history_"]]
        with torch.random.fork_rng(devices=[]):  # the initial weights are overwritten anyway
            net = self._build_net(self.n_features_, len(self.y_mean_))
        net.load_state_dict(state.weights)
        self.net_ = net.eval()
