"""ReFs gradient matching between the SSL task and the supervised reference task on the shared (encoder) parameters.

Method: ReFs - reference-guided self-supervised learning (Xie, Zhang, Liu, Wang, Ye, Verjans, Xia, Medical Image
Analysis 91:103023, 2024): the shared feature extractor should get low loss on both tasks *and* similar gradients
from both. Two ways to steer towards consistent gradients (see ``docs/methods.md``):

* ``"cosine"`` (:func:`cosine_matching_penalty`): add ``lam * (1 - cos(g_ssl, g_ref))`` to the loss, where
  ``g_*`` are the gradients of each loss w.r.t. the shared parameters computed with ``create_graph=True``, so one
  ``backward()`` of ``L_ssl + L_ref + penalty`` gives the exact gradient of that explicit formula (double
  backward). Note the formula depends on *every* parameter the encoder gradients depend on (heads included), so
  heads also receive the penalty's gradient - that is the gradient of the explicit formula.
* ``"fish"`` (:class:`FishGradientMatcher`, default of the project): first-order gradient matching of
  Shi et al., "Gradient Matching for Domain Generalization" (ICLR 2022, arXiv 2104.09937), with two "domains"
  (tasks). Clone the network, take an inner SGD step (lr ``eta = inner_lr``) on the first task, then one on the
  second task *at the updated clone*, and move the real shared parameters a fraction ``meta_lr`` towards the
  clone: ``theta <- theta + meta_lr * (theta_clone - theta)``.

First-order statement (what the unit tests check). With ``g_s = grad L_ssl``, ``g_r = grad L_ref``, Hessians
``H_s, H_r``, all at ``theta``, and the order "ssl then ref"::

    theta_clone - theta = -eta g_s(theta) - eta g_r(theta - eta g_s(theta))
                        = -eta (g_s + g_r) + eta^2 H_r g_s + O(eta^3).                                        (1)

Since ``grad <g_s, g_r> = H_s g_r + H_r g_s``, averaging (1) over the two task orders (ssl->ref and ref->ssl) gives
exactly, up to ``O(eta^3)``::

    mean_order(theta_clone - theta) = -eta * grad[ L_ssl + L_ref - alpha <g_s, g_r> ],   alpha = eta / 2.        (2)

So one fish move is, to first order in ``eta`` beyond plain SGD, a gradient step of size ``meta_lr * eta`` on
``L_ssl + L_ref - alpha <g_s, g_r>``; (2) holds exactly in expectation over the order (use ``order="alternate"``
to alternate the order step by step; the default ``"ssl_first"`` follows the METHODS text and realises (1)).
The tests check (1) and (2) with an error ``O(eta^3)``, i.e. relative error ``O(eta^2)`` against the
``O(eta)`` displacement, and that dropping the ``eta^2`` matching term leaves an ``O(eta^2)`` error.

Parameters not in the shared set (task heads) do not take part in the matching: they get their own task's
ordinary gradient at ``theta`` in ``.grad`` (``dL_ssl/dp + dL_ref/dp``, which for a head used by one task only is
that task's gradient) for the caller's optimizer to step.

DDP: when ``torch.distributed`` is initialised (world size > 1) and ``average_across_ranks`` is not False, every
flat gradient used by the matcher (at ``theta`` and at the clone, shared and heads) is all-reduced to the mean
across ranks before use. With identical starting parameters on all ranks, every rank then computes the same clone
and the same move, so parameters stay identical without DDP's own reducer. Pass the *unwrapped* module
(``ddp_model.module``): the matcher calls ``torch.autograd.grad`` itself and must not go through DDP's reducer.
The gradient cosine is computed from the rank-averaged gradients. In the cosine mode the gradients are local (not
averaged); wrap the model in DDP as usual and the final ``.grad`` is averaged by DDP.
"""
from __future__ import annotations

import copy
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import torch
from torch import nn

__all__ = [
    "flat_grad",
    "gradient_cosine",
    "cosine_matching_penalty",
    "scaled_task_gradients",
    "distributed_world_size",
    "all_reduce_mean_",
    "FishGradientMatcher",
]

_EPS = 1e-12


def flat_grad(loss: torch.Tensor, params: Sequence[torch.Tensor], create_graph: bool = False,
              retain_graph: Optional[bool] = None) -> torch.Tensor:
    """Gradient of ``loss`` w.r.t. ``params`` concatenated into one vector (zeros for params ``loss`` ignores).

    ``retain_graph`` defaults to ``create_graph`` (torch's convention). With ``create_graph=True`` the result is
    differentiable (double backward).
    """
    params = list(params)
    if not loss.requires_grad:
        return torch.cat([torch.zeros_like(p).reshape(-1) for p in params]) if params else loss.new_zeros(0)
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, retain_graph=retain_graph,
                                allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).reshape(-1) for g, p in zip(grads, params)])


def gradient_cosine(g1: torch.Tensor, g2: torch.Tensor, eps: float = _EPS) -> float:
    """Cosine ``<g1, g2> / (|g1| |g2|)`` as a Python float; 0.0 if either vector is (numerically) zero."""
    g1 = g1.detach().reshape(-1).double()
    g2 = g2.detach().reshape(-1).double()
    n = g1.norm() * g2.norm()
    return float((g1 @ g2) / n) if float(n) > eps else 0.0


def scaled_task_gradients(loss_ssl: torch.Tensor, loss_ref: torch.Tensor, params: Sequence[torch.Tensor],
                          loss_scale: float = 1.0, create_graph: bool = False) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(loss_scale * g_ssl, loss_scale * g_ref)``: flat gradients of both losses w.r.t. ``params``, both graphs
    retained (the losses can still be backpropagated). ``loss_scale`` keeps float16 (autocast) gradients from
    underflowing; cosines of the two do not depend on it."""
    return tuple(flat_grad(loss * loss_scale if loss_scale != 1.0 else loss, params, create_graph=create_graph,
                           retain_graph=True) for loss in (loss_ssl, loss_ref))


def cosine_matching_penalty(loss_ssl: torch.Tensor, loss_ref: torch.Tensor, shared_params: Iterable[torch.Tensor],
                            lam: float, eps: float = _EPS,
                            loss_scale: float = 1.0) -> Tuple[torch.Tensor, torch.Tensor]:
    """ReFs "cosine" mode: ``(lam * (1 - cos(g_ssl, g_ref)), cos.detach())``.

    ``g_*`` = gradients of each loss w.r.t. ``shared_params`` with ``create_graph=True`` (both graphs are
    retained), so ``(loss_ssl + loss_ref + penalty).backward()`` gives the exact gradient of the explicit formula.
    ``cos = <g_ssl, g_ref> / max(|g_ssl| |g_ref|, eps)``. ``loss_scale`` (mixed precision): the inner gradients are
    taken of the scaled losses, so the double backward does not underflow in float16; penalty and gradient are
    unchanged (cos does not depend on the scale; ``eps`` is scaled along).
    """
    params = [p for p in shared_params if p.requires_grad]
    g_s, g_r = scaled_task_gradients(loss_ssl, loss_ref, params, loss_scale, create_graph=True)
    cos = (g_s * g_r).sum() / (g_s.norm() * g_r.norm()).clamp_min(eps * loss_scale ** 2)
    return lam * (1.0 - cos), cos.detach()


# ------------------------------------------------------------------------------------------------------------- DDP
def distributed_world_size() -> int:
    """World size if ``torch.distributed`` is initialised, else 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return 1


def all_reduce_mean_(t: torch.Tensor) -> torch.Tensor:
    """In-place mean over ranks (sum + divide; gloo has no AVG). No-op without an initialised process group."""
    ws = distributed_world_size()
    if ws > 1:
        torch.distributed.all_reduce(t, op=torch.distributed.ReduceOp.SUM)
        t.div_(ws)
    return t


# ------------------------------------------------------------------------------------------------------------ fish
LossFn = Callable[[nn.Module], torch.Tensor]


FISH_ORDERS = ("ssl_first", "ref_first", "alternate")


class FishGradientMatcher:
    """First-order (Fish) gradient matching between ``L_ssl`` and ``L_ref`` on the shared parameters.

    Arguments (defaults are the project's choice):

    - ``inner_lr`` (``eta``, 0.01 = nnU-Net's initial SGD lr): lr of the two inner SGD steps on the clone.
    - ``meta_lr`` (0.5): fraction of the way to the clone the real shared params move (``apply="direct"``).
    - ``order``: ``"ssl_first"`` (default, METHODS), ``"ref_first"`` or ``"alternate"`` (flip every call; gives the
      symmetric objective (2) of the module doc on average over two consecutive steps).
    - ``apply``: ``"direct"`` (default): ``theta += meta_lr * (theta_clone - theta)`` in place and the shared
      ``.grad`` set to ``None`` (so a torch optimizer skips them; note SGD momentum / weight decay then do not act
      on the shared params). ``"grad"``: leave ``theta`` and write the pseudo-gradient
      ``(theta - theta_clone) / inner_lr`` (= ``g_s + g_r - eta H_r g_s + ...``) into the shared ``.grad`` for the
      caller's optimizer (an SGD step of lr ``gamma`` is then a fish move with ``meta_lr = gamma / inner_lr``).
    - ``measure_cosine`` (True): also evaluate the second task at ``theta`` (one extra forward/backward) to get the
      encoder gradient cosine at ``theta`` and that task's head gradient at ``theta``. If False, the second task's
      head gradient is taken from the clone pass (encoder at ``theta - eta g_first``) and ``cosine`` is ``None``.
    - ``average_across_ranks``: ``None`` = automatically when ``torch.distributed`` is initialised.
    - ``skip_non_finite`` (True): if any gradient is not finite, nothing is changed, all ``.grad`` are set to
      ``None`` and ``result["skipped"]`` is True (consistent across ranks since it is checked after averaging).
    - ``loss_scale`` (1.0): losses are multiplied by it before differentiation and gradients divided afterwards
      (static loss scaling for float16 autocast).

    :meth:`step` is the whole training step for the parameters: afterwards call ``optimizer.step()`` (heads, and
    the shared params with ``apply="grad"``). The clone is a cached ``copy.deepcopy`` of the module whose
    parameters and buffers are re-synchronised from the real module at every step (so pass an uncompiled module;
    forward hooks are shared with the clone, its buffer updates (BN running stats) are discarded).
    """

    def __init__(self, inner_lr: float = 0.01, meta_lr: float = 0.5, order: str = "ssl_first",
                 apply: str = "direct", measure_cosine: bool = True, average_across_ranks: Optional[bool] = None,
                 skip_non_finite: bool = True, loss_scale: float = 1.0):
        if order not in FISH_ORDERS:
            raise ValueError(f"order must be 'ssl_first', 'ref_first' or 'alternate', got {order!r}")
        if apply not in ("direct", "grad"):
            raise ValueError(f"apply must be 'direct' or 'grad', got {apply!r}")
        if inner_lr <= 0:
            raise ValueError(f"inner_lr must be > 0, got {inner_lr}")
        self.inner_lr = float(inner_lr)
        self.meta_lr = float(meta_lr)
        self.order = order
        self.apply = apply
        self.measure_cosine = bool(measure_cosine)
        self.average_across_ranks = average_across_ranks
        self.skip_non_finite = bool(skip_non_finite)
        self.loss_scale = float(loss_scale)
        self._clone: Optional[nn.Module] = None
        self._clone_src: Optional[int] = None
        self._calls = 0

    # -------------------------------------------------------------------------------------------------- helpers
    def _average(self) -> bool:
        if self.average_across_ranks is None:
            return distributed_world_size() > 1
        return bool(self.average_across_ranks) and distributed_world_size() > 1

    def _sync_clone(self, module: nn.Module) -> nn.Module:
        real_state = list(module.parameters()) + list(module.buffers())
        ok = self._clone is not None and self._clone_src == id(module)
        if ok:
            clone_state = list(self._clone.parameters()) + list(self._clone.buffers())
            ok = len(clone_state) == len(real_state) and all(
                a.shape == b.shape and a.dtype == b.dtype for a, b in zip(clone_state, real_state))
        if not ok:
            self._clone = copy.deepcopy(module)
            self._clone_src = id(module)
            for p in self._clone.parameters():
                p.grad = None
        else:
            with torch.no_grad():
                for c, r in zip(clone_state, real_state):
                    c.copy_(r)
        self._clone.train(module.training)
        return self._clone

    def _grads(self, loss: torch.Tensor, params: List[torch.Tensor]) -> torch.Tensor:
        g = flat_grad(loss * self.loss_scale if self.loss_scale != 1.0 else loss, params).detach()
        return g / self.loss_scale if self.loss_scale != 1.0 else g

    @staticmethod
    def _split(flat: torch.Tensor, params: List[torch.Tensor]) -> List[torch.Tensor]:
        out, i = [], 0
        for p in params:
            n = p.numel()
            out.append(flat[i:i + n].view_as(p))
            i += n
        return out

    # ----------------------------------------------------------------------------------------------------- step
    def step(self, real_module: nn.Module, shared_param_names: Iterable[str], ssl_loss_fn: LossFn,
             ref_loss_fn: LossFn) -> Dict[str, object]:
        """One fish step. ``ssl_loss_fn(module)`` / ``ref_loss_fn(module)`` run the forward pass of ``module`` on
        this step's (fixed) batch and return the scalar loss; they are called on the real module and on the
        clone, so they must use their argument (and draw any randomness, e.g. masks, outside or reproducibly).

        ``shared_param_names``: names from ``real_module.named_parameters()`` that get the fish update (the
        encoder); every other trainable parameter gets its task gradient in ``.grad`` (overwritten, not
        accumulated).

        Returns a dict: ``loss_ssl``, ``loss_ref`` (local losses at ``theta``; ``loss_ref``/``loss_ssl`` of the
        second task is from the clone pass when ``measure_cosine`` is False), ``loss_second_at_clone``,
        ``cosine`` (cosine of the rank-averaged ``g_ssl`` and ``g_ref`` on the shared params, both at ``theta``,
        i.e. the gradients of the first inner step's starting point; ``None`` if not measured), ``order``
        (``"ssl_first"``/``"ref_first"`` used), ``displacement_norm`` (``|theta_clone - theta|``), ``skipped``.
        """
        shared = set(shared_param_names)
        named = [(n, p) for n, p in real_module.named_parameters() if p.requires_grad]
        names = [n for n, _ in named]
        missing = shared - set(n for n, _ in real_module.named_parameters())
        if missing:
            raise ValueError(f"shared parameter names not found in the module: {sorted(missing)[:5]}")
        if not shared:
            raise ValueError("shared_param_names is empty: nothing to match")
        s_idx = [i for i, n in enumerate(names) if n in shared]
        h_idx = [i for i, n in enumerate(names) if n not in shared]
        params = [p for _, p in named]
        s_params = [params[i] for i in s_idx]
        h_params = [params[i] for i in h_idx]
        ordered = s_params + h_params
        n_s = sum(p.numel() for p in s_params)

        order = self.order
        if order == "alternate":
            order = "ssl_first" if self._calls % 2 == 0 else "ref_first"
        self._calls += 1
        fns = {"ssl": ssl_loss_fn, "ref": ref_loss_fn}
        first, second = ("ssl", "ref") if order == "ssl_first" else ("ref", "ssl")
        average = self._average()

        # ---- gradients at theta (real module)
        losses: Dict[str, float] = {}
        at_theta: Dict[str, torch.Tensor] = {}
        for task in ((first, second) if self.measure_cosine else (first,)):
            loss = fns[task](real_module)
            losses[task] = float(loss.detach())
            at_theta[task] = self._grads(loss, ordered)
        if average:
            buf = torch.cat([at_theta[t] for t in at_theta])
            all_reduce_mean_(buf)
            chunks = buf.split([at_theta[t].numel() for t in at_theta])
            at_theta = {t: c for t, c in zip(at_theta, chunks)}

        # ---- clone: inner step on the first task (gradient at theta), then gradient of the second at the clone
        clone = self._sync_clone(real_module)
        c_named = dict(clone.named_parameters())
        c_ordered = [c_named[names[i]] for i in s_idx + h_idx]
        c_shared = c_ordered[:len(s_params)]
        g_first_s = at_theta[first][:n_s]
        with torch.no_grad():
            for p, g in zip(c_shared, self._split(g_first_s, s_params)):
                p.sub_(self.inner_lr * g)
        loss2 = fns[second](clone)
        loss2_value = float(loss2.detach())
        if self.measure_cosine:
            g2 = self._grads(loss2, c_shared)
        else:
            g2_all = self._grads(loss2, c_ordered)
            g2 = g2_all[:n_s]
        if average:
            if self.measure_cosine:
                all_reduce_mean_(g2)
            else:
                all_reduce_mean_(g2_all)
                g2 = g2_all[:n_s]
        if second not in losses:
            losses[second] = loss2_value

        delta = -self.inner_lr * (g_first_s + g2)  # theta_clone - theta on the shared params

        # ---- head gradients: each task's own gradient
        head_grad = at_theta[first][n_s:].clone()
        if self.measure_cosine:
            head_grad += at_theta[second][n_s:]
        else:
            head_grad += g2_all[n_s:]

        cosine = gradient_cosine(at_theta["ssl"][:n_s], at_theta["ref"][:n_s]) if self.measure_cosine else None

        finite = bool(torch.isfinite(delta).all()) and bool(torch.isfinite(head_grad).all())
        result = {
            "loss_ssl": losses["ssl"], "loss_ref": losses["ref"], "loss_second_at_clone": loss2_value,
            "cosine": cosine, "order": order, "displacement_norm": float(delta.norm()),
            "skipped": False,
        }
        if self.skip_non_finite and not finite:
            for p in params:
                p.grad = None
            result["skipped"] = True
            return result

        # ---- apply
        with torch.no_grad():
            for p, d in zip(s_params, self._split(delta, s_params)):
                if self.apply == "direct":
                    p.add_(self.meta_lr * d)
                    p.grad = None
                else:
                    p.grad = (-d / self.inner_lr).clone()
            for p, g in zip(h_params, self._split(head_grad, h_params)):
                p.grad = g.clone()
        return result
