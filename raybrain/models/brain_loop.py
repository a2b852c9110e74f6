"""The brain-in-the-loop structural alignment model (torch + torch-geometric + POT).

Method: "Human-like Cognitive Generalization for Large Models via Brain-in-the-loop
Supervision" (arXiv 2505.09085). Brain and model concept representations become graphs;
optimal transport finds correspondences between them (step 1) and Gromov-Wasserstein plus
a local-neighbourhood term align their structure (step 2), so the model side inherits the
brain's conceptual hierarchy. The authors' code (JxuanC/mental-representation-guided-
learning) was read for facts; this is raybrain's own implementation.

Modules
-------
- brain encoder: :class:`VoxelTransformerEncoder` over voxel tokens (paper: 12 layers,
  8 heads; small here by default) or, when the user has only an RDM,
  :class:`RDMRowEncoder`, an MLP over each concept's dissimilarities to the training
  concepts (:meth:`raybrain.data.concepts.ConceptData.brain_inputs`); the RDM itself is
  then the brain graph's structure.
- model adaptor: :class:`MLPAdaptor` (256 hidden, as the paper) over frozen backbone
  features. **Its output is the model's representation**: what is evaluated and what the
  structure step shapes.
- :class:`MultiplexGNN`: attention GNN (3 layers, 4 heads; ``GATv2Conv`` or
  ``TransformerConv``) over one graph holding both modalities' nodes, with intra-modality
  kNN edges (brain: from the brain RDM, K1; model: from the current adaptor output, K2)
  and cross-modality kNN edges (a second relation with its own convolution). Its output
  gives the score matrix ``S`` (cosine similarity of brain and model node embeddings)
  from which the soft assignment is computed.

Losses (:class:`BrainLoopModel`), on a batch of N paired training concepts (row i of
the brain side and of the model side are the same concept):

- step 1 (correspondence): ``L1 = OT + lambda1 * CE`` with ``M = (1 - S) / 2``, ``OT`` =
  :func:`~raybrain.align.transport.ot_matching_loss` of the log-domain Sinkhorn plan
  (epsilon ``sinkhorn_reg``, ``sinkhorn_iter`` = 100 iterations) and ``CE`` =
  :func:`~raybrain.align.transport.correspondence_ce` (row/column softmax of ``-M / reg``).
- step 2 (structure): ``L2 = local_weight * LocalCE + lambda2 * GW`` with ``GW`` =
  :func:`~raybrain.align.gw.gw_loss` between the normalised cosine distances of the model
  representation and the brain's structure, and ``LocalCE`` =
  :func:`~raybrain.align.neighbourhoods.local_structure_ce` on Gumbel-sampled K1/K2
  neighbourhoods.

Our reading of the weights. The paper writes ``L1 = OT + CE`` (lambda1 = 0.1) and
``L2 = local-structure CE + GW`` (lambda2 = 100). The authors' training loop computes
``mean(-scores[labels]) + 0.1 * ntxent`` (so lambda1 multiplies the CE, not the OT term)
and ``+ F.cross_entropy(x_soft, y_soft) + 100 * sum(gwd) / log(sum(labels)) +
10 * mean(-P[labels])`` (so lambda2 = 100 multiplies GW, the local CE has weight 1, and an
extra plan-mass term weighted 10 appears that the paper does not name). We use
``lambda1 * CE`` and ``lambda2 * GW`` with the local CE at ``local_weight`` (1); the
extra plan-mass term is not used (its role, rewarding plan mass on correct
correspondences, is the OT term's). The authors' GW is normalised by
``log(#correct neighbour pairs)``; ours is a GW value on max-normalised costs (in [0, 1]).

Brain term and arms. The model side also trains on its own task, an exemplar-contrastive
loss (:meth:`BrainLoopModel.self_loss`: two exemplars of each concept, each with feature
dropout, must recognise each other among the batch; weight ``self_weight``). The brain
terms are multiplied by ``brain_weight`` (the parameter playing alpha's role):

- ``brain`` / ``shuffled`` / ``noise`` arms: ``brain_weight > 0`` with real, shuffled or
  spectrum-surrogate brain data;
- ``none`` and ``l2`` arms: ``brain_weight = 0``: the adaptor is trained only on the
  exemplar-contrastive task (no OT, CE, GW or local term is computed; the brain encoder
  and the GNN get no gradient); ``l2`` adds weight decay in the optimiser;
- ``no-gw`` ablation (L1 only): ``lambda2 = 0`` and ``local_weight = 0``.

Where raybrain differs from the authors' code, and why:

- Two steps: the authors sum both losses in one backward pass per batch; we expose them
  separately (:meth:`~BrainLoopModel.step1_loss`, :meth:`~BrainLoopModel.step2_loss`) for
  the paper's alternating two-step optimisation.
- Nodes are concepts (one exemplar each per step, and one brain pattern), not a batch of
  images with category-equality labels; the correspondence on training concepts is then
  one-to-one and known, and step 2 uses it (the paper uses step 1's putative matches;
  the authors' code a Gumbel sample of the plan).
- The brain structure step 2 aligns to is, by default, the brain *data*'s RDM
  (``structure_source="data"``): the target cannot drift toward the model's structure as
  the brain encoder trains. ``"encoder"`` uses the brain encoder's output, as the authors.
- GW: one GW problem over the batch through POT (envelope gradient), on max-normalised
  costs; the authors solve one small GW per node's neighbourhood with their own IPOT in
  plain torch. The global value is the quantity the paper correlates with accuracy.
- GNN: sparse kNN graphs with torch-geometric convolutions and a cross relation; the
  authors' is a dense SuperGlue attentional GNN with self layers only (no cross
  messages). The model representation is the adaptor output, not a GNN output, so an
  item's embedding never depends on which other items share its batch.
- Dustbin: off by default (``dustbin=False``). The authors' ``log_optimal_transport``
  has one but is called with ``use_bin=False`` and re-creates its "learnable" score as a
  fresh ``Parameter(1.0)`` on every call (never optimised). Our training graphs are
  paired one-to-one, so a dustbin has nothing to absorb; ``dustbin=True`` adds a real
  learnable bin cost (for unpaired nodes).
- Costs are normalised (``(1 - S) / 2`` in [0, 1] for OT; max 1 for GW) and the Gumbel
  temperature scales the similarities (see :mod:`raybrain.align.neighbourhoods`).
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raybrain.errors import SpecError
from raybrain.models.graphs import cross_knn_edges, knn_graph, pairwise_distances

if TYPE_CHECKING:  # pragma: no cover - typing only
    from raybrain.data.concepts import ConceptData

__all__ = ["BrainLoopConfig", "BrainLoopModel", "ConceptBatch", "MLPAdaptor",
           "MultiplexGNN", "RDMRowEncoder", "VoxelTransformerEncoder", "make_batch",
           "iter_batches", "METRIC_DIRECTIONS", "GNN_CONVS"]

GNN_CONVS = ("gatv2", "transformer")
STRUCTURE_SOURCES = ("data", "encoder")

#: Direction of every metric :meth:`BrainLoopModel.evaluate` can return.
METRIC_DIRECTIONS = {
    "gw_distance": "min",
    "match_top1": "max",
    "match_top5": "max",
    "retrieval_top1": "max",
    "ot_match_top1": "max",
    "neighbour_overlap": "max",
    "rsa": "max",
    "silhouette": "max",
    "one_shot": "max",
}


@dataclass
class BrainLoopConfig:
    """Knobs of :class:`BrainLoopModel` (defaults: small, CPU-fast).

    Paper settings: ``brain_depth=12, brain_heads=8, gnn_layers=3, gnn_heads=4,
    adaptor_hidden=256, k1=k2=20, lambda1=0.1, lambda2=100, tau=1 (on the authors' scale),
    sinkhorn_iter=100``, batch 256, Adam lr 2e-5 (optimiser and batch size are the
    caller's).

    Attributes
    ----------
    embed_dim : int
        Width of the shared embedding space (adaptor and brain encoder outputs, GNN).
    adaptor_hidden : int
        Hidden units of the model-side MLP adaptor.
    brain_width, brain_depth, brain_heads, brain_tokens : int
        Voxel transformer: token width, layers, attention heads, number of voxel tokens
        (the voxels are cut into this many contiguous chunks).
    brain_hidden : int
        Hidden units of the RDM-row encoder (RDM-only brain data).
    gnn_layers, gnn_heads : int
    gnn_conv : {"gatv2", "transformer"}
    k1, k2 : int
        Brain (K1) and model (K2) neighbourhood sizes: the kNN graphs' degree and the
        Gumbel neighbourhoods of the local term. Must be < the number of training
        concepts per batch.
    lambda1 : float
        Weight of the CE term in L1 (paper 0.1).
    lambda2 : float
        Weight of the GW term in L2 (paper 100).
    local_weight : float
        Weight of the local-structure CE in L2 (paper/authors: 1).
    brain_weight : float
        Multiplies every brain term (alpha's role; 0 = the ``none``/``l2`` arms).
    self_weight : float
        Weight of the model's own exemplar-contrastive task.
    self_temperature : float
        Temperature of that task's softmax over cosine similarities.
    feature_dropout : float
        Dropout on the backbone features in the own task's two views.
    tau : float
        Gumbel temperature of the neighbourhoods (similarities in [-1, 0] are divided by it).
    sinkhorn_reg : float
        Sinkhorn epsilon on the OT cost ``(1 - S) / 2`` (also the CE temperature).
    sinkhorn_iter : int
        Sinkhorn iterations (paper 100).
    gw_mode : {"envelope", "entropic"}
    gw_solver : {"exact", "entropic"}
        Plan solver of the envelope route and of the evaluation's GW distance.
    gw_epsilon : float
        Entropic GW epsilon (``gw_solver="entropic"``, ``gw_mode="entropic"`` and the
        entropic half of ``eval_gw_solver="best"``).
    eval_gw_solver : {"best", "exact", "entropic"}
        Solver of the evaluation's GW distance and plan
        (:func:`~raybrain.align.gw.gw_distance`).
    structure_source : {"data", "encoder"}
        The brain structure step 2 aligns to: the brain data's RDM or the brain encoder's
        output.
    dustbin : bool
        Add a learnable dustbin to the OT problem.
    """

    embed_dim: int = 32
    adaptor_hidden: int = 256
    brain_width: int = 32
    brain_depth: int = 2
    brain_heads: int = 4
    brain_tokens: int = 8
    brain_hidden: int = 128
    gnn_layers: int = 3
    gnn_heads: int = 4
    gnn_conv: str = "gatv2"
    k1: int = 20
    k2: int = 20
    lambda1: float = 0.1
    lambda2: float = 100.0
    local_weight: float = 1.0
    brain_weight: float = 1.0
    self_weight: float = 1.0
    self_temperature: float = 0.1
    feature_dropout: float = 0.1
    tau: float = 0.1
    sinkhorn_reg: float = 0.05
    sinkhorn_iter: int = 100
    gw_mode: str = "envelope"
    gw_solver: str = "exact"
    gw_epsilon: float = 5e-3
    eval_gw_solver: str = "best"
    structure_source: str = "data"
    dustbin: bool = False

    def validate(self, n_nodes: int | None = None) -> BrainLoopConfig:
        """Check every knob; with ``n_nodes`` (concepts per training batch) also K1, K2.

        Raises
        ------
        SpecError
            One line naming the knob, what was expected and the value received.
        """
        from raybrain.align.gw import GW_DISTANCE_SOLVERS, GW_MODES, GW_SOLVERS

        def _int(name, low):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise SpecError(f"{name} must be an integer >= {low}, got {v!r}")

        def _num(name, positive):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, (int, float, np.number)) \
                    or not math.isfinite(v) or (v <= 0 if positive else v < 0):
                raise SpecError(f"{name} must be a finite number {'> 0' if positive else '>= 0'}"
                                f", got {v!r}")

        for name in ("embed_dim", "adaptor_hidden", "brain_width", "brain_depth", "brain_heads",
                     "brain_tokens", "brain_hidden", "gnn_layers", "gnn_heads", "k1", "k2",
                     "sinkhorn_iter"):
            _int(name, 1)
        for name in ("lambda1", "lambda2", "local_weight", "brain_weight", "self_weight"):
            _num(name, positive=False)
        for name in ("self_temperature", "tau", "sinkhorn_reg", "gw_epsilon"):
            _num(name, positive=True)
        if not 0 <= self.feature_dropout < 1:
            raise SpecError(f"feature_dropout must be in [0, 1), got {self.feature_dropout!r}")
        if self.embed_dim % self.gnn_heads:
            raise SpecError(f"embed_dim ({self.embed_dim}) must be divisible by gnn_heads "
                            f"({self.gnn_heads})")
        if self.brain_width % self.brain_heads:
            raise SpecError(f"brain_width ({self.brain_width}) must be divisible by brain_heads "
                            f"({self.brain_heads})")
        for name, allowed in (("gnn_conv", GNN_CONVS), ("gw_mode", GW_MODES),
                              ("gw_solver", GW_SOLVERS),
                              ("eval_gw_solver", GW_DISTANCE_SOLVERS),
                              ("structure_source", STRUCTURE_SOURCES)):
            if getattr(self, name) not in allowed:
                raise SpecError(f"{name} must be one of {list(allowed)}, got "
                                f"{getattr(self, name)!r}")
        if n_nodes is not None:
            for name in ("k1", "k2"):
                if getattr(self, name) >= n_nodes:
                    raise SpecError(f"{name.upper()} must be < the number of concepts per "
                                    f"training batch ({n_nodes}), got {getattr(self, name)}")
        return self


# ------------------------------------------------------------------------------ modules

def _standardise(x: torch.Tensor) -> torch.Tensor:
    """Z-score each row across its features (parameter-free input scaling)."""
    return (x - x.mean(dim=1, keepdim=True)) / (x.std(dim=1, keepdim=True) + 1e-6)


class MLPAdaptor(nn.Module):
    """Model-side adaptor: row z-score -> Linear(d, hidden) -> ReLU -> Linear(hidden, out).

    Input (n, d) frozen features; output (n, out_dim), the model's representation.
    """

    def __init__(self, in_dim: int, hidden: int = 256, out_dim: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_standardise(x))


class RDMRowEncoder(nn.Module):
    """Brain encoder for RDM-only data: row z-score -> MLP (one hidden GELU layer).

    Input (n, n_anchors): each concept's dissimilarities to the training concepts;
    output (n, out_dim).
    """

    def __init__(self, in_dim: int, hidden: int = 128, out_dim: int = 32):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(_standardise(x))


class VoxelTransformerEncoder(nn.Module):
    """Transformer over voxel tokens (the paper's fMRI ViT, generalised to any voxel count).

    Each pattern is z-scored across voxels, zero-padded to ``n_tokens * chunk`` voxels and
    cut into ``n_tokens`` contiguous chunks; chunk ``t`` is embedded by its own linear map
    (voxels at different positions are different inputs), a learned CLS token is
    prepended, learned position embeddings added, ``depth`` pre-norm transformer layers
    (``heads`` heads, feed-forward ``4 * width``, GELU, no dropout) applied, and the
    layer-normed CLS token projected to ``out_dim``.

    Input (n, n_voxels); output (n, out_dim).
    """

    def __init__(self, n_voxels: int, out_dim: int = 32, n_tokens: int = 8, width: int = 32,
                 depth: int = 2, heads: int = 4):
        super().__init__()
        if n_voxels < 2:
            raise SpecError(f"the voxel encoder needs >= 2 voxels, got {n_voxels}")
        n_tokens = min(n_tokens, n_voxels)
        self.n_voxels = n_voxels
        self.n_tokens = n_tokens
        self.chunk = math.ceil(n_voxels / n_tokens)
        self.token_weight = nn.Parameter(torch.randn(n_tokens, self.chunk, width)
                                         / math.sqrt(self.chunk))
        self.token_bias = nn.Parameter(torch.zeros(n_tokens, width))
        self.cls = nn.Parameter(0.02 * torch.randn(1, 1, width))
        self.pos = nn.Parameter(0.02 * torch.randn(1, n_tokens + 1, width))
        layer = nn.TransformerEncoderLayer(width, heads, dim_feedforward=4 * width, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.out = nn.Linear(width, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = _standardise(x)
        pad = self.n_tokens * self.chunk - self.n_voxels
        if pad:
            x = F.pad(x, (0, pad))
        tokens = torch.einsum("ntc,tcw->ntw", x.reshape(x.shape[0], self.n_tokens, self.chunk),
                              self.token_weight) + self.token_bias
        h = torch.cat([self.cls.expand(x.shape[0], -1, -1), tokens], dim=1) + self.pos
        h = self.blocks(h)
        return self.out(self.norm(h[:, 0]))


def _conv(kind: str, dim: int, heads: int, self_loops: bool):
    from torch_geometric.nn import GATv2Conv, TransformerConv

    if kind == "gatv2":
        return GATv2Conv(dim, dim // heads, heads=heads, concat=True, add_self_loops=self_loops)
    # root_weight=True: torch-geometric builds the skip weight either way, and an unused
    # parameter would sit in the optimiser and the checkpoint doing nothing
    return TransformerConv(dim, dim // heads, heads=heads, concat=True, root_weight=True)


class MultiplexGNN(nn.Module):
    """Attention GNN over a two-relation (intra-modality, cross-modality) graph.

    Layer ``l``: ``m = conv_intra_l(h, E_intra) + conv_cross_l(h, E_cross)``, then
    ``h = LayerNorm(h + GELU(m))``. Convolutions: ``GATv2Conv`` (intra with self-loops,
    cross without) or ``TransformerConv`` (with its root/skip weight); ``heads`` heads of
    width ``dim / heads``, concatenated. Weights are shared by
    the two modalities (one node set, the paper's "shared multiplex GNN").

    Input (n, dim) node features, edge indices (2, E); output (n, dim).
    """

    def __init__(self, dim: int, layers: int = 3, heads: int = 4, conv: str = "gatv2"):
        super().__init__()
        if conv not in GNN_CONVS:
            raise SpecError(f"gnn_conv must be one of {list(GNN_CONVS)}, got {conv!r}")
        self.intra = nn.ModuleList([_conv(conv, dim, heads, True) for _ in range(layers)])
        self.cross = nn.ModuleList([_conv(conv, dim, heads, False) for _ in range(layers)])
        self.norms = nn.ModuleList([nn.LayerNorm(dim) for _ in range(layers)])

    def forward(self, x: torch.Tensor, intra_edges: torch.Tensor,
                cross_edges: torch.Tensor | None = None) -> torch.Tensor:
        h = x
        for intra, cross, norm in zip(self.intra, self.cross, self.norms):
            m = intra(h, intra_edges)
            if cross_edges is not None and cross_edges.numel():
                m = m + cross(h, cross_edges)
            h = norm(h + F.gelu(m))
        return h


# ------------------------------------------------------------------------------ batches

@dataclass
class ConceptBatch:
    """N paired concepts (row i of every field is the same concept).

    Attributes
    ----------
    concepts : torch.Tensor of int64, shape (N,)
        Concept indices into the :class:`~raybrain.data.concepts.ConceptData`.
    brain : torch.Tensor, shape (N, brain_dim)
        Brain encoder inputs.
    features : torch.Tensor, shape (N, d)
        One random exemplar's backbone features per concept.
    features2 : torch.Tensor, shape (N, d)
        Another exemplar (the same one when a concept has only one), for the own task.
    brain_dist : torch.Tensor, shape (N, N)
        The brain RDM on these concepts, divided by its maximum.
    seed : int
        Seed of this batch's Gumbel noise and feature dropout.
    """

    concepts: torch.Tensor
    brain: torch.Tensor
    features: torch.Tensor
    features2: torch.Tensor
    brain_dist: torch.Tensor
    seed: int

    def generator(self) -> torch.Generator:
        """A fresh CPU generator seeded with :attr:`seed` (same batch, same noise)."""
        return torch.Generator().manual_seed(self.seed)


def make_batch(data: ConceptData, concept_idx, anchors, rng: np.random.Generator,
               device: str | torch.device = "cpu") -> ConceptBatch:
    """Build a :class:`ConceptBatch` of the given concepts.

    Draws from ``rng``, in order: one exemplar per concept, a second exemplar per concept
    (different from the first when the concept has >= 2), and the batch seed.

    Parameters
    ----------
    data : ConceptData
    concept_idx : array_like of int, shape (N,)
    anchors : array_like of int
        Training concepts (brain inputs of RDM-only data are dissimilarities to them).
    rng : np.random.Generator
    device : str or torch.device
    """
    from raybrain.align.gw import normalise_cost

    idx = np.asarray(concept_idx, dtype=np.int64)
    first = np.empty(len(idx), dtype=np.int64)
    second = np.empty(len(idx), dtype=np.int64)
    for pos, c in enumerate(idx):
        items = np.flatnonzero(data.item_concept == c)
        a = rng.integers(len(items))
        b = (a + 1 + rng.integers(len(items) - 1)) % len(items) if len(items) > 1 else a
        first[pos], second[pos] = items[a], items[b]
    seed = int(rng.integers(2**62))
    bd = normalise_cost(np.asarray(data.brain_rdm, dtype=np.float64)[np.ix_(idx, idx)])

    def t(x):
        return torch.as_tensor(np.asarray(x, dtype=np.float32), device=device)

    return ConceptBatch(concepts=torch.as_tensor(idx, device=device),
                        brain=t(data.brain_inputs(idx, anchors)),
                        features=t(data.features[first]), features2=t(data.features[second]),
                        brain_dist=t(bd), seed=seed)


def iter_batches(data: ConceptData, train_idx, batch_size: int, rng: np.random.Generator,
                 min_size: int = 2, device: str | torch.device = "cpu") -> list[ConceptBatch]:
    """One epoch of batches over the training concepts, in a random order.

    The concepts are permuted with ``rng`` and cut into chunks of ``batch_size``; a last
    chunk smaller than ``min_size`` (e.g. ``max(K1, K2) + 1``) is merged into the one
    before it, so every batch is large enough for the neighbourhoods.

    Returns
    -------
    list of ConceptBatch
    """
    train = np.asarray(train_idx, dtype=np.int64)
    if isinstance(batch_size, bool) or int(batch_size) != batch_size or batch_size < min_size:
        raise SpecError(f"batch_size must be an integer >= {min_size} (K + 1), got "
                        f"{batch_size!r}")
    order = rng.permutation(train)
    chunks = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
    if len(chunks) > 1 and len(chunks[-1]) < min_size:
        chunks[-2] = np.concatenate([chunks[-2], chunks.pop()])
    return [make_batch(data, c, train, rng, device) for c in chunks]


# -------------------------------------------------------------------------------- model

def _cosine_cost(x: torch.Tensor) -> torch.Tensor:
    """``1 - cos`` between rows, zero diagonal, clamped at 0 (differentiable)."""
    u = F.normalize(x, dim=1)
    c = (1.0 - u @ u.T).clamp_min(0.0)
    return c * (1.0 - torch.eye(c.shape[0], dtype=c.dtype, device=c.device))


class BrainLoopModel(nn.Module):
    """Brain encoder + model adaptor + multiplex GNN, with the two steps' losses.

    Build with :meth:`for_data`. Training (the caller owns the optimiser(s)): for each
    batch of :meth:`batches`, minimise :meth:`step1_loss`, then :meth:`step2_loss`
    (the paper's alternating two-step optimisation; the authors use Adam, lr 2e-5, over
    all parameters); :meth:`evaluate` on held-out concepts.

    Trainable state: ``state_dict()`` holds everything (submodules ``adaptor`` - the model
    side -, ``brain_encoder``, ``gnn`` and, with ``dustbin=True``, ``dustbin_cost``); with
    ``brain_weight = 0`` only ``adaptor`` receives gradients. All randomness of a step
    (exemplar draws, Gumbel noise, feature dropout) comes from the numpy ``rng`` given to
    :meth:`batches` (each batch carries a seed), so checkpointing that ``rng``, the
    model and the optimiser state resumes a run exactly.

    Parameters
    ----------
    config : BrainLoopConfig
    brain_dim : int
        Brain input width (voxels, or number of anchor concepts for RDM-only data).
    feature_dim : int
        Backbone feature width.
    brain_kind : {"voxels", "rdm"}
    """

    def __init__(self, config: BrainLoopConfig, brain_dim: int, feature_dim: int,
                 brain_kind: str = "voxels"):
        super().__init__()
        self.config = config.validate()
        c = config
        if brain_kind not in ("voxels", "rdm"):
            raise SpecError(f"brain_kind must be 'voxels' or 'rdm', got {brain_kind!r}")
        self.brain_kind = brain_kind
        self.adaptor = MLPAdaptor(feature_dim, c.adaptor_hidden, c.embed_dim)
        if brain_kind == "voxels":
            self.brain_encoder: nn.Module = VoxelTransformerEncoder(
                brain_dim, c.embed_dim, c.brain_tokens, c.brain_width, c.brain_depth,
                c.brain_heads)
        else:
            self.brain_encoder = RDMRowEncoder(brain_dim, c.brain_hidden, c.embed_dim)
        self.gnn = MultiplexGNN(c.embed_dim, c.gnn_layers, c.gnn_heads, c.gnn_conv)
        self.dustbin_cost = nn.Parameter(torch.tensor(0.5)) if c.dustbin else None

    @classmethod
    def for_data(cls, data: ConceptData, train_idx, config: BrainLoopConfig,
                 batch_size: int | None = None) -> BrainLoopModel:
        """A model sized for ``data``, after checking the config against it.

        ``K1`` and ``K2`` must be below the number of concepts in a training batch
        (``min(batch_size, len(train_idx))``).
        """
        train = np.asarray(train_idx, dtype=np.int64)
        n_nodes = len(train) if batch_size is None else min(int(batch_size), len(train))
        config.validate(n_nodes)
        brain_dim = data.brain_inputs(train[:1], train).shape[1]
        return cls(config, brain_dim, data.features.shape[1], data.brain_kind)

    def batches(self, data: ConceptData, train_idx, batch_size: int,
                rng: np.random.Generator) -> list[ConceptBatch]:
        """One epoch of :func:`iter_batches` on the model's device, each batch holding at
        least ``max(K1, K2) + 1`` concepts."""
        device = next(self.parameters()).device
        return iter_batches(data, train_idx, batch_size, rng,
                            min_size=max(self.config.k1, self.config.k2) + 1, device=device)

    # ---- representations
    def embed_model(self, features: torch.Tensor) -> torch.Tensor:
        """The model's representation: adaptor output, (n, d) -> (n, embed_dim)."""
        return self.adaptor(features)

    def embed_brain(self, brain: torch.Tensor) -> torch.Tensor:
        """Brain encoder output, (n, brain_dim) -> (n, embed_dim)."""
        return self.brain_encoder(brain)

    def match_scores(self, brain: torch.Tensor, features: torch.Tensor,
                     brain_dist: torch.Tensor) -> torch.Tensor:
        """Score matrix of the soft assignment: GNN cosine similarities, brain x model.

        The stacked graph holds ``nb`` brain nodes then ``nm`` model nodes. Edges: brain
        kNN (``min(K1, nb - 1)``) from ``brain_dist``; model kNN (``min(K2, nm - 1)``) from
        the adaptor output; cross kNN (``min(K1, K2, nb, nm)``) from the cosine distances
        between the encoders' outputs (graphs carry no gradient; features do).

        Parameters
        ----------
        brain : torch.Tensor, shape (nb, brain_dim)
        features : torch.Tensor, shape (nm, d)
        brain_dist : torch.Tensor, shape (nb, nb)

        Returns
        -------
        torch.Tensor, shape (nb, nm), in [-1, 1]
        """
        c = self.config
        xb, xm = self.embed_brain(brain), self.embed_model(features)
        nb, nm = xb.shape[0], xm.shape[0]
        e_b = knn_graph(min(c.k1, nb - 1), dist=brain_dist)
        e_m = knn_graph(min(c.k2, nm - 1), x=xm) + nb
        e_x = cross_knn_edges(pairwise_distances(xb.detach(), xm.detach()),
                              min(c.k1, c.k2, nb, nm))
        h = self.gnn(torch.cat([xb, xm]), torch.cat([e_b, e_m], dim=1), e_x)
        hb, hm = F.normalize(h[:nb], dim=1), F.normalize(h[nb:], dim=1)
        return hb @ hm.T

    # ---- losses
    def self_loss(self, batch: ConceptBatch, generator: torch.Generator | None = None
                  ) -> torch.Tensor:
        """The model's own task: exemplar-contrastive recognition of concepts.

        Views ``v1 = adaptor(dropout(features))``, ``v2 = adaptor(dropout(features2))``
        (dropout ``feature_dropout``, masks from ``generator``); the loss is the
        symmetric cross-entropy of ``cos(v1_i, v2_j) / self_temperature`` with targets
        ``i = j``. Uses no brain data.
        """
        c = self.config
        g = batch.generator() if generator is None else generator

        def view(x):
            if c.feature_dropout > 0:
                keep = torch.bernoulli(torch.full(x.shape, 1.0 - c.feature_dropout),
                                       generator=g).to(x.device, x.dtype)
                x = x * keep / (1.0 - c.feature_dropout)
            return F.normalize(self.embed_model(x), dim=1)

        v1, v2 = view(batch.features), view(batch.features2)
        logits = v1 @ v2.T / c.self_temperature
        target = torch.arange(logits.shape[0], device=logits.device)
        return 0.5 * (F.cross_entropy(logits, target) + F.cross_entropy(logits.T, target))

    def step1_loss(self, batch: ConceptBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Step 1 (correspondence): ``brain_weight * (OT + lambda1 * CE) + self_weight * own``.

        Returns
        -------
        loss : torch.Tensor, shape ()
        parts : dict of str -> float
            ``ot``, ``ce`` (absent when ``brain_weight = 0``) and ``self``.
        """
        from raybrain.align.transport import (add_dustbin, correspondence_ce,
                                              ot_matching_loss, sinkhorn_log_plan)

        c = self.config
        g = batch.generator()
        parts: dict[str, float] = {}
        loss = torch.zeros((), device=batch.features.device)
        if c.brain_weight > 0:
            S = self.match_scores(batch.brain, batch.features, batch.brain_dist)
            M = (1.0 - S) / 2.0
            n = M.shape[0]
            target = torch.arange(n, device=M.device)
            if self.dustbin_cost is not None:
                M_aug, a, b = add_dustbin(M, self.dustbin_cost)
                log_plan = sinkhorn_log_plan(M_aug, c.sinkhorn_reg, a, b, c.sinkhorn_iter)
                ot_term = ot_matching_loss(log_plan[:n, :n], target, torch.log(a[:n]))
            else:
                log_plan = sinkhorn_log_plan(M, c.sinkhorn_reg, n_iter=c.sinkhorn_iter)
                ot_term = ot_matching_loss(log_plan, target)
            ce_term = correspondence_ce(M, c.sinkhorn_reg, target)
            loss = loss + c.brain_weight * (ot_term + c.lambda1 * ce_term)
            parts.update(ot=float(ot_term.detach()), ce=float(ce_term.detach()))
        if c.self_weight > 0:
            own = self.self_loss(batch, g)
            loss = loss + c.self_weight * own
            parts["self"] = float(own.detach())
        return loss, parts

    def structure_costs(self, batch: ConceptBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """(model cost, brain cost) of step 2, both (N, N), max-normalised.

        Model: ``1 - cos`` of the adaptor output. Brain: the batch's RDM
        (``structure_source="data"``) or ``1 - cos`` of the brain encoder output
        (``"encoder"``).
        """
        from raybrain.align.gw import normalise_cost

        cy = normalise_cost(_cosine_cost(self.embed_model(batch.features)))
        if self.config.structure_source == "encoder":
            cx = normalise_cost(_cosine_cost(self.embed_brain(batch.brain)))
        else:
            cx = batch.brain_dist
        return cy, cx

    def step2_loss(self, batch: ConceptBatch) -> tuple[torch.Tensor, dict[str, float]]:
        """Step 2 (structure): ``brain_weight * (local_weight * LocalCE + lambda2 * GW)
        + self_weight * own``.

        GW: :func:`~raybrain.align.gw.gw_loss` between the costs of
        :meth:`structure_costs` (``gw_mode``, ``gw_solver``, ``gw_epsilon``; the exact
        solver starts from the known pairing ``I / N``). LocalCE:
        :func:`~raybrain.align.neighbourhoods.local_structure_ce` with scores ``-cost``,
        K1 (brain), K2 (model), ``tau``, noise from the batch seed.

        Returns
        -------
        loss : torch.Tensor, shape ()
        parts : dict of str -> float
            ``gw``, ``local`` (each absent when its weight or ``brain_weight`` is 0) and
            ``self``.
        """
        from raybrain.align.gw import gw_loss
        from raybrain.align.neighbourhoods import local_structure_ce

        c = self.config
        g = batch.generator()
        parts: dict[str, float] = {}
        loss = torch.zeros((), device=batch.features.device)
        if c.brain_weight > 0 and (c.lambda2 > 0 or c.local_weight > 0):
            cy, cx = self.structure_costs(batch)
            n = cy.shape[0]
            brain_term = torch.zeros((), device=cy.device)
            if c.lambda2 > 0:
                g0 = np.eye(n) / n if c.gw_solver == "exact" else None
                gw = gw_loss(cy, cx, mode=c.gw_mode, solver=c.gw_solver, epsilon=c.gw_epsilon,
                             G0=g0)
                brain_term = brain_term + c.lambda2 * gw
                parts["gw"] = float(gw.detach())
            if c.local_weight > 0:
                local = local_structure_ce(-cy, -cx, c.k1, c.k2, c.tau, g)
                brain_term = brain_term + c.local_weight * local
                parts["local"] = float(local.detach())
            loss = loss + c.brain_weight * brain_term
        if c.self_weight > 0:
            own = self.self_loss(batch, g)
            loss = loss + c.self_weight * own
            parts["self"] = float(own.detach())
        return loss, parts

    # ---- evaluation
    @staticmethod
    def metric_names(data: ConceptData) -> list[str]:
        """Keys :meth:`evaluate` returns for ``data`` (directions in :data:`METRIC_DIRECTIONS`).

        ``silhouette`` needs superordinate categories; ``one_shot`` needs a concept with
        >= 2 exemplars.
        """
        names = ["gw_distance", "match_top1", "match_top5", "retrieval_top1",
                 "ot_match_top1", "neighbour_overlap", "rsa"]
        if data.superordinate is not None:
            names.append("silhouette")
        if np.bincount(data.item_concept).max() >= 2:
            names.append("one_shot")
        return names

    @torch.no_grad()
    def evaluate(self, data: ConceptData, concept_idx, anchors, n_episodes: int = 20
                 ) -> dict[str, float]:
        """Metrics of the model representation on a set of (held-out) concepts.

        With ``n`` the concepts of ``concept_idx`` and their exemplars (items):

        - ``gw_distance``: :func:`~raybrain.align.gw.gw_distance` (solver
          ``eval_gw_solver``) between the model RDM (``1 - cos`` of each concept's mean
          adaptor output over its exemplars) and the brain RDM of the same concepts; lower
          is better. It compares shapes only: on the synthetic null generator it fell with
          training on 5 of 8 seeds (``tests/test_brain_loop_training.py``), where the
          matching rates and ``rsa`` stayed at chance; use those to tell correspondence.
        - ``match_top1``, ``match_top5``: :func:`~raybrain.align.concept_metrics.topk_matching_rate`
          of that GW plan against the true correspondence (chance ``k / n``).
        - ``retrieval_top1``: brain -> model nearest neighbour in the matched embedding
          space: the fraction of brain concepts whose highest :meth:`match_scores` entry
          (model nodes = each concept's mean backbone features) is the same concept.
        - ``ot_match_top1``: the same with the Sinkhorn plan of those scores (step 1's soft
          assignment, ``sinkhorn_reg``, ``sinkhorn_iter``) instead of the raw scores.
        - ``neighbour_overlap``: :func:`~raybrain.align.neighbourhoods.neighbourhood_overlap`
          of the two RDMs at ``K = min(K2, n - 1)`` (chance ``K / (n - 1)``).
        - ``rsa``: Spearman correlation of the two RDMs' upper triangles at the true
          correspondence (``scipy.stats.spearmanr``; chance 0).
        - ``silhouette`` (when superordinate categories exist):
          :func:`~raybrain.align.concept_metrics.silhouette_by_category` of the items'
          adaptor outputs by their concept's superordinate category (cosine).
        - ``one_shot`` (when some concept has >= 2 exemplars):
          :func:`~raybrain.align.concept_metrics.one_shot_accuracy` over the items, one
          support exemplar per concept, ``n_episodes`` episodes, seed 0 (chance ``1 / n``).

        Parameters
        ----------
        data : ConceptData
        concept_idx : array_like of int, shape (n,), n >= 3
        anchors : array_like of int
            The training concepts.
        n_episodes : int

        Returns
        -------
        dict of str -> float
            The keys of :meth:`metric_names`.
        """
        from raybrain.align.concept_metrics import (cosine_distances, one_shot_accuracy,
                                                    silhouette_by_category,
                                                    topk_matching_rate)
        from raybrain.align.gw import gw_distance
        from raybrain.align.neighbourhoods import neighbourhood_overlap
        from raybrain.align.transport import sinkhorn_log_plan
        from scipy.stats import spearmanr

        c = self.config
        idx = np.asarray(concept_idx, dtype=np.int64)
        n = len(idx)
        if n < 3:
            raise SpecError(f"evaluation needs >= 3 concepts, got {n}")
        was_training = self.training
        self.eval()
        device = next(self.parameters()).device
        items = data.items_of(idx)
        item_c = data.item_concept[items]
        feats = torch.as_tensor(data.features[items], dtype=torch.float32, device=device)
        emb = self.embed_model(feats).cpu().numpy().astype(np.float64)
        pos = {int(ci): p for p, ci in enumerate(idx)}
        item_pos = np.array([pos[int(ci)] for ci in item_c])
        means = np.stack([emb[item_pos == p].mean(axis=0) for p in range(n)])
        model_rdm = cosine_distances(means)
        brain_rdm = np.asarray(data.brain_rdm, dtype=np.float64)[np.ix_(idx, idx)]
        gw, plan = gw_distance(model_rdm, brain_rdm, solver=c.eval_gw_solver,
                               epsilon=c.gw_epsilon)
        truth = np.arange(n)
        out = {"gw_distance": gw,
               "match_top1": topk_matching_rate(plan, truth, 1),
               "match_top5": topk_matching_rate(plan, truth, min(5, n))}
        mean_feats = np.stack([data.features[items[item_pos == p]].mean(axis=0)
                               for p in range(n)])
        from raybrain.align.gw import normalise_cost

        S = self.match_scores(
            torch.as_tensor(data.brain_inputs(idx, anchors), dtype=torch.float32, device=device),
            torch.as_tensor(mean_feats, dtype=torch.float32, device=device),
            torch.as_tensor(normalise_cost(brain_rdm), dtype=torch.float32, device=device))
        out["retrieval_top1"] = topk_matching_rate(S.cpu(), truth, 1)
        log_plan = sinkhorn_log_plan((1.0 - S) / 2.0, c.sinkhorn_reg, n_iter=c.sinkhorn_iter)
        out["ot_match_top1"] = topk_matching_rate(log_plan.cpu(), truth, 1)
        out["neighbour_overlap"] = neighbourhood_overlap(model_rdm, brain_rdm, min(c.k2, n - 1))
        iu = np.triu_indices(n, k=1)
        out["rsa"] = spearmanr(model_rdm[iu], brain_rdm[iu])[0]
        if data.superordinate is not None:
            out["silhouette"] = silhouette_by_category(emb, data.superordinate[item_c])
        if np.bincount(data.item_concept).max() >= 2:
            out["one_shot"] = one_shot_accuracy(emb, item_c, n_episodes=n_episodes, seed=0)
        self.train(was_training)
        return {k: float(v) for k, v in out.items()}

    def config_dict(self) -> dict:
        """The config as a plain dict (for logging)."""
        return asdict(self.config)
