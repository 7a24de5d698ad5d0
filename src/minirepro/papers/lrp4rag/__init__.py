"""LRP4RAG (WIP)."""
from minirepro.papers.lrp4rag.lrp import lrp_mode, relevance_matrix
