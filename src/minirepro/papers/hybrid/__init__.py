"""The Mamba in the Llama: distilling and accelerating hybrid models (arXiv 2408.15237)."""

from minirepro.papers.hybrid.convert import init_from_attention, replaced_layers, to_hybrid
from minirepro.papers.hybrid.mamba import Mamba2Mixer, MambaMixer, MambaState, checkpoint_states
from minirepro.papers.hybrid.scan import recurrent_scan, selective_scan, ssd_scan
from minirepro.papers.hybrid.speculative import SpeculativeStats, speculative_generate

__all__ = [
    "Mamba2Mixer",
    "MambaMixer",
    "MambaState",
    "checkpoint_states",
    "init_from_attention",
    "replaced_layers",
    "to_hybrid",
    "recurrent_scan",
    "selective_scan",
    "ssd_scan",
    "SpeculativeStats",
    "speculative_generate",
]
